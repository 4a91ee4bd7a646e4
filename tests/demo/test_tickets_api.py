"""The demo consoles' ticket API: listing with keyed paging, idempotent assignment, the agents' ticket page, seeds.

In-process behind httpx's ASGI transport like ``test_consoles.py``; the command line is run once as a child
process with a seed file and the seats mode.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from deploy.demo.console_auth import ASSERTION_HEADER
from deploy.demo.consoles import create_app
from deploy.demo.tickets_api import Ticket, demo_tickets, parse_tickets
from tests.demo.servers import GatewaySigner, demo_process

CREDENTIAL = "mail-service-credential-77d0"
SERVICE = {"Authorization": f"Bearer {CREDENTIAL}"}
TICKETS = [
    Ticket("T-1", "Refund for order 1042", "alice"),
    Ticket("T-2", "<script>alert(1)</script> in the subject", "alice"),
    Ticket("T-3", "Wrong VAT rate", "bob"),
    Ticket("T-4", "Thank-you note", "alice", status="closed"),
    Ticket("T-5", "Address change", "alice", queue="billing"),
    Ticket("T-6", "Unassigned question", None, queue="triage"),
]


@pytest.fixture
async def client(signer: GatewaySigner, jwks_url: str) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app("chat", CREDENTIAL, jwks_url, signer.issuer, tickets=TICKETS)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://chat.test") as client:
        yield client


async def listed(client: httpx.AsyncClient, **query: str) -> list[str]:
    answer = await client.get("/api/tickets", params=query, headers=SERVICE)
    assert answer.status_code == 200, answer.text
    return [ticket["id"] for ticket in answer.json()["tickets"]]


async def assign(client: httpx.AsyncClient, ticket: str, key: str | None = None, **body: Any) -> httpx.Response:
    headers = {**SERVICE, **({"Idempotency-Key": key} if key else {})}
    return await client.post(f"/api/tickets/{ticket}/assign", json=body, headers=headers)


async def reassignments(client: httpx.AsyncClient) -> list[tuple[str, str]]:
    answer = await client.get("/_effects", headers=SERVICE)
    return [(e["subject"], e["detail"]) for e in answer.json()["effects"] if e["effect"] == "ticket reassigned"]


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ({"assignee": "alice", "status": "open"}, ["T-1", "T-2", "T-5"]),
        ({"assignee": "alice"}, ["T-1", "T-2", "T-4", "T-5"]),
        ({"status": "closed"}, ["T-4"]),
        ({"queue": "triage"}, ["T-6"]),
        ({"assignee": "nobody", "status": "open"}, []),
        ({}, ["T-1", "T-2", "T-3", "T-4", "T-5", "T-6"]),
    ],
)
async def test_listing_filters_by_assignee_status_and_queue(
    client: httpx.AsyncClient, query: dict[str, str], expected: list[str]
) -> None:
    assert await listed(client, **query) == expected


async def test_a_listed_ticket_has_the_documented_fields(client: httpx.AsyncClient) -> None:
    answer = await client.get("/api/tickets", params={"assignee": "bob"}, headers=SERVICE)
    (ticket,) = answer.json()["tickets"]
    assert set(ticket) == {"id", "subject", "status", "assignee", "queue", "updated"}
    assert (ticket["id"], ticket["status"], ticket["assignee"]) == ("T-3", "open", "bob")
    assert answer.json()["next"] is None


async def test_pages_follow_next_and_skip_nothing_when_tickets_move_between_pages(client: httpx.AsyncClient) -> None:
    first = await client.get("/api/tickets", params={"assignee": "alice", "limit": "2"}, headers=SERVICE)
    assert [t["id"] for t in first.json()["tickets"]] == ["T-1", "T-2"]
    assert first.json()["next"] == "T-2"
    # The tickets already seen move away, as a hand-over does between pages.
    await assign(client, "T-1", assignee="carol")
    await assign(client, "T-2", assignee="carol")
    rest = await client.get("/api/tickets", params={"assignee": "alice", "limit": "2", "after": "T-2"}, headers=SERVICE)
    assert [t["id"] for t in rest.json()["tickets"]] == ["T-4", "T-5"]
    assert rest.json()["next"] is None


@pytest.mark.parametrize(
    "query",
    [{"limit": "0"}, {"limit": "201"}, {"limit": "ten"}, {"after": "T-99"}, {"status": "lost"}, {"owner": "alice"}],
)
async def test_a_bad_listing_query_is_refused_with_a_message(client: httpx.AsyncClient, query: dict[str, str]) -> None:
    answer = await client.get("/api/tickets", params=query, headers=SERVICE)
    assert (answer.status_code, answer.json()["error"]) == (400, "invalid_request")
    assert answer.json()["error_description"]


async def test_assigning_moves_the_ticket_and_records_one_effect_about_the_previous_assignee(
    client: httpx.AsyncClient,
) -> None:
    to_carol = await assign(client, "T-1", "k-1", assignee="carol", queue=None)
    assert to_carol.status_code == 200
    assert (to_carol.json()["ticket"]["assignee"], to_carol.json()["ticket"]["queue"]) == ("carol", None)
    to_queue = await assign(client, "T-5", "k-2", assignee=None, queue="triage")
    assert (to_queue.json()["ticket"]["assignee"], to_queue.json()["ticket"]["queue"]) == (None, "triage")
    assert await listed(client, assignee="alice", status="open") == ["T-2"]
    assert await reassignments(client) == [("alice", "T-1 -> assignee carol"), ("alice", "T-5 -> queue triage")]


async def test_a_replayed_assignment_key_answers_as_the_first_time_and_does_not_move_the_ticket_back(
    client: httpx.AsyncClient,
) -> None:
    first = await assign(client, "T-1", "k-carol", assignee="carol")
    await assign(client, "T-1", "k-bob", assignee="bob")
    replay = await assign(client, "T-1", "k-carol", assignee="carol")
    assert (replay.status_code, replay.json()) == (200, first.json())
    assert await listed(client, assignee="bob", status="open") == ["T-1", "T-3"]
    assert len(await reassignments(client)) == 2


async def test_an_assignment_key_reused_for_another_ticket_is_refused_with_422(client: httpx.AsyncClient) -> None:
    await assign(client, "T-1", "k-1", assignee="carol")
    reused = await assign(client, "T-2", "k-1", assignee="carol")
    assert (reused.status_code, reused.json()["error"]) == (422, "idempotency_key_reused")
    assert await listed(client, assignee="alice", status="open") == ["T-2", "T-5"]


async def test_an_assignment_that_changes_nothing_is_no_effect(client: httpx.AsyncClient) -> None:
    answer = await assign(client, "T-5", assignee="alice", queue="billing")
    assert answer.status_code == 200
    assert await reassignments(client) == []


@pytest.mark.parametrize(
    ("ticket", "body", "status"),
    [
        ("T-1", {}, 422),
        ("T-1", {"assignee": None, "queue": None}, 422),
        ("T-1", {"assignee": 7}, 422),
        ("T-1", {"assignee": " carol"}, 422),
        ("T-1", {"assignee": "carol", "priority": "high"}, 422),
        ("T-99", {"assignee": "carol"}, 404),
    ],
)
async def test_an_invalid_assignment_is_refused_and_moves_nothing(
    client: httpx.AsyncClient, ticket: str, body: dict[str, Any], status: int
) -> None:
    answer = await assign(client, ticket, **body)
    assert answer.status_code == status
    assert answer.json()["error_description"]
    assert await reassignments(client) == []


@pytest.mark.parametrize("credential", [{}, {"Authorization": "Bearer not-it"}, {"X-Api-Key": CREDENTIAL}])
async def test_the_ticket_api_needs_the_consoles_own_credential(
    client: httpx.AsyncClient, credential: dict[str, str]
) -> None:
    listing = await client.get("/api/tickets", headers=credential)
    assigning = await client.post("/api/tickets/T-1/assign", json={"assignee": "carol"}, headers=credential)
    assert [listing.status_code, assigning.status_code] == [401, 401]
    assert await reassignments(client) == []


async def test_an_agent_sees_only_their_own_open_tickets_with_subjects_escaped(
    client: httpx.AsyncClient, signer: GatewaySigner
) -> None:
    page = await client.get("/tickets", headers={**SERVICE, ASSERTION_HEADER: signer.sign("gw-1")})
    assert page.status_code == 200
    assert "Open tickets of alice" in page.text
    assert all(ticket in page.text for ticket in ("T-1", "T-2", "T-5"))
    assert not any(ticket in page.text for ticket in ("T-3", "T-4", "T-6"))
    assert "<script>" not in page.text
    assert "&lt;script&gt;" in page.text
    unasserted = await client.get("/tickets", headers=SERVICE)
    assert unasserted.status_code == 401


def test_the_built_in_seed_gives_alice_bob_and_carol_open_tickets() -> None:
    open_by_agent: dict[str | None, int] = {}
    for ticket in demo_tickets("mail"):
        if ticket.status == "open":
            open_by_agent[ticket.assignee] = open_by_agent.get(ticket.assignee, 0) + 1
    assert open_by_agent == {"alice": 3, "bob": 2, "carol": 1}
    assert all(ticket.id.startswith("MAIL-") for ticket in demo_tickets("mail"))


@pytest.mark.parametrize(
    ("raw", "says"),
    [
        ({"id": "T-1"}, "JSON list"),
        ([{"id": "T-1"}], "string subject"),
        ([{"id": "T-1", "subject": "s", "status": "lost"}], "status must be"),
        ([{"id": "T-1", "subject": "s", "assignee": 3}], "names or null"),
        ([{"id": "T-1", "subject": "s"}, {"id": "T-1", "subject": "t"}], "unique"),
    ],
)
def test_a_bad_seed_is_refused_naming_what_is_wrong(raw: object, says: str) -> None:
    with pytest.raises(ValueError, match=says):
        parse_tickets(raw)


async def test_the_console_command_serves_seats_and_tickets_from_a_seed_file(tmp_path: Path) -> None:
    seed = tmp_path / "tickets.json"
    seed.write_text(json.dumps([{"id": "P-1", "subject": "Call back", "assignee": "alice"}]))
    args = {
        "channel": "phone",
        "credential": CREDENTIAL,
        "auth": "seats",
        "tickets-file": str(seed),
        "gateway-jwks": "http://127.0.0.1:9/.channelgate/jwks.json",
        "gateway-issuer": "http://gateway.test",
    }
    with demo_process("deploy.demo.consoles", args, tmp_path) as url:
        async with httpx.AsyncClient(base_url=url, headers=SERVICE) as admin:
            seat = await admin.post("/admin/seats", json={"userName": "alice"})
            tickets = await admin.get("/api/tickets", params={"assignee": "alice", "status": "open"})
    assert seat.status_code == 201
    assert [t["id"] for t in tickets.json()["tickets"]] == ["P-1"]
