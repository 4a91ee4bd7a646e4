"""OIDC Back-Channel Logout 1.0 against npm oidc-provider: the provider ends a session, the gateway follows.

The first test lets the real provider send its logout token (RP sessions end when the user logs out at the
provider). The others post tokens signed with the provider's own key, to cover what a provider never sends:
replays, forgeries, ID tokens posing as logout tokens, unknown subjects. Each is refused with a 400, changes
nothing, and leaves a record in the access log. A ``sid`` of the subject's from which no session here came is no
bad token: it ends nothing, and a sign-in of it still on its way is refused. A token the gateway could not act on
(the database down: a 503) is served when the provider sends it again.
"""

from __future__ import annotations

import base64
import json
import re
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any, cast

import httpx
import pytest
from joserfc import jwt
from joserfc.jwk import DictKey, RSAKey

from gateway.oidc.backchannel import LOGOUT_EVENT
from gateway.oidc.client import Identity
from gateway.oidc.routes import _ended_on_its_way
from gateway.sessions.base import PendingLogin
from gateway.storage.access_log import AccessQuery
from gateway.storage.session_ends import EndKind
from tests.components.browserless_login import complete_login, login_steps
from tests.components.echo_gateway import Deployment, deployment, eventually
from tests.components.oidc_provider import DEMO_PASSWORD, TEST_CLIENT_ID, OidcProviderFactory, generate_signing_key
from tests.integration.test_ssf_receiver import fail_once

pytestmark = [pytest.mark.oidc, pytest.mark.timeout(90)]
JSON = {"Accept": "application/json"}
FORM = {"Content-Type": "application/x-www-form-urlencoded"}


@pytest.fixture
async def gateway(oidc_provider_factory: OidcProviderFactory) -> AsyncIterator[Deployment]:
    async with deployment(oidc_provider_factory) as deployed:
        yield deployed


async def _chat(client: httpx.AsyncClient, gateway: Deployment) -> int:
    return (await client.get(gateway.url + "/chat/", headers=JSON)).status_code


async def _session_data(gateway: Deployment, agent_name: str) -> list[Any]:
    agent = await gateway.services.agents.find(agent_name)
    assert agent is not None
    return [s.data for s in await gateway.services.sessions.sessions_of(agent.id, time.time())]


def _token(
    gateway: Deployment, *, header: dict[str, Any] | None = None, key: dict[str, Any] | None = None, **claims: Any
) -> str:
    assert gateway.provider is not None
    private = key or gateway.provider.jwks["keys"][0]
    now = int(time.time())
    body = {
        "iss": gateway.provider.issuer,
        "aud": TEST_CLIENT_ID,
        "iat": now,
        "exp": now + 120,
        "jti": uuid.uuid4().hex,
        "events": {LOGOUT_EVENT: {}},
    } | claims
    body = {name: value for name, value in body.items() if value is not None}
    return jwt.encode(
        {"alg": "RS256", "kid": private["kid"], "typ": "logout+jwt"} | (header or {}),
        body,
        RSAKey.import_key(cast(DictKey, private)),
    )


async def _post(gateway: Deployment, token: str) -> httpx.Response:
    async with httpx.AsyncClient() as idp:
        return await idp.post(
            gateway.url + "/.channelgate/backchannel-logout", content=f"logout_token={token}", headers=FORM
        )


async def test_logging_out_at_the_provider_ends_that_browsers_gateway_session_and_no_other(gateway: Deployment) -> None:
    laptop = await gateway.login("alice")
    phone = await gateway.login("alice")
    assert (await _chat(laptop, gateway), await _chat(phone, gateway)) == (200, 200)
    assert gateway.provider is not None

    # The user logs out at the provider in the laptop's browser (oidc-provider's end_session confirm form).
    form = await laptop.get(gateway.provider.issuer + "/session/end")
    xsrf = re.search(r'name="xsrf" value="([^"]+)"', form.text)
    assert xsrf is not None, form.text[:500]
    await laptop.post(gateway.provider.issuer + "/session/end/confirm", data={"xsrf": xsrf.group(1), "logout": "yes"})

    async def laptop_refused() -> bool:
        return await _chat(laptop, gateway) == 401

    await eventually(laptop_refused)
    assert await _chat(phone, gateway) == 200
    agent = await gateway.services.agents.find("alice")
    assert agent is not None and agent.active  # a logout, not a deprovisioning
    records = await gateway.services.audit._repository.for_agent(agent.id)
    assert [r.decision for r in records if r.kind == "backchannel_logout"] == ["revoked"]


async def test_a_logout_token_with_only_sub_ends_every_session_of_the_agent(gateway: Deployment) -> None:
    laptop, phone = await gateway.login("alice"), await gateway.login("alice")
    subject = (await _session_data(gateway, "alice"))[0].subject
    response = await _post(gateway, _token(gateway, sub=subject))
    assert response.status_code == 200 and response.headers["cache-control"] == "no-store"
    assert (await _chat(laptop, gateway), await _chat(phone, gateway)) == (401, 401)
    again = await gateway.login("alice")
    assert await _chat(again, gateway) == 200


async def test_a_replayed_logout_token_is_refused(gateway: Deployment) -> None:
    await gateway.login("alice")
    data = (await _session_data(gateway, "alice"))[0]
    token = _token(gateway, sub=data.subject, sid=data.idp_session_id)
    assert (await _post(gateway, token)).status_code == 200
    replay_target = await gateway.login("alice")  # a new session, and the same token sent again
    replayed = await _post(gateway, token)
    assert replayed.status_code == 400
    assert "already used" in replayed.json()["error_description"]
    assert await _chat(replay_target, gateway) == 200


async def test_a_logout_token_sent_again_after_a_database_outage_ends_the_session(
    gateway: Deployment, monkeypatch: pytest.MonkeyPatch
) -> None:
    alice = await gateway.login("alice")
    data = (await _session_data(gateway, "alice"))[0]
    token = _token(gateway, sub=data.subject, sid=data.idp_session_id)
    fail_once(monkeypatch, gateway.services.agents, "find_by_oidc")

    first = await _post(gateway, token)
    assert first.status_code == 503 and first.json()["error"] == "temporarily_unavailable", first.text
    assert "sqlite" not in first.text  # the database's address is for the gateway's log, not the provider
    assert await _chat(alice, gateway) == 200
    retry = await _post(gateway, token)

    assert retry.status_code == 200, retry.text
    assert await _chat(alice, gateway) == 401
    replayed = await _post(gateway, token)  # acted on once: now it is a replay
    assert replayed.status_code == 400 and "already used" in replayed.json()["error_description"]


BAD_TOKENS: dict[str, dict[str, Any]] = {
    "signed with another key": {"key": generate_signing_key("attacker")},
    "for another client": {"aud": "someone-else"},
    "for us and another client": {"aud": [TEST_CLIENT_ID, "someone-else"]},
    "from another issuer": {"iss": "https://evil.example"},
    "an id token (nonce)": {"nonce": "n-1"},
    "without the logout event": {"events": {"urn:other": {}}},
    "without events": {"events": None},
    "without jti": {"jti": None},
    "issued an hour ago": {"iat": int(time.time()) - 3600, "exp": None},
    "typed as a plain JWT": {"header": {"typ": "JWT"}},
    "for an unknown subject": {"sub": "nobody-at-all"},
}


@pytest.mark.parametrize("case", BAD_TOKENS, ids=list(BAD_TOKENS))
async def test_a_bad_logout_token_is_refused_changes_nothing_and_is_logged(gateway: Deployment, case: str) -> None:
    alice = await gateway.login("alice")
    data = (await _session_data(gateway, "alice"))[0]
    claims = {"sub": data.subject, "sid": data.idp_session_id} | BAD_TOKENS[case]
    response = await _post(gateway, _token(gateway, **claims))
    assert response.status_code == 400, response.text
    assert response.json()["error"] == "invalid_request"
    assert await _chat(alice, gateway) == 200
    mark = await gateway.services.audit._repository.tail(5)
    assert any(r.kind == "backchannel_logout" and r.decision == "refused" for r in mark)


@pytest.mark.parametrize(
    "body",
    ["", "logout_token=", "logout_token=a&logout_token=b", "logout_token=not.a.jwt", "logout_token=" + "x" * 20000],
)
async def test_a_malformed_request_is_a_400_never_a_500(gateway: Deployment, body: str) -> None:
    async with httpx.AsyncClient() as idp:
        response = await idp.post(gateway.url + "/.channelgate/backchannel-logout", content=body, headers=FORM)
    assert response.status_code == 400


async def test_an_unsigned_logout_token_is_refused(gateway: Deployment) -> None:
    await gateway.login("alice")
    data = (await _session_data(gateway, "alice"))[0]

    def part(value: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()

    assert gateway.provider is not None
    claims = {"iss": gateway.provider.issuer, "aud": TEST_CLIENT_ID, "iat": int(time.time()), "jti": "j-1",
              "events": {LOGOUT_EVENT: {}}, "sub": data.subject}  # fmt: skip
    response = await _post(gateway, f"{part({'alg': 'none', 'typ': 'logout+jwt'})}.{part(claims)}.")
    assert response.status_code == 400


async def test_a_login_whose_idp_session_the_provider_ends_on_its_way_is_refused_and_recorded(
    gateway: Deployment,
) -> None:
    """The provider ends an IdP session (a logout token naming ``sub`` and ``sid``) while a second sign-in of the
    same browser, in that IdP session, is between the provider and the gateway's callback: the logout ends the
    first session; the session the callback then creates belongs to the ended IdP session and is refused and
    deleted, with a ``login_refused`` record. Before, it lived on."""
    browser = await gateway.login("alice")
    [data] = await _session_data(gateway, "alice")
    assert data.idp_session_id is not None
    steps = await login_steps(gateway.url, "alice", DEMO_PASSWORD, client=browser)  # stops before the callback
    response = await _post(gateway, _token(gateway, sub=data.subject, sid=data.idp_session_id))
    assert response.status_code == 200

    answer = await complete_login(steps.client, steps.callback_url)

    assert answer.status_code == 401
    assert await _session_data(gateway, "alice") == []
    [refused] = await gateway.services.access_log.search(AccessQuery(kind="login_refused", agent_name="alice"))
    assert refused.reason == "idp_session_ended"
    assert refused.detail == {"sid": data.idp_session_id}


async def test_a_first_sign_in_whose_idp_session_the_provider_ends_on_its_way_is_refused_and_recorded(
    gateway: Deployment,
) -> None:
    """The logout (``sub`` and ``sid``) finds no session of that ``sid`` here — the browser's earlier one was ended
    by the gateway's own logout, the sign-in in flight has not reached the callback — and ends nothing, but its end
    is saved: the session the callback then creates belongs to the ended IdP session and is refused. Before, the
    logout was a 400 that saved nothing, and the sign-in lived on."""
    browser = await gateway.login("alice")
    [data] = await _session_data(gateway, "alice")
    assert data.idp_session_id is not None
    await browser.post(gateway.url + "/.channelgate/logout", headers={"Origin": gateway.url})  # the provider's stays
    assert await _session_data(gateway, "alice") == []
    steps = await login_steps(gateway.url, "alice", DEMO_PASSWORD, client=browser)  # stops before the callback

    response = await _post(gateway, _token(gateway, sub=data.subject, sid=data.idp_session_id))
    assert response.status_code == 200, response.text
    answer = await complete_login(steps.client, steps.callback_url)

    assert answer.status_code == 401
    assert await _session_data(gateway, "alice") == []
    [logout] = await gateway.services.access_log.search(AccessQuery(kind="backchannel_logout", agent_name="alice"))
    assert (logout.decision, logout.status) == ("revoked", 200)
    assert logout.detail == {"sessions": 0, "sid": data.idp_session_id, "sign_ins_in_flight_refused": True}
    [refused] = await gateway.services.access_log.search(AccessQuery(kind="login_refused", agent_name="alice"))
    assert refused.reason == "idp_session_ended"
    assert await _chat(browser, gateway) == 401
    await browser.aclose()


async def test_a_sign_in_the_provider_authenticated_after_the_end_of_its_sid_is_not_refused(
    gateway: Deployment,
) -> None:
    """A provider that keeps the ``sid`` across a new authentication vouches for the session after the end: only ends
    since the later of the login's start and the authentication (less the clock margin) refuse a sign-in."""
    browser = await gateway.login("alice")
    [data] = await _session_data(gateway, "alice")
    assert (await _post(gateway, _token(gateway, sub=data.subject, sid=data.idp_session_id))).status_code == 200
    agent = await gateway.services.agents.find("alice")
    assert agent is not None
    margin = gateway.services.revived.clock_margin
    started = time.time()
    pending = PendingLogin("state", "nonce", "verifier", "/", created_at=started)
    identity = Identity(
        data.issuer, data.subject, "alice", None, False, None, frozenset(), data.idp_session_id, None, (), None, "t"
    )
    ended = _ended_on_its_way
    assert await ended(gateway.services, identity, agent.id, pending) is EndKind.IDP_SESSION  # 0 s before it
    authenticated_later = replace(identity, auth_time=started + margin + 1)
    assert await ended(gateway.services, authenticated_later, agent.id, pending) is None
    other_sid = replace(identity, idp_session_id="another-idp-session")
    assert await ended(gateway.services, other_sid, agent.id, pending) is None
    # A logout of every session of the agent (``sub`` alone) reaches a sign-in of any IdP session, or of none.
    assert (await _post(gateway, _token(gateway, sub=data.subject))).status_code == 200
    assert await ended(gateway.services, other_sid, agent.id, pending) is EndKind.AGENT
    assert await ended(gateway.services, replace(identity, idp_session_id=None), agent.id, pending) is EndKind.AGENT
    assert await ended(gateway.services, authenticated_later, agent.id, pending) is None
    await browser.aclose()


async def test_a_sign_in_on_its_way_when_the_provider_logs_the_subject_out_everywhere_is_refused_and_recorded(
    gateway: Deployment,
) -> None:
    """A logout token naming ``sub`` alone ends every session of the agent while a second sign-in is between the
    provider and the callback: the session the callback then creates is refused and deleted, with a record. Before,
    only a logout naming the sign-in's ``sid`` refused it, and this one lived on."""
    browser = await gateway.login("alice")
    [data] = await _session_data(gateway, "alice")
    steps = await login_steps(gateway.url, "alice", DEMO_PASSWORD, client=browser)  # stops before the callback
    response = await _post(gateway, _token(gateway, sub=data.subject))
    assert response.status_code == 200, response.text

    answer = await complete_login(steps.client, steps.callback_url)

    assert answer.status_code == 401
    assert "ended by your organisation while this sign-in was on its way" in answer.text
    assert await _session_data(gateway, "alice") == []
    [refused] = await gateway.services.access_log.search(AccessQuery(kind="login_refused", agent_name="alice"))
    assert (refused.reason, refused.detail) == ("sessions_ended", None)
    assert await _chat(browser, gateway) == 401
    await browser.aclose()


async def test_a_first_sign_in_on_its_way_when_a_sub_only_logout_finds_no_session_is_refused(
    gateway: Deployment,
) -> None:
    """``sub`` alone while the agent has no session here (its earlier one ended by the gateway's own logout) ends
    nothing, but its end is saved: the sign-in then on its way is refused. Before, nothing was saved and that
    sign-in lived on. (One that started after the end and its clock margin is not refused: the test above.)"""
    browser = await gateway.login("alice")
    [data] = await _session_data(gateway, "alice")
    await browser.post(gateway.url + "/.channelgate/logout", headers={"Origin": gateway.url})
    steps = await login_steps(gateway.url, "alice", DEMO_PASSWORD, client=browser)  # stops before the callback

    response = await _post(gateway, _token(gateway, sub=data.subject))
    assert response.status_code == 200, response.text
    answer = await complete_login(steps.client, steps.callback_url)

    assert answer.status_code == 401
    [logout] = await gateway.services.access_log.search(AccessQuery(kind="backchannel_logout", agent_name="alice"))
    assert logout.detail == {"sessions": 0, "sign_ins_in_flight_refused": True}
    [refused] = await gateway.services.access_log.search(AccessQuery(kind="login_refused", agent_name="alice"))
    assert refused.reason == "sessions_ended"
    await browser.aclose()
