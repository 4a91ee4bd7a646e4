"""OIDC Back-Channel Logout 1.0 §2.4: a logout token may name the provider session (``sid``) without the subject.
Against npm oidc-provider, with tokens signed by its own key (as test_backchannel_logout.py builds them), on the
embedded store, on Redis with two replicas, and on Redis with the in-process session cache.

A token naming only ``sid`` ends every gateway session that came from that provider session, on every replica,
and no other session of the agent; the receipt is the same as for a token naming ``sub`` too. A ``sid`` with no
live session is refused and its ``jti`` stays unused; a ``sid`` that is not the subject's ends nothing.
"""

from __future__ import annotations

import copy
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import timedelta
from typing import Any

import httpx
import pytest

from gateway.errors import StorageError
from gateway.sessions.base import Session, session_key
from gateway.storage.agents import Agent
from gateway.timeutil import utcnow
from tests.components.asgi_server import bound_socket
from tests.components.browserless_login import login
from tests.components.echo_gateway import Deployment, deployment
from tests.components.inprocess import running_gateway
from tests.components.oidc_provider import DEMO_PASSWORD, OidcProviderFactory
from tests.components.ports import LOOPBACK
from tests.integration.test_backchannel_logout import _post, _token

pytestmark = [pytest.mark.oidc, pytest.mark.timeout(120)]
JSON = {"Accept": "application/json"}


@pytest.fixture(
    params=[
        "memory",
        pytest.param("redis", marks=pytest.mark.redis),
        pytest.param("redis-cached", marks=pytest.mark.redis),
    ]
)
async def gateways(
    request: pytest.FixtureRequest, oidc_provider_factory: OidcProviderFactory
) -> AsyncIterator[tuple[Deployment, list[str]]]:
    """The gateway and the URLs of its replicas: one on the embedded store, two sharing Redis (with the session
    cache in the last case, which each replica must drop when the other ends a session)."""
    redis_url = None if request.param == "memory" else str(request.getfixturevalue("redis_url"))
    cache = "local_cache_seconds = 5" if request.param == "redis-cached" else ""
    async with deployment(oidc_provider_factory, redis_url=redis_url, extra_sessions_toml=cache) as first:
        if redis_url is None:
            yield first, [first.url]
            return
        sock = bound_socket()
        try:
            async with running_gateway(first.services.settings, sock):
                yield first, [first.url, f"http://{LOOPBACK}:{sock.getsockname()[1]}"]
        finally:
            sock.close()


async def _chat(client: httpx.AsyncClient, url: str) -> int:
    return (await client.get(url + "/chat/", headers=JSON)).status_code


async def _again_in_the_same_provider_session(gateway: Deployment, browser: httpx.AsyncClient) -> httpx.AsyncClient:
    """A second gateway session from the provider session ``browser`` holds: another browser profile with its
    provider cookies but not the gateway's, which signs in without a password (single sign-on)."""
    other = httpx.AsyncClient(timeout=10.0)
    for cookie in browser.cookies.jar:
        if cookie.name != gateway.services.cookies.session_name:
            other.cookies.jar.set_cookie(copy.copy(cookie))
    gateway.clients.append(other)
    return await login(gateway.url, "alice", DEMO_PASSWORD, client=other)


async def _session_of(gateway: Deployment, client: httpx.AsyncClient) -> Session:
    """The stored session behind a browser's gateway cookie (its id here is the storage key)."""
    key = session_key(str(client.cookies.get(gateway.services.cookies.session_name)))
    agent = await gateway.services.agents.find("alice")
    assert agent is not None
    sessions = await gateway.services.sessions.sessions_of(agent.id, time.time())
    return next(session for session in sessions if session.id == key)


async def test_a_logout_token_with_only_sid_ends_the_sessions_of_that_provider_session_on_every_replica(
    gateways: tuple[Deployment, list[str]],
) -> None:
    gateway, replicas = gateways
    laptop = await gateway.login("alice")
    laptop_again = await _again_in_the_same_provider_session(gateway, laptop)
    phone = await gateway.login("alice")  # another provider session of the same agent
    bob = await gateway.login("bob")
    sid = (await _session_of(gateway, laptop)).data.idp_session_id
    assert sid is not None and (await _session_of(gateway, laptop_again)).data.idp_session_id == sid
    assert (await _session_of(gateway, phone)).data.idp_session_id != sid
    for url in replicas:  # every replica has served (and, with the cache, kept) each session
        assert [await _chat(c, url) for c in (laptop, laptop_again, phone, bob)] == [200] * 4

    token = _token(gateway, sid=sid)
    response = await _post(gateway, token)

    assert response.status_code == 200, response.text
    assert response.headers["cache-control"] == "no-store"
    for url in replicas:
        assert [await _chat(c, url) for c in (laptop, laptop_again, phone, bob)] == [401, 401, 200, 200], url
    agent = await gateway.services.agents.find("alice")
    assert agent is not None and agent.active  # a logout, not a deprovisioning
    records = [
        r for r in await gateway.services.audit._repository.for_agent(agent.id) if r.kind == "backchannel_logout"
    ]
    assert [(r.decision, r.agent_name, r.status) for r in records] == [("revoked", "alice", 200)]
    detail = records[0].detail or {}
    assert (detail["sessions"], detail["sid"], detail["replicas_missing"]) == (2, sid, [])
    replayed = await _post(gateway, token)  # acted on: now the jti is used
    assert replayed.status_code == 400 and "already used" in replayed.json()["error_description"]
    assert await _chat(phone, replicas[-1]) == 200


async def test_a_sid_with_no_live_session_is_refused_and_its_token_stays_unused(
    gateways: tuple[Deployment, list[str]],
) -> None:
    gateway, _ = gateways
    alice = await gateway.login("alice")
    sid = (await _session_of(gateway, alice)).data.idp_session_id
    await alice.post(gateway.url + "/.channelgate/logout", headers={"Origin": gateway.url})  # ended here first
    token = _token(gateway, sid=sid)

    for _ in range(2):  # the same token twice: not consumed by the refusal, so never "already used"
        response = await _post(gateway, token)
        assert response.status_code == 400, response.text
        assert response.json() == {"error": "invalid_request", "error_description": "no session came from that sid"}
    records = await gateway.services.audit._repository.tail(50)
    assert [r.decision for r in records if r.kind == "backchannel_logout"] == ["refused", "refused"]


async def test_a_sid_that_is_not_the_subjects_ends_nothing_and_only_the_subjects_sign_ins_of_it_are_refused(
    gateways: tuple[Deployment, list[str]],
) -> None:
    """No session of alice's came from that ``sid``: nothing of hers or of bob's ends, and the end saved for it
    (for a sign-in of it on its way) is alice's alone."""
    gateway, _ = gateways
    alice, bob = await gateway.login("alice"), await gateway.login("bob")
    alice_data = (await _session_of(gateway, alice)).data
    bob_agent = await gateway.services.agents.find("bob")
    assert bob_agent is not None
    (bob_session,) = await gateway.services.sessions.sessions_of(bob_agent.id, time.time())
    sid = bob_session.data.idp_session_id
    assert sid is not None
    before = utcnow() - timedelta(seconds=5)

    response = await _post(gateway, _token(gateway, sub=alice_data.subject, sid=sid))

    assert response.status_code == 200, response.text
    assert (await _chat(alice, gateway.url), await _chat(bob, gateway.url)) == (200, 200)
    logouts = gateway.services.logouts
    assert await logouts.ended_idp_session(sid, before, alice_data.agent_id)
    assert not await logouts.ended_idp_session(sid, before, bob_agent.id)


async def _bob_also_signed_in_by_alices_sid(
    gateway: Deployment,
) -> tuple[httpx.AsyncClient, httpx.AsyncClient, str | None, Agent, Session]:
    """Alice and bob signed in, and bob holding a second session the provider tied to alice's ``sid``: alice's and
    bob's clients, that sid, bob's agent and his own session (from his own provider session)."""
    alice, bob = await gateway.login("alice"), await gateway.login("bob")
    sid = (await _session_of(gateway, alice)).data.idp_session_id
    bob_agent = await gateway.services.agents.find("bob")
    assert bob_agent is not None
    (bob_session,) = await gateway.services.sessions.sessions_of(bob_agent.id, time.time())
    await gateway.services.sessions.create(replace(bob_session.data, idp_session_id=sid), time.time())
    return alice, bob, sid, bob_agent, bob_session


async def test_a_sid_the_provider_gave_two_subjects_ends_the_sessions_of_both_and_the_record_names_them(
    gateways: tuple[Deployment, list[str]],
) -> None:
    """Not what a provider should do (an IdP session is one user's), but the token says that IdP session ended."""
    gateway, replicas = gateways
    alice, bob, sid, bob_agent, bob_session = await _bob_also_signed_in_by_alices_sid(gateway)

    response = await _post(gateway, _token(gateway, sid=sid))

    assert response.status_code == 200, response.text
    assert (await _chat(alice, replicas[-1]), await _chat(bob, replicas[-1])) == (401, 200)
    # Bob's session from that sid ended, his own (from his own provider session) did not.
    assert [s.id for s in await gateway.services.sessions.sessions_of(bob_agent.id, time.time())] == [bob_session.id]
    records = await gateway.services.audit._repository.tail(50)
    (record,) = [r for r in records if r.kind == "backchannel_logout"]
    assert (record.decision, record.agent_id) == ("revoked", None)
    assert record.detail is not None and (record.detail["agents"], record.detail["sessions"]) == (["alice", "bob"], 2)


async def test_a_sid_of_two_subjects_whose_save_fails_ends_both_and_the_resent_token_is_answered_done(
    gateways: tuple[Deployment, list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The database fails the save once: every agent's sessions from that sid are ended all the same (not only the
    first agent's), the provider gets a 503, and its resend of the token, which finds no session left, gets 200
    because the ends were saved meanwhile."""
    gateway, replicas = gateways
    alice, bob, sid, bob_agent, bob_session = await _bob_also_signed_in_by_alices_sid(gateway)
    ends = gateway.services.logouts._ends
    real = ends.add
    calls: list[None] = []

    async def down_once(*args: Any, **kwargs: Any) -> None:
        calls.append(None)
        if len(calls) == 1:
            raise StorageError("database write failed on sqlite:///…", detail="database is locked")
        await real(*args, **kwargs)

    monkeypatch.setattr(ends, "add", down_once)
    token = _token(gateway, sid=sid)

    assert (await _post(gateway, token)).status_code == 503
    assert [s.id for s in await gateway.services.sessions.sessions_of(bob_agent.id, time.time())] == [bob_session.id]
    assert (await _chat(alice, replicas[-1]), await _chat(bob, replicas[-1])) == (401, 200)
    await gateway.services.logouts.flush()  # the sweep task's next turn saves the kept ends
    resent = await _post(gateway, token)
    assert resent.status_code == 200, resent.text


async def test_a_sub_and_sid_logout_whose_save_failed_is_answered_done_when_resent(
    gateways: tuple[Deployment, list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    gateway, _ = gateways
    alice = await gateway.login("alice")
    data = (await _session_of(gateway, alice)).data
    ends = gateway.services.logouts._ends

    async def down(*args: Any, **kwargs: Any) -> None:
        raise StorageError("database write failed on sqlite:///…", detail="database is locked")

    monkeypatch.setattr(ends, "add", down)
    token = _token(gateway, sub=data.subject, sid=data.idp_session_id)

    assert (await _post(gateway, token)).status_code == 503
    assert await _chat(alice, gateway.url) == 401
    resent = await _post(gateway, token)  # the end is still only kept in process, not yet saved
    assert resent.status_code == 200, resent.text
