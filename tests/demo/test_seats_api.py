"""The demo console's seats mode: the admin REST API the ``seats`` connector speaks, and what a seat key opens.

The console runs in-process behind httpx's ASGI transport; the gateway's assertions are signed by a
:class:`GatewaySigner` whose JWKS a small HTTP server publishes, as in ``test_consoles.py``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from deploy.demo.console_auth import ASSERTION_HEADER
from deploy.demo.consoles import create_app
from tests.demo.servers import GatewaySigner

ADMIN_KEY = "phone-admin-key-41c7e9"
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}


@pytest.fixture
async def client(signer: GatewaySigner, jwks_url: str) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app("phone", ADMIN_KEY, jwks_url, signer.issuer, auth="seats")
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://phone.test") as client:
        yield client


def as_agent(signer: GatewaySigner, key: str, user_name: str = "alice") -> dict[str, str]:
    """A seat key with the gateway's assertion for ``user_name`` at the phone console."""
    assertion = signer.sign("gw-1", aud="phone", sub=f"agent-{user_name}", preferred_username=user_name)
    return {"Authorization": f"Bearer {key}", ASSERTION_HEADER: assertion}


async def create(client: httpx.AsyncClient, user_name: str = "alice", **headers: str) -> dict[str, Any]:
    answer = await client.post("/admin/seats", json={"userName": user_name}, headers={**ADMIN, **headers})
    assert answer.status_code == 201, answer.text
    seat: dict[str, Any] = answer.json()
    return seat


async def effects(client: httpx.AsyncClient) -> list[tuple[str, str]]:
    answer = await client.get("/_effects", headers=ADMIN)
    return [(e["effect"], e["subject"]) for e in answer.json()["effects"]]


async def test_a_new_seat_answers_201_with_a_256_bit_key_shown_only_in_that_answer(client: httpx.AsyncClient) -> None:
    answer = await client.post(
        "/admin/seats", json={"userName": "alice", "displayName": "Alice", "email": "a@example.com"}, headers=ADMIN
    )
    assert answer.status_code == 201
    seat = answer.json()
    assert (seat["userName"], seat["active"], seat["displayName"]) == ("alice", True, "Alice")
    assert seat["apiKey"].startswith("cgs_")
    assert len(seat["apiKey"]) >= len("cgs_") + 43  # 32 random bytes, base64url
    other = await create(client, "bob")
    assert other["apiKey"] != seat["apiKey"]
    read = await client.get("/admin/seats/alice", headers=ADMIN)
    assert read.status_code == 200
    assert "apiKey" not in read.json()
    assert seat["apiKey"] not in read.text
    assert await effects(client) == [("seat created", "alice"), ("seat created", "bob")]


async def test_an_existing_seat_answers_409_with_the_seat_and_no_key(client: httpx.AsyncClient) -> None:
    first = await create(client)
    again = await client.post("/admin/seats", json={"userName": "alice"}, headers=ADMIN)
    assert again.status_code == 409
    assert again.json()["error"] == "seat_exists"
    assert again.json()["seat"]["id"] == first["id"]
    assert first["apiKey"] not in again.text
    assert "apiKey" not in again.json()["seat"]


async def test_a_seat_key_opens_agent_pages_only_with_the_assertion_of_its_own_agent(
    client: httpx.AsyncClient, signer: GatewaySigner
) -> None:
    key = (await create(client))["apiKey"]
    own = await client.get("/", headers=as_agent(signer, key))
    assert own.status_code == 200
    assert "You are <strong>alice</strong>" in own.text
    assert key not in own.text
    other = await client.get("/", headers=as_agent(signer, key, "bob"))
    assert (other.status_code, other.json()["error"]) == (403, "seat_mismatch")
    bare = await client.get("/", headers={"Authorization": f"Bearer {key}"})
    assert (bare.status_code, bare.json()["error"]) == (401, "invalid_assertion")


@pytest.mark.parametrize(
    "credential",
    [{"Authorization": f"Bearer {ADMIN_KEY}"}, {"X-Api-Key": ADMIN_KEY}, {"Authorization": "Bearer cgs_madeup"}, {}],
    ids=["admin-key", "static-header", "unknown-key", "none"],
)
async def test_only_a_seat_key_opens_agent_pages_in_seats_mode(
    client: httpx.AsyncClient, signer: GatewaySigner, credential: dict[str, str]
) -> None:
    await create(client)
    assertion = signer.sign("gw-1", aud="phone")
    answer = await client.get("/", headers={**credential, ASSERTION_HEADER: assertion})
    assert (answer.status_code, answer.json()["error"]) == (401, "invalid_credential")
    assert signer.fetches == 0  # refused before any work for the gateway's keys


async def test_a_rotated_key_stops_working_and_the_new_one_works(
    client: httpx.AsyncClient, signer: GatewaySigner
) -> None:
    old = (await create(client))["apiKey"]
    rotated = await client.post("/admin/seats/alice/keys", headers=ADMIN)
    assert rotated.status_code == 200
    new = rotated.json()["apiKey"]
    assert new != old
    refused = await client.get("/", headers=as_agent(signer, old))
    assert refused.status_code == 401
    assert "rotated" in refused.json()["error_description"]
    assert (await client.get("/", headers=as_agent(signer, new))).status_code == 200
    assert ("seat key rotated", "alice") in await effects(client)


async def test_a_disabled_seats_key_gets_403_and_a_deleted_seats_key_401_each_saying_why(
    client: httpx.AsyncClient, signer: GatewaySigner
) -> None:
    key = (await create(client))["apiKey"]
    disabled = await client.patch("/admin/seats/alice", json={"active": False}, headers=ADMIN)
    assert disabled.json()["active"] is False
    assert "disabledAt" in disabled.json()
    refused = await client.get("/", headers=as_agent(signer, key))
    assert (refused.status_code, refused.json()["error"]) == (403, "seat_disabled")
    assert "alice is disabled" in refused.json()["error_description"]
    assert (await client.delete("/admin/seats/alice", headers=ADMIN)).status_code == 204
    gone = await client.get("/", headers=as_agent(signer, key))
    assert gone.status_code == 401
    assert "deleted" in gone.json()["error_description"]
    assert (await client.get("/admin/seats/alice", headers=ADMIN)).status_code == 404
    assert (await client.delete("/admin/seats/alice", headers=ADMIN)).status_code == 404


async def test_enabling_a_seat_again_restores_its_key_and_only_changes_are_effects(
    client: httpx.AsyncClient, signer: GatewaySigner
) -> None:
    key = (await create(client))["apiKey"]
    for active in (False, False, True, True):
        answer = await client.patch("/admin/seats/alice", json={"active": active}, headers=ADMIN)
        assert answer.json()["active"] is active
    assert "disabledAt" not in answer.json()
    assert (await client.get("/", headers=as_agent(signer, key))).status_code == 200
    assert await effects(client) == [("seat created", "alice"), ("seat disabled", "alice"), ("seat enabled", "alice")]


async def test_a_disabled_seat_gets_no_new_key(client: httpx.AsyncClient) -> None:
    await create(client)
    await client.patch("/admin/seats/alice", json={"active": False}, headers=ADMIN)
    answer = await client.post("/admin/seats/alice/keys", headers=ADMIN)
    assert (answer.status_code, answer.json()["error"]) == (409, "seat_disabled")
    assert "apiKey" not in answer.json()


async def test_the_key_check_answers_a_live_key_alone_and_refuses_any_other(client: httpx.AsyncClient) -> None:
    key = (await create(client))["apiKey"]
    live = await client.get("/api/me", headers={"Authorization": f"Bearer {key}"})
    assert (live.status_code, live.json()["userName"]) == (200, "alice")
    await client.patch("/admin/seats/alice", json={"active": False}, headers=ADMIN)
    assert (await client.get("/api/me", headers={"Authorization": f"Bearer {key}"})).status_code == 403
    assert (await client.get("/api/me", headers=ADMIN)).status_code == 401


async def test_a_replayed_idempotency_key_answers_as_the_first_time_with_no_second_effect(
    client: httpx.AsyncClient,
) -> None:
    first = await create(client, **{"Idempotency-Key": "k-create"})
    replay = await client.post(
        "/admin/seats", json={"userName": "alice"}, headers={**ADMIN, "Idempotency-Key": "k-create"}
    )
    assert (replay.status_code, replay.json()) == (201, first)
    rotations = [
        await client.post("/admin/seats/alice/keys", headers={**ADMIN, "Idempotency-Key": "k-rotate"}) for _ in range(2)
    ]
    assert rotations[0].json()["apiKey"] == rotations[1].json()["apiKey"] != first["apiKey"]
    deletions = [
        await client.delete("/admin/seats/alice", headers={**ADMIN, "Idempotency-Key": "k-delete"}) for _ in range(2)
    ]
    assert [answer.status_code for answer in deletions] == [204, 204]
    assert await effects(client) == [
        ("seat created", "alice"),
        ("seat key rotated", "alice"),
        ("seat deleted", "alice"),
    ]


async def test_an_idempotency_key_reused_for_another_request_is_refused_with_422(client: httpx.AsyncClient) -> None:
    await create(client, **{"Idempotency-Key": "k-1"})
    reused = await client.post("/admin/seats", json={"userName": "bob"}, headers={**ADMIN, "Idempotency-Key": "k-1"})
    assert (reused.status_code, reused.json()["error"]) == (422, "idempotency_key_reused")
    assert (await client.get("/admin/seats/bob", headers=ADMIN)).status_code == 404


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/admin/seats"),
        ("GET", "/admin/seats/alice"),
        ("PATCH", "/admin/seats/alice"),
        ("DELETE", "/admin/seats/alice"),
        ("POST", "/admin/seats/alice/keys"),
        ("GET", "/_effects"),
    ],
)
@pytest.mark.parametrize(
    "credential", [{}, {"Authorization": "Bearer not-the-admin-key"}, {"X-Api-Key": ADMIN_KEY}, "seat key"]
)
async def test_admin_calls_need_the_admin_key_and_a_seat_key_is_not_one(
    client: httpx.AsyncClient, method: str, path: str, credential: dict[str, str] | str
) -> None:
    seat = await create(client)
    headers = {"Authorization": f"Bearer {seat['apiKey']}"} if credential == "seat key" else credential
    answer = await client.request(method, path, headers=headers, json={"userName": "bob"})  # type: ignore[arg-type]
    assert (answer.status_code, answer.json()["error"]) == (401, "invalid_credential")
    assert (await client.get("/admin/seats/alice", headers=ADMIN)).json()["active"] is True


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "says"),
    [
        ("POST", "/admin/seats", b"not json", 400, "not JSON"),
        ("POST", "/admin/seats", b"[1]", 400, "JSON object"),
        ("POST", "/admin/seats", b"{}", 422, "userName"),
        ("POST", "/admin/seats", b'{"userName": "a/b"}', 422, "without '/'"),
        ("POST", "/admin/seats", b'{"userName": "carol", "role": "admin"}', 422, "userName"),
        ("POST", "/admin/seats", b'{"userName": "carol", "email": 5}', 422, "strings"),
        ("PATCH", "/admin/seats/alice", b'{"active": "no"}', 422, "active: false"),
        ("PATCH", "/admin/seats/alice", b'{"active": false, "email": "x"}', 422, "active: false"),
        ("PATCH", "/admin/seats/nobody", b'{"active": false}', 404, "no seat"),
        ("POST", "/admin/seats/nobody/keys", b"", 404, "no seat"),
    ],
)
async def test_a_malformed_or_misdirected_admin_call_gets_a_json_error_saying_what_to_send(
    client: httpx.AsyncClient, method: str, path: str, body: bytes, status: int, says: str
) -> None:
    await create(client)
    answer = await client.request(method, path, content=body, headers={**ADMIN, "Content-Type": "application/json"})
    assert answer.status_code == status
    assert says in answer.json()["error_description"]
