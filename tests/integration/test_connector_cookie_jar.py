"""The ``cookie_jar`` connector against the real mail console in its legacy form-login mode, over HTTP.

Each connector is one gateway replica: connectors built from one :class:`Replicas` share a real ``agent_secrets``
table (SQLite, migrated) and vault keys. The console keeps its own accounts and sessions; a test moves the
console's session clock to expire them. See tests/components/form_console.py.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from connectors.base import AgentRef, Capability, Outcome, StepContext, UpstreamRequest
from connectors.cookie_jar import JAR_PREFIX, PASSWORD, ConsoleLoginFailed, CookieJarConnector
from connectors.vault import Vault
from deploy.demo.console_auth import ASSERTION_HEADER
from deploy.demo.form_login import LOGGED_IN, LOGGED_OUT, SESSION_COOKIE
from gateway.errors import ConfigError, UpstreamError
from gateway.settings import load_settings
from tests.components.form_console import ACCOUNTS, SERVICE_CREDENTIAL, FormConsole, Replicas, form_console
from tests.components.form_console import replicas as shared_database

ALICE = AgentRef(agent_id="agent-alice", user_name="alice")
BOB = AgentRef(agent_id="agent-bob", user_name="bob")
CTX = StepContext(idempotency_key="run-1:mail:revoke")
VERIFY = StepContext(idempotency_key="run-1:mail:verify")


@pytest.fixture
async def console() -> AsyncIterator[FormConsole]:
    async with form_console() as console:
        yield console


@pytest.fixture
async def replicas(tmp_path: Path) -> AsyncIterator[Replicas]:
    async with shared_database(tmp_path) as replicas:
        await replicas.set_password(ALICE.agent_id, "alice")
        await replicas.set_password(BOB.agent_id, "bob")
        yield replicas


async def prepared(connector: CookieJarConnector, agent: AgentRef = ALICE, path: str = "/session") -> UpstreamRequest:
    request = UpstreamRequest("GET", f"{connector_origin(connector)}{path}")
    await connector.prepare(agent, request)
    return request


def connector_origin(connector: CookieJarConnector) -> str:
    return connector._origin


async def send(console: FormConsole, request: UpstreamRequest, agent: AgentRef = ALICE) -> httpx.Response:
    """Send the prepared request to the console as the proxy would: its headers plus the gateway's assertion."""
    headers = [*request.headers, (ASSERTION_HEADER, console.assertion(agent.agent_id, agent.user_name))]
    async with httpx.AsyncClient() as client:
        return await client.request(request.method, request.url, headers=headers)


async def stored_jars(replicas: Replicas, agent: AgentRef = ALICE) -> list[str]:
    return [row.name for row in await replicas.secrets().list(agent.agent_id) if row.name.startswith(JAR_PREFIX)]


def test_the_kind_declares_inject_cookie_jar_logout_verify_and_tickets_with_a_ticket_api(
    console: FormConsole, replicas: Replicas
) -> None:
    connector = replicas.connector(console)
    assert connector.capabilities == {
        Capability.INJECT,
        Capability.COOKIE_JAR,
        Capability.CONSOLE_LOGOUT,
        Capability.VERIFY,
    }
    assert Capability.VERIFY not in replicas.connector(console, sessions_path="").capabilities
    with_tickets = replicas.connector(console, tickets={"url": f"{console.url}/api/", "fallback_queue": "mail-q"})
    assert Capability.TICKETS in with_tickets.capabilities


async def test_the_first_request_logs_in_with_the_stored_password_and_the_console_sees_the_agent(
    console: FormConsole, replicas: Replicas
) -> None:
    request = await prepared(replicas.connector(console))
    assert (request.header("Cookie") or "").startswith(f"{SESSION_COOKIE}=")
    page = await send(console, request)
    assert page.status_code == 200
    assert page.json()["console_user"] == "alice"
    assert console.live_sessions("alice") == 1
    assert len(await stored_jars(replicas)) == 1


async def test_concurrent_first_requests_of_one_agent_make_one_login(console: FormConsole, replicas: Replicas) -> None:
    connector = replicas.connector(console)
    requests = await asyncio.gather(*(prepared(connector) for _ in range(20)))
    assert len({r.header("Cookie") for r in requests}) == 1
    assert len(await console.effects(LOGGED_IN)) == 1


async def test_a_second_replica_uses_the_jar_the_first_obtained_without_logging_in(
    console: FormConsole, replicas: Replicas
) -> None:
    first = await prepared(replicas.connector(console))
    second = await prepared(replicas.connector(console))
    assert first.header("Cookie") == second.header("Cookie")
    assert len(await console.effects(LOGGED_IN)) == 1


async def test_set_cookie_leaves_the_response_and_joins_the_jar_every_replica_sends(
    console: FormConsole, replicas: Replicas
) -> None:
    one, two = replicas.connector(console), replicas.connector(console)
    await prepared(one)
    headers = [("content-type", "text/html"), ("Set-Cookie", "theme=dark; Path=/"), ("set-cookie", "lang=de")]
    await one.on_upstream_response(ALICE, 200, headers)
    assert headers == [("content-type", "text/html")]
    for replica in (one, two):
        cookie = (await prepared(replica)).header("Cookie") or ""
        assert "theme=dark" in cookie and "lang=de" in cookie and f"{SESSION_COOKIE}=" in cookie


async def test_a_console_cookie_is_never_passed_on_even_when_nothing_is_held_for_the_agent(
    console: FormConsole, replicas: Replicas
) -> None:
    headers = [("set-cookie", f"{SESSION_COOKIE}=planted; Path=/")]
    await replicas.connector(console).on_upstream_response(BOB, 200, headers)
    assert headers == []
    assert await stored_jars(replicas, BOB) == []


async def test_an_expired_console_session_is_replaced_by_one_new_login_and_the_old_jar_is_logged_out(
    console: FormConsole, replicas: Replicas
) -> None:
    connector = replicas.connector(console)
    request = await prepared(connector)
    old = request.header("Cookie")
    console.clock.offset += 901  # the console's sessions last 900 s
    refused = await send(console, request)
    assert refused.status_code == 303 and refused.headers["location"] == "/login"
    assert await connector.on_upstream_unauthorized(ALICE, request)
    assert request.header("Cookie") != old
    assert (await send(console, request)).json()["console_user"] == "alice"
    assert len(await console.effects(LOGGED_IN)) == 2
    assert len(await stored_jars(replicas)) == 1  # the refused jar was logged out and dropped


async def test_a_refusal_that_brings_a_new_anonymous_session_cookie_is_followed_by_a_login_not_by_that_cookie(
    console: FormConsole, replicas: Replicas
) -> None:
    connector = replicas.connector(console)
    request = await prepared(connector)
    console.clock.offset += 901
    # As a servlet container does: the redirect to the login form starts a new, anonymous session.
    refusal = [("location", "/login"), ("set-cookie", f"{SESSION_COOKIE}=anonymous-session-id; Path=/")]
    await connector.on_upstream_response(ALICE, 303, refusal)
    assert await connector.on_upstream_unauthorized(ALICE, request)
    assert "anonymous-session-id" not in (request.header("Cookie") or "")
    assert (await send(console, request)).json()["console_user"] == "alice"
    assert len(await console.effects(LOGGED_IN)) == 2


async def test_a_refusal_another_request_already_repaired_adopts_its_jar_without_a_login(
    console: FormConsole, replicas: Replicas
) -> None:
    connector = replicas.connector(console)
    first, second = await prepared(connector), await prepared(connector)
    console.clock.offset += 901
    assert await connector.on_upstream_unauthorized(ALICE, first)
    assert await connector.on_upstream_unauthorized(ALICE, second)
    assert first.header("Cookie") == second.header("Cookie")
    assert len(await console.effects(LOGGED_IN)) == 2


async def test_a_fresh_session_refused_again_is_not_resent(console: FormConsole, replicas: Replicas) -> None:
    connector = replicas.connector(console)
    request = await prepared(connector)
    console.clock.offset += 901
    assert await connector.on_upstream_unauthorized(ALICE, request)
    assert not await connector.on_upstream_unauthorized(ALICE, request)
    assert len(await console.effects(LOGGED_IN)) == 2


async def test_a_wrong_stored_password_fails_with_the_fix_and_is_not_tried_again_until_stored_anew(
    console: FormConsole, replicas: Replicas
) -> None:
    await replicas.set_password(ALICE.agent_id, "alice", "not-alices-password")
    connector = replicas.connector(console)
    with pytest.raises(ConsoleLoginFailed, match="set-agent-password mail alice") as refused:
        await prepared(connector)
    assert refused.value.status == 502
    assert "not-alices-password" not in str(refused.value)
    await console.served.stop()
    with pytest.raises(ConsoleLoginFailed):  # not "unreachable": the console was not asked again
        await prepared(connector)


async def test_a_password_stored_anew_is_tried_at_once(console: FormConsole, replicas: Replicas) -> None:
    await replicas.set_password(ALICE.agent_id, "alice", "not-alices-password")
    connector = replicas.connector(console)
    with pytest.raises(ConsoleLoginFailed):
        await prepared(connector)
    await replicas.set_password(ALICE.agent_id, "alice")
    assert (await send(console, await prepared(connector))).json()["console_user"] == "alice"


async def test_no_stored_password_says_how_to_store_one(console: FormConsole, replicas: Replicas) -> None:
    await replicas.secrets().delete(ALICE.agent_id, PASSWORD)
    with pytest.raises(ConsoleLoginFailed, match="holds no mail console password for alice"):
        await prepared(replicas.connector(console))


async def test_an_unreachable_console_at_login_is_a_502_not_a_password_problem(
    console: FormConsole, replicas: Replicas
) -> None:
    connector = replicas.connector(console)
    await console.served.stop()
    with pytest.raises(UpstreamError) as failed:
        await prepared(connector)
    assert not isinstance(failed.value, ConsoleLoginFailed)


async def test_revoke_logs_out_every_jar_any_replica_obtained_once_and_verify_confirms(
    console: FormConsole, replicas: Replicas
) -> None:
    one, two = replicas.connector(console), replicas.connector(console)
    await prepared(one)
    await two._login(ALICE)  # two replicas that logged in at the same moment: two jars, two console sessions
    assert console.live_sessions("alice") == 2
    jars = await stored_jars(replicas)
    revoked = await one.revoke(ALICE, CTX)
    assert (revoked.outcome, revoked.detail) == (Outcome.DONE, "logged out 2 console session(s) of alice")
    assert console.live_sessions("alice") == 0
    logged_out = await console.effects(LOGGED_OUT)
    assert sorted(e["idempotency_key"] for e in logged_out) == sorted(f"{CTX.idempotency_key}/{n}" for n in jars)
    assert await stored_jars(replicas) == []
    verified = await one.verify_no_access(ALICE, VERIFY)
    assert (verified.outcome, verified.detail) == (Outcome.DONE, "the console lists no live session for alice")
    again = await two.revoke(ALICE, CTX)
    assert again.outcome is Outcome.DONE
    assert len(await console.effects(LOGGED_OUT)) == 2


async def test_after_revoke_the_next_request_needs_a_new_login(console: FormConsole, replicas: Replicas) -> None:
    connector = replicas.connector(console)
    old = await prepared(connector)
    await connector.revoke(ALICE, CTX)
    assert (await send(console, old)).status_code == 303
    assert (await prepared(connector)).header("Cookie") != old.header("Cookie")


async def test_verify_reports_access_remaining_while_the_console_lists_a_session(
    console: FormConsole, replicas: Replicas
) -> None:
    async with httpx.AsyncClient() as client:  # alice signed in at the console herself, around the gateway
        await client.post(f"{console.url}/login", data={"username": "alice", "password": ACCOUNTS["alice"]})
    connector = replicas.connector(console)
    assert (await connector.revoke(ALICE, CTX)).outcome is Outcome.DONE
    verified = await connector.verify_no_access(ALICE, VERIFY)
    assert verified.outcome is Outcome.FAILED
    assert verified.detail == "access remains: the console lists 1 live session(s) for alice"


async def test_revoke_and_verify_retry_while_the_console_is_down_and_keep_the_jar(
    console: FormConsole, replicas: Replicas
) -> None:
    connector = replicas.connector(console)
    await prepared(connector)
    await console.served.stop()
    revoked = await connector.revoke(ALICE, CTX)
    verified = await connector.verify_no_access(ALICE, VERIFY)
    assert revoked.outcome is Outcome.RETRY and "connection failed" in revoked.detail
    assert verified.outcome is Outcome.RETRY
    assert len(await stored_jars(replicas)) == 1  # still there for the next attempt, on any replica


async def test_verify_with_a_wrong_channel_credential_fails_naming_the_fix(
    console: FormConsole, replicas: Replicas
) -> None:
    connector = replicas.connector(console, credential="wrong")
    verified = await connector.verify_no_access(ALICE, VERIFY)
    assert verified.outcome is Outcome.FAILED
    assert "HTTP 401" in verified.detail and "channels set-credential mail" in verified.detail
    assert "wrong" not in verified.detail


async def test_remove_deletes_the_stored_password(console: FormConsole, replicas: Replicas) -> None:
    connector = replicas.connector(console)
    removed = await connector.remove(ALICE, CTX)
    assert (removed.outcome, removed.detail) == (Outcome.DONE, "stored console password deleted")
    assert await replicas.secrets().get(ALICE.agent_id, PASSWORD) is None


async def test_no_password_session_or_service_credential_reaches_a_receipt_repr_or_log(
    console: FormConsole, replicas: Replicas, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    connector = replicas.connector(console)
    session = (await prepared(connector)).header("Cookie") or ""
    await replicas.set_password(BOB.agent_id, "bob", "wrong-bob-password")
    with pytest.raises(ConsoleLoginFailed) as refused:
        await prepared(connector, BOB)
    results = [
        await connector.revoke(ALICE, CTX),
        await connector.verify_no_access(ALICE, VERIFY),
        await connector.hand_over(ALICE, BOB, CTX),
        await connector.provision(ALICE, CTX),
    ]
    seen = "\n".join(
        [caplog.text, repr(connector), str(connector), repr(vars(connector)), str(refused.value), *map(repr, results)]
    )
    for secret in [ACCOUNTS["alice"], "wrong-bob-password", SERVICE_CREDENTIAL, session.split("=", 1)[1]]:
        assert secret not in seen


async def test_after_the_old_vault_key_is_removed_a_password_stored_again_signs_the_agent_in(
    console: FormConsole, replicas: Replicas
) -> None:
    """The jar and password sealed under the removed key are unreadable: the password must be stored again (the
    page says so), the old jar is absent for requests and named by revoke, and verification asks the console."""
    await prepared(replicas.connector(console))  # a jar sealed under k1
    replicas.vault = Vault({"k2": os.urandom(32)}, "k2")  # k1 removed, a restart (empty memory)
    with pytest.raises(ConsoleLoginFailed, match="sealed under a vault key that is no longer configured"):
        await prepared(replicas.connector(console))
    await replicas.set_password(ALICE.agent_id, "alice")  # channelgate channels set-agent-password mail alice
    restarted = replicas.connector(console)
    request = await prepared(restarted)
    assert (await send(console, request)).status_code == 200
    revoked = await restarted.revoke(ALICE, CTX)
    assert revoked.outcome is Outcome.DONE
    assert "1 stored console session(s) are sealed under a vault key that is no longer configured" in revoked.detail
    verified = await restarted.verify_no_access(ALICE, VERIFY)  # the k1 login's session is still live there
    assert verified.detail == "access remains: the console lists 1 live session(s) for alice"


async def test_a_jar_is_never_sent_to_another_origin_than_its_consoles(
    console: FormConsole, replicas: Replicas
) -> None:
    connector = replicas.connector(console)
    assert (await prepared(connector)).header("Cookie")
    for url in ("http://files.cdn.example/mail/logo.png", console.url.replace("http://", "https://") + "/session"):
        foreign = UpstreamRequest("GET", url, [("Cookie", "from-the-browser=1")])
        await connector.prepare(ALICE, foreign)
        assert foreign.header("Cookie") is None


def test_a_cookie_jar_route_to_another_origin_than_console_url_is_refused_at_load(tmp_path: Path) -> None:
    config = tmp_path / "channelgate.toml"
    config.write_text(
        """
[server]
public_url = "https://gateway.example.com"

[oidc]
issuer = "https://idp.example.com"
client_id = "c"
client_secret = "s"

[channels.helpdesk]
kind = "cookie_jar"
console_url = "https://helpdesk.internal"

[[routes]]
channel = "helpdesk"
prefix = "/helpdesk/"
upstream = "https://helpdesk.internal:443/app/"

[[routes]]
channel = "helpdesk"
prefix = "/files/"
upstream = "http://files.cdn.example"
""",
        encoding="utf-8",
    )
    with pytest.raises(ConfigError) as refused:
        load_settings(config, environ={})
    assert "route '/files/' of cookie_jar channel 'helpdesk' goes to http://files.cdn.example" in refused.value.message
    assert "'/helpdesk/'" not in refused.value.message  # same origin, another path: accepted
