"""The cookie-jar connector through real gateways: agents use the legacy mail console (form login) through the
gateway, which signs in for them and keeps the console's cookies server-side; and the proxy's one resend after a
refused credential, for a cookie jar and for a static channel whose vault credential was rotated.

Real components: npm oidc-provider for the agents' gateway login, the gateway(s) under uvicorn on real sockets,
the demo mail console in ``--auth form`` mode and the demo chat console in its static mode, each behind a
:class:`Recorder` (tests/components/form_gateway.py).
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from collections.abc import AsyncIterator

import httpx
import pytest

from connectors.base import AgentRef, Outcome, StepContext
from connectors.static import RELOAD_FLOOR_SECONDS
from deploy.demo.form_login import LOGGED_IN, LOGGED_OUT, SESSION_COOKIE
from tests.components.echo_gateway import cookie_of, eventually
from tests.components.form_console import ACCOUNTS, SERVICE_CREDENTIAL
from tests.components.form_gateway import CHAT_CREDENTIAL, FormDeployment, form_deployment
from tests.components.oidc_provider import OidcProviderFactory

pytestmark = [pytest.mark.oidc, pytest.mark.timeout(120)]

HTML = {"Accept": "text/html"}


@pytest.fixture
async def deployed(oidc_provider_factory: OidcProviderFactory) -> AsyncIterator[FormDeployment]:
    async with form_deployment(oidc_provider_factory) as deployed:
        yield deployed


async def signed_in(deployed: FormDeployment, user: str = "alice", password: str | None = None) -> httpx.AsyncClient:
    """The agent's browser after the gateway login, with the console password stored for the agent."""
    browser = await deployed.login(user)
    await deployed.set_password(user, password)
    return browser


def refusals(deployed: FormDeployment, channel: str, outcome: str) -> float:
    value = deployed.services.metrics.registry.get_sample_value(
        "channelgate_upstream_refusals_total", {"channel": channel, "outcome": outcome}
    )
    return value or 0.0


async def test_an_agent_opens_the_mail_console_through_the_gateway_and_the_console_sees_her(
    deployed: FormDeployment,
) -> None:
    browser = await signed_in(deployed)
    home = await browser.get(f"{deployed.url}/mail/", headers=HTML)
    session = await browser.get(f"{deployed.url}/mail/session")
    assert home.status_code == 200 and "You are <strong>alice</strong>" in home.text
    assert session.json() == {
        "console_user": "alice",
        "asserted_agent": "alice",
        "sub": await deployed.agent_id("alice"),
    }
    assert await deployed.effects(LOGGED_IN, "alice") == 1  # one form login serves every later request
    assert [s.method for s in deployed.mail.recorder.to("/login")] == ["GET", "POST"]


async def test_the_browser_never_receives_a_console_cookie_the_password_or_the_session(
    deployed: FormDeployment,
) -> None:
    browser = await signed_in(deployed)
    deployed.mail.recorder.set_cookie = "console_pref=compact; Path=/"
    answers = [
        await browser.get(f"{deployed.url}/mail/", headers=HTML),
        await browser.get(f"{deployed.url}/mail/session"),
        await browser.post(f"{deployed.url}/mail/logout", headers={"Idempotency-Key": "agent-clicked"}),
        await browser.get(f"{deployed.url}/mail/session"),
    ]
    assert all(a.status_code == 200 for a in answers), [a.status_code for a in answers]
    session_ids = {
        value
        for seen in deployed.mail.recorder.seen
        for value in re.findall(rf"{SESSION_COOKIE}=([^;\s]+)", seen.header("cookie") or "")
    }
    assert session_ids
    for answer in answers:
        assert "set-cookie" not in answer.headers
        shown = answer.text + str(answer.headers)
        assert ACCOUNTS["alice"] not in shown and SERVICE_CREDENTIAL not in shown
        assert not any(session_id in shown for session_id in session_ids)
    assert SESSION_COOKIE not in str(browser.cookies) and "console_pref" not in str(browser.cookies)
    # The console's own cookie came back to the console from the jar, never from the browser: set by the login
    # form's page, it went with the login's POST too.
    assert "console_pref=compact" in (deployed.mail.recorder.seen[-1].header("cookie") or "")
    first_login = next(s for s in deployed.mail.recorder.to("/login") if s.method == "POST")
    assert first_login.header("cookie") == "console_pref=compact"


async def test_cookies_the_browser_sends_for_the_channel_never_reach_the_console(deployed: FormDeployment) -> None:
    async with httpx.AsyncClient() as outsider:  # bob signs in at the console directly and hands alice his cookie
        bob = await outsider.post(f"{deployed.mail.url}/login", data={"username": "bob", "password": ACCOUNTS["bob"]})
    planted = bob.cookies[SESSION_COOKIE]
    browser = await signed_in(deployed)
    answer = await browser.get(
        f"{deployed.url}/mail/session", headers={"Cookie": f"{cookie_of(browser)}; {SESSION_COOKIE}={planted}; other=1"}
    )
    assert answer.json()["console_user"] == "alice"
    sent = deployed.mail.recorder.to("/session")[-1].header("cookie") or ""
    assert planted not in sent and "other=1" not in sent


async def test_an_expired_console_session_is_replaced_by_a_transparent_relogin(deployed: FormDeployment) -> None:
    browser = await signed_in(deployed)
    assert (await browser.get(f"{deployed.url}/mail/session")).status_code == 200
    deployed.clock.offset += 901  # the console's sessions last 900 s
    again = await browser.get(f"{deployed.url}/mail/session")
    assert again.status_code == 200 and again.json()["console_user"] == "alice"
    statuses = [s.status for s in deployed.mail.recorder.to("/session")]
    assert statuses == [200, 303, 200]  # the refused answer was followed by one login and never shown
    assert await deployed.effects(LOGGED_IN, "alice") == 2
    assert refusals(deployed, "mail", "resent") == 1


async def test_a_small_form_post_is_resent_with_its_body_after_a_relogin(deployed: FormDeployment) -> None:
    browser = await signed_in(deployed)
    await browser.get(f"{deployed.url}/mail/session")
    deployed.clock.offset += 901
    body = b"subject=Re%3A+refund&text=" + b"x" * 2000
    answer = await browser.post(
        f"{deployed.url}/mail/session", content=body, headers={"Content-Type": "application/x-www-form-urlencoded"}
    )
    assert answer.status_code == 405  # the console's answer to a POST there, after the relogin, not the 303
    posts = [s for s in deployed.mail.recorder.to("/session") if s.method == "POST"]
    assert [p.status for p in posts] == [303, 405]
    assert [hashlib.sha256(p.body).hexdigest() for p in posts] == [hashlib.sha256(body).hexdigest()] * 2


async def test_a_streamed_upload_is_never_replayed_and_its_refusal_goes_back_to_the_client(
    deployed: FormDeployment,
) -> None:
    browser = await signed_in(deployed)
    await browser.get(f"{deployed.url}/mail/session")
    deployed.clock.offset += 901

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(4):
            yield b"y" * 1024

    answer = await browser.post(f"{deployed.url}/mail/session", content=chunks())
    assert answer.status_code == 303
    assert [s.method for s in deployed.mail.recorder.to("/session")].count("POST") == 1
    assert refusals(deployed, "mail", "body_not_replayable") == 1
    assert "set-cookie" not in answer.headers


async def test_a_wrong_stored_password_answers_a_clear_502_page_and_never_loops(deployed: FormDeployment) -> None:
    browser = await signed_in(deployed, "carol", "not-carols-console-password")
    pages = [await browser.get(f"{deployed.url}/mail/", headers=HTML) for _ in range(3)]
    for page in pages:
        assert page.status_code == 502
        assert "set-agent-password mail carol" in page.text
        assert "not-carols-console-password" not in page.text
    # Refused once (the form's page, then its POST), not tried again for every request.
    assert [s.method for s in deployed.mail.recorder.to("/login")] == ["GET", "POST"]
    assert deployed.mail.recorder.to("/") == []


async def test_the_console_being_down_answers_502_and_its_revoke_asks_to_retry(deployed: FormDeployment) -> None:
    browser = await signed_in(deployed)
    await browser.get(f"{deployed.url}/mail/session")
    await deployed.mail.stop()
    page = await browser.get(f"{deployed.url}/mail/", headers=HTML)
    assert page.status_code == 502
    agent = AgentRef(await deployed.agent_id("alice"), "alice")
    revoked = await deployed.services.connectors["mail"].revoke(agent, StepContext("run-x:mail:revoke"))
    assert revoked.outcome is Outcome.RETRY
    await deployed.mail.start()
    assert (await deployed.services.connectors["mail"].revoke(agent, StepContext("run-x:mail:revoke"))).outcome is (
        Outcome.DONE
    )


async def test_deprovisioning_logs_the_console_session_out_and_verifies_none_remains(
    deployed: FormDeployment,
) -> None:
    browser = await signed_in(deployed)
    assert (await browser.get(f"{deployed.url}/mail/session")).status_code == 200
    assert len(deployed.login_form.sessions.live("alice")) == 1
    async with httpx.AsyncClient() as admin:
        started = await admin.post(
            f"{deployed.url}/.channelgate/admin/agents/alice/deprovision",
            json={"reason": "left the company"},
            headers=deployed.admin_headers(),
        )
        assert started.status_code == 200, started.text

        async def finished() -> dict[str, object] | None:
            status = await admin.get(
                f"{deployed.url}/.channelgate/admin/agents/alice", headers=deployed.admin_headers()
            )
            runs = status.json()["deprovisioning"]
            return runs[0] if runs and runs[0]["state"] in ("done", "attention") else None

        run = await eventually(finished, timeout=30)
    steps = {(s["channel"], s["step"]): (s["state"], s["detail"]) for s in run["steps"]}
    assert run["state"] == "done", steps
    assert steps[("mail", "revoke")] == ("done", "logged out 1 console session(s) of alice")
    assert steps[("mail", "verify")] == ("done", "the console lists no live session for alice")
    assert await deployed.effects(LOGGED_OUT, "alice") == 1
    assert deployed.login_form.sessions.live("alice") == []


async def test_a_static_channel_401_after_a_credential_rotation_is_resent_once_with_the_new_credential(
    deployed: FormDeployment,
) -> None:
    browser = await signed_in(deployed)
    await deployed.set_chat_credential("the-credential-before-rotation")
    stale = await browser.get(f"{deployed.url}/chat/")
    assert stale.status_code == 401  # nothing fresher in the vault: passed on at once, one request, no loop
    assert len(deployed.chat.recorder.to("/")) == 1
    await deployed.set_chat_credential(CHAT_CREDENTIAL)  # the operator rotates the vault to the console's key
    await _past_the_static_reload_floor()
    rotated = await browser.get(f"{deployed.url}/chat/", headers=HTML)
    assert rotated.status_code == 200 and "You are <strong>alice</strong>" in rotated.text
    sent = [s.header("authorization") for s in deployed.chat.recorder.to("/")]
    assert sent == [
        "Bearer the-credential-before-rotation",
        "Bearer the-credential-before-rotation",
        f"Bearer {CHAT_CREDENTIAL}",
    ]
    assert refusals(deployed, "chat", "passed_on") == 1
    assert refusals(deployed, "chat", "resent") == 1


async def _past_the_static_reload_floor() -> None:
    await asyncio.sleep(RELOAD_FLOOR_SECONDS + 0.1)


@pytest.mark.redis
async def test_two_replicas_share_the_agents_jar(oidc_provider_factory: OidcProviderFactory, redis_url: str) -> None:
    async with form_deployment(oidc_provider_factory, replicas=2, redis_url=redis_url) as deployed:
        browser = await signed_in(deployed)
        first = await browser.get(f"{deployed.urls[0]}/mail/session")
        second = await browser.get(f"{deployed.urls[1]}/mail/session")
        assert first.json()["console_user"] == second.json()["console_user"] == "alice"
        sent = {s.header("cookie") for s in deployed.mail.recorder.to("/session")}
        assert len(sent) == 1  # the second replica sent the jar the first obtained
        assert await deployed.effects(LOGGED_IN, "alice") == 1
