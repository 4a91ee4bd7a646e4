"""The ``oauth2`` connector against the real chat console in its OAuth 2.0 mode, over HTTP.

Each connector is one gateway replica: connectors built from one :class:`Replicas` share a real ``agent_secrets``
table (SQLite, migrated) and vault keys. Subject tokens are signed by the gateway's real AssertionSigner, whose
JWKS the console fetches over HTTP. See tests/components/oauth_console.py.
"""

from __future__ import annotations

import asyncio
import base64
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import quote_plus

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncConnection

from connectors.base import AgentRef, Capability, Outcome, UpstreamRequest
from connectors.oauth2 import EXPIRED_ROW_GRACE_SECONDS, REFUSAL_FLOOR_SECONDS
from connectors.vault import Vault
from deploy.demo.console_auth import ASSERTION_HEADER
from deploy.demo.tickets_api import Ticket
from gateway.errors import UpstreamError
from gateway.storage.agent_secrets import AgentSecretRepository, StoredAgentSecret
from tests.components.oauth_console import (
    ALICE,
    BOB,
    CHANNEL,
    CLIENT_ID,
    CLIENT_SECRET,
    CTX,
    Clock,
    OAuthConsole,
    Replicas,
    bearer,
    oauth_console,
    prepared,
)
from tests.components.oauth_console import replicas as shared_database
from tests.components.split_answers import SplitAnswers


@pytest.fixture
async def console() -> AsyncIterator[OAuthConsole]:
    async with oauth_console() as console:
        yield console


@pytest.fixture
async def replicas(tmp_path: Path) -> AsyncIterator[Replicas]:
    async with shared_database(tmp_path) as replicas:
        yield replicas


async def console_page(console: OAuthConsole, request: UpstreamRequest, agent: AgentRef = ALICE) -> httpx.Response:
    """What the console answers to the prepared request, sent with the gateway's assertion as the proxy would."""
    headers = {**dict(request.headers), ASSERTION_HEADER: console.assertion(agent.agent_id, agent.user_name)}
    async with httpx.AsyncClient() as client:
        return await client.get(f"{console.url}/", headers=headers)


async def revoke_at_console(console: OAuthConsole, token: str) -> None:
    """What an administrator of the channel would do: revoke one token through RFC 7009 directly."""
    pair = f"{quote_plus(CLIENT_ID)}:{quote_plus(CLIENT_SECRET)}"  # RFC 6749 §2.3.1
    headers = {"Authorization": "Basic " + base64.b64encode(pair.encode()).decode()}
    async with httpx.AsyncClient() as client:
        answer = await client.post(f"{console.url}/oauth/revoke", data={"token": token}, headers=headers)
    assert answer.status_code == 200


class CountingRepository(AgentSecretRepository):
    """The real repository, counting reads: proves the hot path does not go to the database."""

    reads = 0

    async def list(
        self, agent_id: str, channel: str, *, conn: AsyncConnection | None = None
    ) -> list[StoredAgentSecret]:
        self.reads += 1
        return await super().list(agent_id, channel, conn=conn)


async def test_a_token_is_obtained_once_and_then_served_from_memory(console: OAuthConsole, replicas: Replicas) -> None:
    counting = CountingRepository(replicas.repository._engine)
    replicas.repository = counting
    connector = replicas.connector(console)
    first = await prepared(connector)
    reads = counting.reads
    later = [await prepared(connector) for _ in range(5)]
    assert {bearer(request) for request in later} == {bearer(first)}
    assert counting.reads == reads
    assert console.oauth.tokens.exchanges == 1
    page = await console_page(console, first)
    assert page.status_code == 200
    assert "You are <strong>alice</strong>" in page.text


async def test_every_token_obtained_is_stored_sealed_with_its_expiry(console: OAuthConsole, replicas: Replicas) -> None:
    request = await prepared(replicas.connector(console))
    rows = {row.name.split(":")[0]: row for row in await replicas.secrets().list(ALICE.agent_id)}
    assert set(rows) == {"access", "refresh"}
    assert rows["access"].value.reveal() == bearer(request)
    assert rows["access"].meta["expires_at"] == pytest.approx(time.time() + 300, abs=5)
    assert rows["refresh"].meta["grant"] == rows["access"].meta["grant"]
    for stored in await replicas.repository.list(ALICE.agent_id, CHANNEL):
        assert bearer(request).encode() not in stored.ciphertext


async def test_concurrent_requests_for_one_agent_obtain_one_token(console: OAuthConsole, replicas: Replicas) -> None:
    connector = replicas.connector(console)
    requests = await asyncio.gather(*(prepared(connector) for _ in range(20)))
    assert len({bearer(request) for request in requests}) == 1
    assert console.oauth.tokens.exchanges == 1


async def test_another_replica_uses_the_stored_token_without_a_new_exchange(
    console: OAuthConsole, replicas: Replicas
) -> None:
    first = await prepared(replicas.connector(console))
    second = await prepared(replicas.connector(console))
    assert bearer(second) == bearer(first)
    assert console.oauth.tokens.exchanges == 1


async def test_each_agent_gets_their_own_token(console: OAuthConsole, replicas: Replicas) -> None:
    connector = replicas.connector(console)
    alice, bob = await prepared(connector, ALICE), await prepared(connector, BOB)
    assert bearer(alice) != bearer(bob)
    assert (await console_page(console, bob, BOB)).status_code == 200
    assert (await console_page(console, alice, BOB)).status_code == 401  # alice's token is not bob's


async def test_the_token_is_refreshed_before_it_expires(console: OAuthConsole, replicas: Replicas) -> None:
    clock = Clock()
    connector = replicas.connector(console, clock=clock, refresh_margin_seconds=30)
    first = await prepared(connector)
    clock.shift = 300 - 30 + 1
    second = await prepared(connector)
    assert bearer(second) != bearer(first)
    assert console.oauth.tokens.exchanges == 1  # the refresh grant, not another exchange
    assert (await console_page(console, second)).status_code == 200
    names = [row.name for row in await replicas.secrets().list(ALICE.agent_id)]
    assert sum(name.startswith("refresh:") for name in names) == 1  # the rotated refresh token replaced (§6)


async def test_access_token_rows_long_past_expiry_are_dropped(console: OAuthConsole, replicas: Replicas) -> None:
    clock = Clock()
    connector = replicas.connector(console, clock=clock)
    first = await prepared(connector)
    clock.shift = 300 + EXPIRED_ROW_GRACE_SECONDS + 1
    second = await prepared(connector)
    values = {row.value.reveal() for row in await replicas.secrets().list(ALICE.agent_id)}
    assert bearer(second) in values
    assert bearer(first) not in values


async def test_a_401_refreshes_once_and_the_resent_request_is_accepted(
    console: OAuthConsole, replicas: Replicas
) -> None:
    clock = Clock()
    connector = replicas.connector(console, clock=clock)
    request = await prepared(connector)
    await revoke_at_console(console, bearer(request))
    clock.shift = REFUSAL_FLOOR_SECONDS  # not refused the moment it was obtained (see the floor's own test)
    refused = await console_page(console, request)
    assert refused.status_code == 401
    assert 'error="invalid_token"' in refused.headers["www-authenticate"]
    assert await connector.on_upstream_unauthorized(ALICE, request) is True
    assert (await console_page(console, request)).status_code == 200
    assert console.oauth.tokens.exchanges == 1
    assert [name for name, _ in request.headers].count("Authorization") == 1


async def test_after_the_grant_is_revoked_a_401_exchanges_a_new_token(
    console: OAuthConsole, replicas: Replicas
) -> None:
    clock = Clock()
    connector = replicas.connector(console, clock=clock)
    request = await prepared(connector)
    [refresh] = [r for r in await replicas.secrets().list(ALICE.agent_id) if r.name.startswith("refresh:")]
    await revoke_at_console(console, refresh.value.reveal())
    clock.shift = REFUSAL_FLOOR_SECONDS
    assert await connector.on_upstream_unauthorized(ALICE, request) is True
    assert (await console_page(console, request)).status_code == 200
    assert console.oauth.tokens.exchanges == 2


async def test_a_401_for_a_token_another_request_already_replaced_takes_the_new_one(
    console: OAuthConsole, replicas: Replicas
) -> None:
    clock = Clock()
    connector = replicas.connector(console, clock=clock)
    one, two = await prepared(connector), await prepared(connector)
    await revoke_at_console(console, bearer(one))
    clock.shift = REFUSAL_FLOOR_SECONDS
    results = await asyncio.gather(
        connector.on_upstream_unauthorized(ALICE, one), connector.on_upstream_unauthorized(ALICE, two)
    )
    assert list(results) == [True, True]
    assert bearer(one) == bearer(two)
    access_rows = [r for r in await replicas.secrets().list(ALICE.agent_id) if r.name.startswith("access:")]
    assert len(access_rows) == 2  # the refused one (kept for the pipeline) and one replacement, not two


async def test_a_page_that_always_answers_401_costs_no_token_call_per_request(
    console: OAuthConsole, replicas: Replicas
) -> None:
    clock = Clock()
    connector = replicas.connector(console, clock=clock)
    for _ in range(5):
        request = await prepared(connector)
        assert await connector.on_upstream_unauthorized(ALICE, request) is False  # the 401 is passed on
    assert console.oauth.tokens.exchanges == 1
    assert len([r for r in await replicas.secrets().list(ALICE.agent_id) if r.name.startswith("access:")]) == 1
    clock.shift = REFUSAL_FLOOR_SECONDS  # once the floor has passed, a refusal gets one fresh token
    request = await prepared(connector)
    assert await connector.on_upstream_unauthorized(ALICE, request) is True
    request = await prepared(connector)
    assert await connector.on_upstream_unauthorized(ALICE, request) is False


async def test_tokens_obtained_on_one_replica_are_revoked_and_verified_by_another(
    console: OAuthConsole, replicas: Replicas
) -> None:
    replica_a, replica_b = replicas.connector(console), replicas.connector(console)
    request = await prepared(replica_a)
    revoked = await replica_b.revoke(ALICE, CTX)
    assert revoked.outcome is Outcome.DONE, revoked.detail
    assert "revoked 2 tokens (1 refresh, 1 access)" in revoked.detail
    refused = await console_page(console, request)
    assert refused.status_code == 401
    assert 'error="invalid_token"' in refused.headers["www-authenticate"]
    rows = await replicas.secrets().list(ALICE.agent_id)
    assert len(rows) == 2
    assert all(row.meta["revoked_at"] for row in rows)  # kept until verified
    [effect] = console.effects.entries
    assert (effect.effect, effect.subject) == ("token_revoked", "alice")
    assert effect.idempotency_key is not None
    assert effect.idempotency_key.startswith(CTX.idempotency_key)
    verified = await replica_b.verify_no_access(ALICE, CTX)
    assert verified.outcome is Outcome.DONE, verified.detail
    assert await replicas.secrets().list(ALICE.agent_id) == []


async def test_after_revocation_the_agent_is_not_served_the_revoked_token_again(
    console: OAuthConsole, replicas: Replicas
) -> None:
    connector = replicas.connector(console)
    first = await prepared(connector)
    await connector.revoke(ALICE, CTX)
    again = await prepared(connector)
    assert bearer(again) != bearer(first)
    assert console.oauth.tokens.exchanges == 2


async def test_verification_fails_while_a_token_is_still_active(console: OAuthConsole, replicas: Replicas) -> None:
    connector = replicas.connector(console)
    await prepared(connector)
    result = await connector.verify_no_access(ALICE, CTX)
    assert result.outcome is Outcome.FAILED
    assert result.detail.startswith("access remains: 2 of 2 tokens still active")
    assert len(await replicas.secrets().list(ALICE.agent_id)) == 2


async def test_with_nothing_obtained_revoke_and_verify_are_done_and_say_so(
    console: OAuthConsole, replicas: Replicas
) -> None:
    connector = replicas.connector(console)
    revoked = await connector.revoke(ALICE, CTX)
    verified = await connector.verify_no_access(ALICE, CTX)
    assert (revoked.outcome, verified.outcome) == (Outcome.DONE, Outcome.DONE)
    assert revoked.detail == "no token was obtained for the agent"
    assert "all 0 tokens" in verified.detail
    assert console.effects.entries == []


async def test_a_channel_that_cannot_be_reached_is_retried_and_completes_when_it_is_back(
    console: OAuthConsole, replicas: Replicas
) -> None:
    connector = replicas.connector(console)
    await prepared(connector)
    await console.served.stop()
    revoked = await connector.revoke(ALICE, CTX)
    verified = await connector.verify_no_access(ALICE, CTX)
    assert (revoked.outcome, verified.outcome) == (Outcome.RETRY, Outcome.RETRY)
    assert "cannot be reached" in revoked.detail
    assert "0 of 2 tokens revoked so far" in revoked.detail
    assert all(row.meta["revoked_at"] is None for row in await replicas.secrets().list(ALICE.agent_id))
    with pytest.raises(UpstreamError, match="did not issue you an access token") as raised:
        await prepared(connector, BOB)
    assert "cannot be reached" in str(raised.value.detail)


async def test_a_retried_revocation_reaches_the_console_as_a_replay_with_one_effect(
    console: OAuthConsole, replicas: Replicas
) -> None:
    connector = replicas.connector(console)
    await prepared(connector)
    before = await replicas.repository.list(ALICE.agent_id, CHANNEL)
    assert (await connector.revoke(ALICE, CTX)).outcome is Outcome.DONE
    # A crash between the console's answers and our commit: the rows come back unmarked, the step runs again.
    for stored in before:
        await replicas.repository.put(stored)
    again = await replicas.connector(console).revoke(ALICE, CTX)
    assert again.outcome is Outcome.DONE
    assert console.oauth.replays == 2  # one per token, each under its own key
    assert len(console.effects.entries) == 1
    assert (await connector.verify_no_access(ALICE, CTX)).outcome is Outcome.DONE


async def test_hand_over_and_remove_are_not_applicable_without_a_ticket_api(
    console: OAuthConsole, replicas: Replicas
) -> None:
    connector = replicas.connector(console)
    assert connector.capabilities == {Capability.INJECT, Capability.REVOKE_TOKENS, Capability.VERIFY}
    assert (await connector.hand_over(ALICE, BOB, CTX)).outcome is Outcome.NOT_APPLICABLE
    assert (await connector.remove(ALICE, CTX)).outcome is Outcome.NOT_APPLICABLE
    assert (await connector.provision(ALICE, CTX)).outcome is Outcome.NOT_APPLICABLE


async def test_forget_drops_this_replicas_memory_but_not_the_stored_token(
    console: OAuthConsole, replicas: Replicas
) -> None:
    counting = CountingRepository(replicas.repository._engine)
    replicas.repository = counting
    connector = replicas.connector(console)
    first = await prepared(connector)
    await connector.forget(ALICE.agent_id)
    reads = counting.reads
    again = await prepared(connector)
    assert counting.reads == reads + 1
    assert bearer(again) == bearer(first)
    assert console.oauth.tokens.exchanges == 1


async def test_with_a_ticket_api_open_tickets_are_handed_to_the_successor(replicas: Replicas) -> None:
    tickets = [Ticket("T-1", "Refund", "alice"), Ticket("T-2", "Login", "alice"), Ticket("T-3", "Other", "bob")]
    async with oauth_console(tickets=tickets) as console:
        desk = {"url": f"{console.url}/api/", "fallback_queue": "support"}
        connector = replicas.connector(console, tickets=desk)
        assert Capability.TICKETS in connector.capabilities
        result = await connector.hand_over(ALICE, AgentRef("agent-carol", "carol"), CTX)
    assert (result.outcome, result.detail) == (Outcome.DONE, "2 open tickets handed to carol")
    assert [(e.effect, e.subject) for e in console.effects.entries] == [("ticket reassigned", "alice")] * 2


async def test_a_token_answer_that_arrives_in_two_parts_is_read_whole(replicas: Replicas) -> None:
    async with oauth_console(wrap=SplitAnswers) as console:
        request = await prepared(replicas.connector(console))
        assert (await console_page(console, request)).status_code == 200


async def test_after_the_old_vault_key_is_removed_an_agent_gets_a_new_token_instead_of_an_error(
    console: OAuthConsole, replicas: Replicas
) -> None:
    """A token sealed under a key that is no longer configured is unreadable: absent for a request, named by the
    pipeline, which can neither revoke nor introspect it."""
    await prepared(replicas.connector(console))
    replicas.vault = Vault({"k2": os.urandom(32)}, "k2")  # k1 removed, a restart (empty memory)
    restarted = replicas.connector(console)
    request = await prepared(restarted)
    assert (await console_page(console, request)).status_code == 200
    assert console.oauth.tokens.exchanges == 2
    revoked = await restarted.revoke(ALICE, CTX)
    assert revoked.outcome is Outcome.FAILED
    assert "2 token(s) are sealed under vault key 'k1'" in revoked.detail  # the unreadable refresh and access
    assert "add the key back" in revoked.detail
    verified = await restarted.verify_no_access(ALICE, CTX)
    assert (verified.outcome, verified.detail.startswith("access may remain")) == (Outcome.FAILED, True)
