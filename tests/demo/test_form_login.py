"""The demo console's legacy form-login mode (``--auth form``): its login form, session cookie, logout and listing.

The console runs in-process behind httpx's ASGI transport, with assertions signed by a :class:`GatewaySigner`
whose JWKS a tiny HTTP server publishes; the last test runs it from its command line with an accounts file.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest
from starlette.applications import Starlette

from deploy.demo.console_auth import ASSERTION_HEADER
from deploy.demo.consoles import create_app
from deploy.demo.form_login import LOGGED_IN, LOGGED_OUT, SESSION_COOKIE, FormLogin
from tests.demo.servers import GatewaySigner, demo_process

SERVICE = "form-console-service-credential-5d1c"
ACCOUNTS = {"alice": "alice-console-pw-1", "bob": "bob-console-pw-2", "carol": "carol-console-pw-3"}
SERVICE_HEADERS = {"Authorization": f"Bearer {SERVICE}"}


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@asynccontextmanager
async def form_console(
    signer: GatewaySigner, jwks_url: str, session_seconds: float = 900
) -> AsyncIterator[tuple[httpx.AsyncClient, Starlette]]:
    app = create_app(
        "mail", SERVICE, jwks_url, signer.issuer, auth="form", accounts=ACCOUNTS, session_seconds=session_seconds
    )
    transport = httpx.ASGITransport(app)
    async with httpx.AsyncClient(transport=transport, base_url="http://console.test") as client:
        yield client, app


def _assertion(signer: GatewaySigner, user: str = "alice") -> dict[str, str]:
    return {ASSERTION_HEADER: signer.sign("gw-1", aud="mail", preferred_username=user, sub=f"agent-{user}")}


async def _login(client: httpx.AsyncClient, user: str, password: str | None = None) -> httpx.Response:
    return await client.post("/login", data={"username": user, "password": password or ACCOUNTS[user]})


def _session_cookie(response: httpx.Response) -> str:
    (header,) = response.headers.get_list("set-cookie")
    match = re.match(rf"{SESSION_COOKIE}=([^;]+);", header)
    assert match, header
    return match.group(1)


async def _effects(client: httpx.AsyncClient) -> list[dict[str, object]]:
    answer = await client.get("/_effects", headers=SERVICE_HEADERS)
    assert answer.status_code == 200
    effects: list[dict[str, object]] = answer.json()["effects"]
    return effects


async def test_the_login_form_is_served_to_anyone(signer: GatewaySigner, jwks_url: str) -> None:
    async with form_console(signer, jwks_url) as (client, _):
        page = await client.get("/login")
    assert page.status_code == 200
    assert 'name="username"' in page.text and 'type="password"' in page.text


async def test_a_right_password_redirects_home_with_an_httponly_session_cookie_of_256_random_bits(
    signer: GatewaySigner, jwks_url: str
) -> None:
    async with form_console(signer, jwks_url) as (client, _):
        first, second = await _login(client, "alice"), await _login(client, "alice")
    assert first.status_code == 303
    assert first.headers["location"] == "/"
    header = first.headers["set-cookie"]
    assert header.startswith(f"{SESSION_COOKIE}=")
    assert "HttpOnly" in header and "Path=/" in header
    session_id = _session_cookie(first)
    assert len(session_id) >= 43  # 32 bytes, base64url: 256 bits (>= 128 demanded)
    assert session_id != _session_cookie(second)
    assert ACCOUNTS["alice"] not in header


@pytest.mark.parametrize(
    ("user", "password"), [("alice", "not-her-password"), ("mallory", "alice-console-pw-1"), ("alice", "")]
)
async def test_a_wrong_password_or_unknown_user_gets_the_form_again_without_a_cookie(
    signer: GatewaySigner, jwks_url: str, user: str, password: str
) -> None:
    async with form_console(signer, jwks_url) as (client, _):
        answer = await client.post("/login", data={"username": user, "password": password})
    assert answer.status_code in (400, 401)
    assert 'role="alert"' in answer.text and "<form" in answer.text
    assert "set-cookie" not in answer.headers


async def test_a_login_that_is_not_a_form_post_is_refused(signer: GatewaySigner, jwks_url: str) -> None:
    async with form_console(signer, jwks_url) as (client, _):
        answer = await client.post("/login", json={"username": "alice", "password": ACCOUNTS["alice"]})
    assert answer.status_code == 415
    assert "set-cookie" not in answer.headers


async def test_an_agent_page_with_a_session_and_the_assertion_of_its_user_shows_that_user(
    signer: GatewaySigner, jwks_url: str
) -> None:
    async with form_console(signer, jwks_url) as (client, _):
        await _login(client, "alice")
        home = await client.get("/", headers=_assertion(signer))
        session = await client.get("/session", headers=_assertion(signer))
    assert home.status_code == 200
    assert "You are <strong>alice</strong>" in home.text
    assert session.json() == {"console_user": "alice", "asserted_agent": "alice", "sub": "agent-alice"}


@pytest.mark.parametrize("cookie", [None, "made-up-session-id"])
async def test_an_agent_page_without_a_live_session_redirects_to_the_login_form(
    signer: GatewaySigner, jwks_url: str, cookie: str | None
) -> None:
    async with form_console(signer, jwks_url) as (client, _):
        headers = {**_assertion(signer), **({"Cookie": f"{SESSION_COOKIE}={cookie}"} if cookie else {})}
        answer = await client.post("/session", headers=headers)
    assert answer.status_code == 303
    assert answer.headers["location"] == "/login"


async def test_a_session_without_the_gateway_assertion_opens_nothing(signer: GatewaySigner, jwks_url: str) -> None:
    async with form_console(signer, jwks_url) as (client, _):
        await _login(client, "alice")
        answer = await client.get("/session")
    assert answer.status_code == 401
    assert answer.json()["error"] == "invalid_assertion"


async def test_the_session_of_one_user_is_refused_for_another_asserted_agent(
    signer: GatewaySigner, jwks_url: str
) -> None:
    async with form_console(signer, jwks_url) as (client, _):
        await _login(client, "bob")
        answer = await client.get("/session", headers=_assertion(signer, "alice"))
    assert answer.status_code == 403
    assert answer.json()["error"] == "session_mismatch"


async def test_a_session_expires_after_the_configured_lifetime(signer: GatewaySigner, jwks_url: str) -> None:
    clock = Clock()
    async with form_console(signer, jwks_url, session_seconds=60) as (client, app):
        login: FormLogin = app.state.form_login
        login.sessions.clock = clock
        await _login(client, "alice")
        clock.now += 59
        assert (await client.get("/session", headers=_assertion(signer))).status_code == 200
        clock.now += 1
        expired = await client.get("/session", headers=_assertion(signer))
        listing = await client.get("/admin/sessions", params={"user": "alice"}, headers=SERVICE_HEADERS)
    assert expired.status_code == 303
    assert listing.json()["sessions"] == []


async def test_logout_ends_the_session_once_and_a_replayed_key_gets_the_same_answer_without_a_second_effect(
    signer: GatewaySigner, jwks_url: str
) -> None:
    async with form_console(signer, jwks_url) as (client, _):
        await _login(client, "alice")
        key = {"Idempotency-Key": "run-1:mail:revoke"}
        first = await client.post("/logout", headers=key)
        replay = await client.post("/logout", headers=key)
        page = await client.get("/session", headers=_assertion(signer))
        effects = await _effects(client)
    assert first.status_code == replay.status_code == 200
    assert first.json() == replay.json() == {"logged_out": True, "user": "alice"}
    assert re.search(rf"{SESSION_COOKIE}=[^;]*;.*Max-Age=0", first.headers["set-cookie"])
    assert page.status_code == 303
    assert [(e["effect"], e["subject"]) for e in effects] == [(LOGGED_IN, "alice"), (LOGGED_OUT, "alice")]
    assert effects[1]["idempotency_key"] == "run-1:mail:revoke"


async def test_logout_without_a_live_session_has_no_effect(signer: GatewaySigner, jwks_url: str) -> None:
    async with form_console(signer, jwks_url) as (client, _):
        answer = await client.post("/logout", headers={"Cookie": f"{SESSION_COOKIE}=long-gone"})
        effects = await _effects(client)
    assert answer.status_code == 200
    assert answer.json() == {"logged_out": False}
    assert effects == []


async def test_the_session_listing_needs_the_service_credential_and_lists_only_that_users_live_sessions(
    signer: GatewaySigner, jwks_url: str
) -> None:
    async with form_console(signer, jwks_url) as (client, _):
        alice_1 = _session_cookie(await _login(client, "alice"))
        client.cookies.clear()
        await _login(client, "alice")
        client.cookies.clear()
        await _login(client, "bob")
        refused = await client.get("/admin/sessions", params={"user": "alice"}, headers={"Authorization": "Bearer x"})
        listing = await client.get("/admin/sessions", params={"user": "alice"}, headers=SERVICE_HEADERS)
    assert refused.status_code == 401
    assert listing.status_code == 200
    assert listing.json()["user"] == "alice"
    assert len(listing.json()["sessions"]) == 2
    assert alice_1 not in listing.text


async def test_the_static_credential_does_not_open_agent_pages_in_form_mode(
    signer: GatewaySigner, jwks_url: str
) -> None:
    async with form_console(signer, jwks_url) as (client, _):
        answer = await client.get("/", headers={**SERVICE_HEADERS, **_assertion(signer)})
    assert answer.status_code == 303


async def test_the_form_console_runs_from_its_command_line_with_an_accounts_file(
    signer: GatewaySigner, jwks_url: str, tmp_path: Path
) -> None:
    accounts = tmp_path / "accounts.json"
    accounts.write_text(json.dumps(ACCOUNTS), encoding="utf-8")
    args = {
        "channel": "mail",
        "credential": SERVICE,
        "gateway-jwks": jwks_url,
        "gateway-issuer": signer.issuer,
        "auth": "form",
        "accounts": str(accounts),
        "log-level": "warning",
    }
    with demo_process("deploy.demo.consoles", args, tmp_path) as base:
        async with httpx.AsyncClient(base_url=base) as client:
            assert (await _login(client, "carol")).status_code == 303
            page = await client.get("/session", headers=_assertion(signer, "carol"))
    assert page.json()["console_user"] == "carol"
