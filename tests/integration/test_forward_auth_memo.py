"""A forward-auth answer is reused for the same question only while everything it was decided from still holds
(gateway/forward_auth_memo.py): the real gateway in this process, asked at /.channelgate/auth as nginx asks it,
with the embedded session store and with Redis behind the in-process session cache."""

from __future__ import annotations

import dataclasses
import secrets
from collections.abc import AsyncIterator
from urllib.parse import unquote

import httpx
import pytest

from gateway.forward_auth import SECRET_HEADER
from gateway.sessions.base import SessionData
from gateway.storage.access_log import AccessRecord
from policies.decision import Context, Decision, Subject, Target
from policies.engine import PolicyEngine
from policies.loader import PolicySource, default_policy_dir, load
from tests.components.echo_gateway import FORWARD_AUTH_STORES, Deployment, forward_auth_deployment
from tests.components.oidc_provider import OidcProviderFactory

pytestmark = [pytest.mark.oidc, pytest.mark.timeout(90)]

SECRET = secrets.token_urlsafe(32)
#: The headers nginx's sample configuration sends (deploy/nginx/forward-auth.conf).
NGINX = {"X-Original-Method": "GET", SECRET_HEADER: SECRET}
#: What a 200 carries for the proxy; the date differs per answer.
ANSWER = ("content-length", "authorization", "x-channelgate-assertion", "x-channelgate-user", "x-channelgate-channel",
          "x-channelgate-policy", "cache-control")  # fmt: skip


@pytest.fixture(params=FORWARD_AUTH_STORES)
async def gateway(
    request: pytest.FixtureRequest, oidc_provider_factory: OidcProviderFactory
) -> AsyncIterator[Deployment]:
    async with forward_auth_deployment(request, oidc_provider_factory, SECRET) as deployed:
        yield deployed


async def _ask(gateway: Deployment, client: httpx.AsyncClient, uri: str = "/chat/echo", **extra: str) -> httpx.Response:
    return await client.get(f"{gateway.url}/.channelgate/auth", headers={**NGINX, "X-Original-URI": uri, **extra})


async def _agent_id(gateway: Deployment, user_name: str) -> str:
    agent = await gateway.services.agents.find_by_user_name(user_name)
    assert agent is not None
    return agent.id


def _memo(gateway: Deployment) -> tuple[int, int]:
    memo = gateway.services.forward_auth_memo
    return memo.hits, memo.misses


async def test_a_repeated_question_gets_the_same_answer_and_its_own_access_record(gateway: Deployment) -> None:
    alice = await gateway.login("alice")
    first = await _ask(gateway, alice)
    assert first.status_code == 200 and _memo(gateway)[0] == 0
    second = await _ask(gateway, alice)
    assert second.status_code == 200 and _memo(gateway)[0] == 1
    assert [(n, second.headers.get(n)) for n in ANSWER] == [(n, first.headers.get(n)) for n in ANSWER]
    assert second.headers["authorization"] == f"Bearer {gateway.credentials['chat']}"
    await gateway.services.audit.flush()
    records = [r for r in await gateway.services.access_log.tail(10) if r.kind == "request"][-2:]
    assert [r.detail for r in records] == [{"via": "forward-auth"}] * 2
    assert records[0].request_id != records[1].request_id
    # The kept answer's record is the full path's, field for field, but for when, which request, and the chain.
    own = {"seq", "time", "request_id", "chain_pos", "content_hash", "prev_hash", "hash"}
    fields = [f.name for f in dataclasses.fields(AccessRecord) if f.name not in own]
    assert [getattr(records[1], f) for f in fields] == [getattr(records[0], f) for f in fields]
    assert (records[1].agent_name, records[1].status, records[1].decision) == ("alice", 200, "allow")


@pytest.mark.parametrize("user_name", ["김민수", "Łukasz", "李明"])
async def test_an_agent_named_in_any_letters_is_answered_with_its_name_percent_encoded_then_from_the_memo(
    gateway: Deployment, user_name: str
) -> None:
    """HTTP carries Latin-1 octets only: the userName travels percent-encoded in X-Channelgate-User (encoded once,
    when the answer is kept), and as it is in the assertion and the access log."""
    data = SessionData(f"agent-{secrets.token_hex(4)}", user_name, "https://idp.example", f"sub-{user_name}",
                       frozenset({"chat-agents"}))  # fmt: skip
    session = await gateway.services.sessions.create(data, gateway.services.clock())
    cookie = {"Cookie": f"{gateway.services.cookies.session_name}={session.id}"}
    async with httpx.AsyncClient() as agent:
        answers = [await _ask(gateway, agent, **cookie) for _ in range(2)]
    assert [a.status_code for a in answers] == [200, 200] and _memo(gateway)[0] == 1
    for answer in answers:
        assert answer.headers["authorization"] == f"Bearer {gateway.credentials['chat']}"
        sent = answer.headers["x-channelgate-user"]
        assert sent.isascii() and unquote(sent) == user_name
        claims = await gateway.verify_assertion(answer.headers["x-channelgate-assertion"], "chat")
        assert claims["preferred_username"] == user_name
    await gateway.services.audit.flush()
    records = [r for r in await gateway.services.access_log.tail(10) if r.kind == "request"][-2:]
    assert [(r.agent_name, r.status) for r in records] == [(user_name, 200)] * 2


async def test_a_group_change_is_decided_anew_on_the_next_question(gateway: Deployment) -> None:
    bob = await gateway.login("bob")
    assert (await _ask(gateway, bob)).status_code == 200
    assert (await _ask(gateway, bob)).status_code == 200 and _memo(gateway)[0] == 1
    await gateway.services.sessions.update_agent_groups(await _agent_id(gateway, "bob"), frozenset({"phone-agents"}))
    refused = await _ask(gateway, bob)
    assert refused.status_code == 403 and _memo(gateway)[0] == 1
    assert (await _ask(gateway, bob, "/phone/echo")).status_code == 200


async def test_a_revoked_session_is_refused_on_the_next_question(gateway: Deployment) -> None:
    alice = await gateway.login("alice")
    assert (await _ask(gateway, alice)).status_code == 200
    assert (await _ask(gateway, alice)).status_code == 200 and _memo(gateway)[0] == 1
    await gateway.services.sessions.revoke_agent(await _agent_id(gateway, "alice"))
    assert (await _ask(gateway, alice)).status_code == 401
    assert _memo(gateway)[0] == 1


async def test_a_policy_reload_and_the_next_minute_are_decided_anew(gateway: Deployment) -> None:
    alice = await gateway.login("alice")
    now = gateway.services.clock()
    gateway.services.clock = lambda: now - now % 60 + 10  # ten seconds into a minute
    assert (await _ask(gateway, alice)).status_code == 200
    assert (await _ask(gateway, alice)).status_code == 200 and _memo(gateway) == (1, 1)
    assert gateway.services.policy is not None
    gateway.services.policy.reload()  # the same files: a new set in force all the same
    assert (await _ask(gateway, alice)).status_code == 200 and _memo(gateway) == (1, 2)
    assert (await _ask(gateway, alice)).status_code == 200 and _memo(gateway) == (2, 2)
    gateway.services.clock = lambda: now - now % 60 + 70  # the next minute: a rule about shifts would see it
    assert (await _ask(gateway, alice)).status_code == 200 and _memo(gateway) == (2, 3)


async def test_an_answer_decided_just_before_a_reload_is_not_kept_for_the_new_set(gateway: Deployment) -> None:
    """The reload assigns the engine from a worker thread: here it lands right after the decision, before the
    answer is kept. The answer belongs to the set that decided it, so the next question is decided anew."""
    alice = await gateway.login("alice")
    point = gateway.services.policy
    assert point is not None
    now = gateway.services.clock()
    gateway.services.clock = lambda: now - now % 60 + 5  # early in a minute: the answer would be kept
    routes = PolicySource("routes.cedar", (default_policy_dir() / "routes.cedar").read_text())
    lockdown = PolicySource("lockdown.cedar", '@id("lockdown") forbid (principal, action, resource);')
    locked = PolicyEngine(load([routes, lockdown]))
    decide = point.decide

    def reloaded_after_deciding(subject: Subject, target: Target, action: str, context: Context) -> Decision:
        decision = decide(subject, target, action, context)
        point.engine = locked
        return decision

    point.decide = reloaded_after_deciding  # type: ignore[method-assign]
    assert (await _ask(gateway, alice)).status_code == 200  # decided by the old set, which allowed it
    point.decide = decide  # type: ignore[method-assign]
    again = await _ask(gateway, alice)
    assert (again.status_code, again.headers["x-channelgate-error"]) == (403, "forbidden")
    assert _memo(gateway)[0] == 0


async def test_a_kept_answer_is_not_given_to_another_caller_form_or_question(gateway: Deployment) -> None:
    alice = await gateway.login("alice")
    assert (await _ask(gateway, alice)).status_code == 200
    hits = _memo(gateway)[0]
    assert (await _ask(gateway, alice, **{SECRET_HEADER: "not-the-secret"})).status_code == 404
    assert (await _ask(gateway, alice, **{"X-Channelgate-Auth-Mode": "explain"})).status_code == 303
    assert (await _ask(gateway, alice, "/chat/echo?x=1")).status_code == 200  # another question
    described_twice = await _ask(gateway, alice, **{"X-Forwarded-Uri": "/phone/echo"})
    assert (described_twice.status_code, described_twice.headers["x-channelgate-error"]) == (403, "bad_request")
    too_large = {"X-Padding": "p" * gateway.services.settings.server.max_header_bytes}
    assert (await _ask(gateway, alice, **too_large)).status_code != 200
    anonymous = httpx.AsyncClient()
    try:
        assert (await _ask(gateway, anonymous)).status_code == 401
    finally:
        await anonymous.aclose()
    assert _memo(gateway)[0] == hits
