"""The ``seats`` connector against the real demo phone console in seats mode, over HTTP.

Seats are created on first use (once per agent, however many requests arrive together) or by ``provision``;
the key one replica obtained is used by every other through ``agent_secrets``; deprovisioning disables the seat
and verification reads it back and tries the old key. A console that is down or answers 503 makes a step RETRY,
a wrong admin key makes it FAIL with something to act on, and a replayed idempotency key has one effect.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from connectors.base import AgentRef, Capability, Outcome, StepContext, StepResult, UpstreamRequest
from connectors.seats import REFUSAL_FLOOR_SECONDS, SECRET_NAME, SeatsConnector
from connectors.vault import Vault
from deploy.demo.console_auth import ASSERTION_HEADER
from gateway.errors import AccessDenied, ChannelgateError, UpstreamError
from tests.components.seats_console import ADMIN_KEY, Console, Replicas, demo_console, replicas
from tests.components.split_answers import SplitAnswers

ALICE = AgentRef(agent_id="agent-alice", user_name="alice", email="alice@example.com", manager_user_name="carol")
BOB = AgentRef(agent_id="agent-bob", user_name="bob")


def ctx(step: str) -> StepContext:
    return StepContext(idempotency_key=f"run-{uuid.uuid4().hex}:phone:{step}")


@pytest.fixture
async def console() -> AsyncIterator[Console]:
    async with demo_console("phone", auth="seats") as console:
        yield console


@pytest.fixture
async def shared(tmp_path: Path) -> AsyncIterator[Replicas]:
    async with replicas(f"sqlite+aiosqlite:///{tmp_path}/channelgate.db") as shared:
        yield shared


async def prepared(connector: SeatsConnector, console: Console, agent: AgentRef = ALICE) -> UpstreamRequest:
    request = UpstreamRequest("GET", f"{console.url}/", [("Accept", "text/html")])
    await connector.prepare(agent, request)
    return request


async def upstream(console: Console, request: UpstreamRequest, agent: AgentRef = ALICE) -> httpx.Response:
    """Send the prepared request to the console as the proxy would: with the gateway's assertion for ``agent``."""
    headers = [*request.headers, (ASSERTION_HEADER, console.assertion(agent.agent_id, agent.user_name))]
    async with httpx.AsyncClient() as client:
        return await client.request(request.method, request.url, headers=headers)


def later(connector: SeatsConnector) -> SeatsConnector:
    """The connector past the refusal floor of every key obtained so far: a refusal now gets a new key."""
    connector.clock = lambda: time.time() + REFUSAL_FLOOR_SECONDS
    return connector


async def effects(console: Console, effect: str, subject: str = "alice") -> list[str]:
    return [e["idempotency_key"] for e in await console.effects(subject) if e["effect"] == effect]


async def admin(console: Console, method: str, path: str, **kwargs: object) -> httpx.Response:
    """The vendor's admin API used behind the gateway's back (an administrator at the vendor)."""
    async with httpx.AsyncClient(base_url=f"{console.url}/admin/", headers=console.service_headers()) as client:
        return await client.request(method, path, **kwargs)  # type: ignore[arg-type]


async def test_an_agents_first_requests_create_one_seat_however_many_arrive_together(
    console: Console, shared: Replicas
) -> None:
    connector = shared.seats(console)
    requests = await asyncio.gather(*(prepared(connector, console) for _ in range(20)))
    assert len({request.header("Authorization") for request in requests}) == 1
    assert console.calls("POST", "/admin/seats") == 1
    assert len(await effects(console, "seat created")) == 1
    assert await effects(console, "seat key rotated") == []
    page = await upstream(console, requests[0])
    assert page.status_code == 200
    assert "You are <strong>alice</strong>" in page.text


async def test_a_key_one_replica_obtained_is_used_by_another_without_a_second_seat(
    console: Console, database_url: str
) -> None:
    async with replicas(database_url) as shared:
        first, second = shared.seats(console), shared.seats(console)
        from_first = await prepared(first, console)
        from_second = await prepared(second, console)
        assert from_second.header("Authorization") == from_first.header("Authorization")
        assert (await upstream(console, from_second)).status_code == 200
    assert len(await effects(console, "seat created")) == 1
    assert await effects(console, "seat key rotated") == []


async def test_two_replicas_first_requests_at_once_end_with_one_seat_whose_key_works_for_both(
    console: Console, database_url: str
) -> None:
    async with replicas(database_url) as shared:
        first, second = shared.seats(console), shared.seats(console)
        requests = await asyncio.gather(prepared(first, console), prepared(second, console))
        for connector, request in zip((first, second), requests, strict=True):
            # At most one recovery each: the replica that lost the race rotated, the other re-reads.
            if (await upstream(console, request)).status_code == 401:
                assert await connector.on_upstream_unauthorized(ALICE, request) is True
            assert (await upstream(console, request)).status_code == 200
    assert len(await effects(console, "seat created")) == 1
    # The loser of the race rotates when the winner's key is not stored yet; if the winner's store lands after
    # the loser's, the winner's own recovery rotates once more. Never more than that.
    assert len(await effects(console, "seat key rotated")) <= 2


async def test_after_a_401_a_replica_picks_up_the_key_another_rotated_instead_of_rotating_again(
    console: Console, database_url: str
) -> None:
    async with replicas(database_url) as shared:
        first, second = shared.seats(console), shared.seats(console)
        stale_first, stale_second = await prepared(first, console), await prepared(second, console)
        assert await later(first).on_upstream_unauthorized(ALICE, stale_first) is True
        assert (await upstream(console, stale_second)).status_code == 401
        assert await second.on_upstream_unauthorized(ALICE, stale_second) is True
        assert stale_second.header("Authorization") == stale_first.header("Authorization")
        assert (await upstream(console, stale_second)).status_code == 200
    assert len(await effects(console, "seat key rotated")) == 1


async def test_a_burst_of_401s_rotates_the_key_once(console: Console, shared: Replicas) -> None:
    connector = shared.seats(console)
    stale = [await prepared(connector, console) for _ in range(10)]
    later(connector)
    resend = await asyncio.gather(*(connector.on_upstream_unauthorized(ALICE, request) for request in stale))
    assert all(resend)
    assert len({request.header("Authorization") for request in stale}) == 1
    assert len(await effects(console, "seat key rotated")) == 1
    assert (await upstream(console, stale[0])).status_code == 200


async def test_provision_keeps_a_working_key_and_its_replay_creates_nothing_more(
    console: Console, shared: Replicas
) -> None:
    connector, step = shared.seats(console), ctx("provision")
    first = await connector.provision(ALICE, step)
    await connector.forget(ALICE.agent_id)
    replay = await connector.provision(ALICE, step)
    assert (first.outcome, replay.outcome) == (Outcome.DONE, Outcome.DONE)
    assert first.vendor_reference == replay.vendor_reference == console.seats.seat("alice").id  # type: ignore[union-attr]
    assert await effects(console, "seat created") == [step.idempotency_key]
    assert await effects(console, "seat key rotated") == []
    assert (await upstream(console, await prepared(shared.seats(console), console))).status_code == 200


async def test_provisioning_a_seat_made_elsewhere_rotates_its_key_so_the_gateway_holds_a_working_one(
    console: Console, shared: Replicas
) -> None:
    made = await admin(console, "POST", "seats", json={"userName": "alice"})
    outside_key = made.json()["apiKey"]
    result = await shared.seats(console).provision(ALICE, ctx("provision"))
    assert result.outcome is Outcome.DONE
    assert "key rotated" in result.detail
    fresh = shared.seats(console)
    assert (await upstream(console, await prepared(fresh, console))).status_code == 200
    old = UpstreamRequest("GET", f"{console.url}/", [("Authorization", f"Bearer {outside_key}")])
    assert (await upstream(console, old)).status_code == 401


async def test_a_seat_disabled_at_the_vendor_is_neither_enabled_nor_given_a_key(
    console: Console, shared: Replicas
) -> None:
    await admin(console, "POST", "seats", json={"userName": "alice"})
    await admin(console, "PATCH", "seats/alice", json={"active": False})
    connector = shared.seats(console)
    result = await connector.provision(ALICE, ctx("provision"))
    assert result.outcome is Outcome.FAILED
    assert "disabled" in result.detail
    with pytest.raises(AccessDenied, match="disabled"):
        await prepared(connector, console)
    assert console.seats.seat("alice").active is False  # type: ignore[union-attr]
    assert [e["effect"] for e in await console.effects("alice")] == ["seat created", "seat disabled"]


async def test_a_disabled_seats_key_is_not_rotated_after_a_refusal(console: Console, shared: Replicas) -> None:
    connector = shared.seats(console)
    request = await prepared(connector, console)
    assert (await connector.revoke(ALICE, ctx("revoke"))).outcome is Outcome.DONE
    assert (await upstream(console, request)).status_code == 403
    assert await connector.on_upstream_unauthorized(ALICE, request) is False
    assert await effects(console, "seat key rotated") == []


async def test_revoke_disables_the_seat_and_verification_confirms_the_old_key_is_refused(
    console: Console, database_url: str
) -> None:
    async with replicas(database_url) as shared:
        request = await prepared(shared.seats(console), console)
        # Another replica revokes and verifies what the first one obtained.
        other = shared.seats(console)
        revoked = await other.revoke(ALICE, ctx("revoke"))
        changes = [call for call in console.recorder.calls if call[0] != "GET"]
        verified = await other.verify_no_access(ALICE, ctx("verify"))
    assert [call for call in console.recorder.calls if call[0] != "GET"] == changes  # verifying changed nothing
    seat = console.seats.seat("alice")
    assert seat is not None
    assert (revoked.outcome, revoked.vendor_reference) == (Outcome.DONE, seat.id)
    assert verified.outcome is Outcome.DONE
    assert "disabled" in verified.detail
    assert "last key is refused" in verified.detail
    assert (await upstream(console, request)).status_code == 403


async def test_a_seat_enabled_again_behind_the_gateways_back_fails_verification_as_access_remaining(
    console: Console, shared: Replicas
) -> None:
    connector = shared.seats(console)
    await prepared(connector, console)
    assert (await connector.revoke(ALICE, ctx("revoke"))).outcome is Outcome.DONE
    await admin(console, "PATCH", "seats/alice", json={"active": True})
    verified = await connector.verify_no_access(ALICE, ctx("verify"))
    assert verified.outcome is Outcome.FAILED
    assert verified.detail.startswith("access remains:")


async def test_verification_without_a_key_check_url_still_reads_the_seat(console: Console, shared: Replicas) -> None:
    connector = shared.seats(console, key_check_url=None)
    await prepared(connector, console)
    await connector.revoke(ALICE, ctx("revoke"))
    verified = await connector.verify_no_access(ALICE, ctx("verify"))
    assert verified.outcome is Outcome.DONE
    assert "no key_check_url" in verified.detail


async def test_a_console_that_is_down_makes_each_step_retry_and_they_finish_when_it_is_back(
    console: Console, shared: Replicas
) -> None:
    connector = shared.seats(console)
    await prepared(connector, console)
    await console.served.stop()
    steps = {"revoke": ctx("revoke"), "verify": ctx("verify"), "provision": ctx("provision")}
    down = [
        await connector.revoke(ALICE, steps["revoke"]),
        await connector.verify_no_access(ALICE, steps["verify"]),
        await connector.provision(BOB, steps["provision"]),
    ]
    assert [result.outcome for result in down] == [Outcome.RETRY] * 3
    assert all("connection failed" in result.detail for result in down)
    with pytest.raises(UpstreamError, match="could not be set up") as refused:
        await prepared(connector, console, BOB)
    assert "could not give bob a seat: creating the seat" in str(refused.value.detail)
    await console.restart()
    assert (await connector.revoke(ALICE, steps["revoke"])).outcome is Outcome.DONE
    assert (await connector.verify_no_access(ALICE, steps["verify"])).outcome is Outcome.DONE
    assert (await connector.provision(BOB, steps["provision"])).outcome is Outcome.DONE


async def test_a_503_from_the_admin_api_is_a_retry_and_the_same_step_then_has_one_effect(
    console: Console, shared: Replicas
) -> None:
    connector = shared.seats(console)
    await prepared(connector, console)
    step = ctx("revoke")
    console.faults.set("unavailable", "/admin/")
    unavailable = await connector.revoke(ALICE, step)
    assert unavailable.outcome is Outcome.RETRY
    assert "answered HTTP 503 (temporarily_unavailable)" in unavailable.detail
    console.faults.set("ok")
    assert (await connector.revoke(ALICE, step)).outcome is Outcome.DONE
    assert await effects(console, "seat disabled") == [step.idempotency_key]


async def test_a_hanging_admin_api_is_a_retry_after_the_channels_time_limit(console: Console, shared: Replicas) -> None:
    connector = shared.seats(console, api_timeout_seconds=0.3)
    console.faults.set("hang", "/admin/")
    result = await connector.revoke(ALICE, ctx("revoke"))
    assert result.outcome is Outcome.RETRY
    assert "no answer within 0.3 s" in result.detail


async def test_a_wrong_admin_key_fails_every_step_with_what_to_do_and_no_secret(
    console: Console, shared: Replicas
) -> None:
    wrong = "wrong-admin-key-0123456789"
    connector = shared.seats(console, admin_key=wrong)
    results = [
        await connector.provision(ALICE, ctx("provision")),
        await connector.revoke(ALICE, ctx("revoke")),
        await connector.verify_no_access(ALICE, ctx("verify")),
    ]
    for result in results:
        assert result.outcome is Outcome.FAILED
        assert "refused the admin key (HTTP 401" in result.detail
        assert "channelgate channels set-credential phone" in result.detail
        assert wrong not in repr(result)
        assert ADMIN_KEY not in repr(result)


async def test_a_replayed_idempotency_key_disables_and_deletes_once(console: Console, shared: Replicas) -> None:
    connector = shared.seats(console, remove="delete")
    await prepared(connector, console)
    revoke, remove = ctx("revoke"), ctx("remove")
    assert [(await connector.revoke(ALICE, revoke)).outcome for _ in range(2)] == [Outcome.DONE] * 2
    assert [(await connector.remove(ALICE, remove)).outcome for _ in range(2)] == [Outcome.DONE] * 2
    assert await effects(console, "seat disabled") == [revoke.idempotency_key]
    assert await effects(console, "seat deleted") == [remove.idempotency_key]


async def test_remove_deletes_the_seat_and_its_stored_key_only_when_configured_to(
    console: Console, shared: Replicas
) -> None:
    keeping, deleting = shared.seats(console), shared.seats(console, remove="delete")
    await prepared(keeping, console)
    await keeping.revoke(ALICE, ctx("revoke"))
    kept = await keeping.remove(ALICE, ctx("remove"))
    assert kept.outcome is Outcome.NOT_APPLICABLE
    assert await shared.secrets("phone").get(ALICE.agent_id, SECRET_NAME) is not None
    removed = await deleting.remove(ALICE, ctx("remove"))
    assert removed.outcome is Outcome.DONE
    assert removed.vendor_reference is not None
    assert console.seats.seat("alice") is None
    assert await shared.secrets("phone").get(ALICE.agent_id, SECRET_NAME) is None
    verified = await deleting.verify_no_access(ALICE, ctx("verify"))
    assert (verified.outcome, "no seat" in verified.detail) == (Outcome.DONE, True)


async def test_revoking_an_agent_who_never_had_a_seat_is_done_with_nothing_to_disable(
    console: Console, shared: Replicas
) -> None:
    result = await shared.seats(console).revoke(BOB, ctx("revoke"))
    assert result.outcome is Outcome.DONE
    assert "no seat" in result.detail


async def test_capabilities_are_seats_verify_provision_inject_and_tickets_only_with_a_ticket_api(
    console: Console, shared: Replicas
) -> None:
    plain = {Capability.PROVISION, Capability.INJECT, Capability.SEATS, Capability.VERIFY}
    assert shared.seats(console).capabilities == plain
    with_tickets = shared.seats(console, tickets=console.tickets_settings())
    assert with_tickets.capabilities == plain | {Capability.TICKETS}
    assert (await shared.seats(console).hand_over(ALICE, None, ctx("hand_over"))).outcome is Outcome.NOT_APPLICABLE


async def test_no_key_ever_reaches_a_receipt_log_line_error_or_repr(
    console: Console, shared: Replicas, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    connector = shared.seats(console, remove="delete")
    texts: list[str] = []
    keys: set[str] = {ADMIN_KEY}

    async def remember_key() -> None:
        stored = await shared.secrets("phone").get(ALICE.agent_id, SECRET_NAME)
        if stored is not None:
            keys.add(stored.value.reveal())

    results: list[StepResult] = [await connector.provision(ALICE, ctx("provision"))]
    await remember_key()
    request = await prepared(connector, console)
    await later(connector).on_upstream_unauthorized(ALICE, request)
    await remember_key()
    console.faults.set("unavailable", "/admin/")
    results.append(await connector.revoke(ALICE, ctx("revoke")))
    console.faults.set("ok")
    results += [
        await connector.revoke(ALICE, ctx("revoke")),
        await connector.verify_no_access(ALICE, ctx("verify")),
        await connector.remove(ALICE, ctx("remove")),
        await shared.seats(console, admin_key="not-the-admin-key").provision(BOB, ctx("provision")),
    ]
    await admin(console, "POST", "seats", json={"userName": "bob"})
    await admin(console, "PATCH", "seats/bob", json={"active": False})
    for failing in (shared.seats(console), shared.seats(console, admin_key="not-the-admin-key")):
        try:
            await prepared(failing, console, BOB)
        except ChannelgateError as exc:
            texts += [str(exc), repr(exc), exc.message, str(exc.detail)]
    texts += [repr(result) for result in results]
    texts += [caplog.text, repr(connector), repr(connector.__dict__), repr(shared.built)]
    assert len(keys) == 3  # the admin key and both of alice's seat keys
    for key in keys:
        assert all(key not in text for text in texts)


ALICE_RENAMED = AgentRef(agent_id="agent-alice", user_name="alice.kim", email="alice@example.com")


async def test_after_a_scim_rename_revoke_disables_the_seat_made_under_the_old_name(
    console: Console, shared: Replicas
) -> None:
    connector = shared.seats(console)
    await prepared(connector, console)
    revoked = await connector.revoke(ALICE_RENAMED, ctx("revoke"))
    assert revoked.outcome is Outcome.DONE, revoked.detail
    assert console.seats.seat("alice").active is False  # type: ignore[union-attr]
    verified = await connector.verify_no_access(ALICE_RENAMED, ctx("verify"))
    assert verified.outcome is Outcome.DONE, verified.detail
    assert "their last key is refused" in verified.detail
    assert console.seats.seat("alice.kim") is None


async def test_after_a_rename_a_seat_that_now_has_the_old_name_is_never_disabled_or_deleted(
    console: Console, shared: Replicas
) -> None:
    await prepared(shared.seats(console), console)
    await admin(console, "DELETE", "seats/alice")
    await admin(console, "POST", "seats", json={"userName": "alice"})  # a new hire's seat took the name
    for step, connector in (("revoke", shared.seats(console)), ("remove", shared.seats(console, remove="delete"))):
        result = await getattr(connector, step)(ALICE_RENAMED, ctx(step))
        assert result.outcome is Outcome.FAILED
        assert "is not the one made for alice.kim" in result.detail
    assert console.seats.seat("alice").active is True  # type: ignore[union-attr]


async def test_a_recorded_seat_not_found_at_the_vendor_is_gone_only_when_its_last_key_is_refused(
    console: Console, shared: Replicas
) -> None:
    await prepared(shared.seats(console), console)
    await admin(console, "DELETE", "seats/alice")
    unproven = await shared.seats(console, key_check_url=None).revoke(ALICE, ctx("revoke"))
    assert unproven.outcome is Outcome.FAILED
    assert "check at the vendor whether it was deleted or renamed" in unproven.detail
    proven = await shared.seats(console).revoke(ALICE, ctx("revoke"))
    assert proven.outcome is Outcome.DONE, proven.detail
    assert "its last key is refused" in proven.detail


async def test_a_page_that_always_answers_401_does_not_rotate_the_seat_key_per_request(
    console: Console, shared: Replicas
) -> None:
    connector = shared.seats(console)
    for _ in range(5):
        request = await prepared(connector, console)
        assert await connector.on_upstream_unauthorized(ALICE, request) is False  # the 401 is passed on
    assert await effects(console, "seat key rotated") == []
    request = await prepared(later(connector), console)
    assert await connector.on_upstream_unauthorized(ALICE, request) is True
    assert len(await effects(console, "seat key rotated")) == 1


async def test_a_seat_key_under_a_removed_vault_key_is_replaced_by_rotating_the_recorded_seat(
    console: Console, shared: Replicas
) -> None:
    """The row's record of the seat (its id and name) is readable without the key: the seat gets a new key, the
    agent does not get a second seat, and the seat can still be revoked."""
    await prepared(shared.seats(console), console)
    seat_id = console.seats.seat("alice").id  # type: ignore[union-attr]
    shared.vault = Vault({"k2": os.urandom(32)}, "k2")  # k1 removed, a restart (empty memory)
    await prepared(shared.seats(console), console, ALICE_RENAMED)
    assert console.seats.seat("alice.kim") is None
    assert console.seats.seat("alice").id == seat_id  # type: ignore[union-attr]
    assert len(await effects(console, "seat key rotated")) == 1
    stored = await shared.secrets("phone").get(ALICE.agent_id, SECRET_NAME)
    assert stored is not None and stored.meta["seat_id"] == seat_id
    assert (await shared.seats(console).revoke(ALICE_RENAMED, ctx("revoke"))).outcome is Outcome.DONE
    assert console.seats.seat("alice").active is False  # type: ignore[union-attr]


async def test_a_seat_key_shown_in_an_answer_that_arrives_in_two_parts_is_kept(shared: Replicas) -> None:
    async with demo_console("phone", auth="seats", wrap=SplitAnswers) as split:
        request = await prepared(shared.seats(split), split)
        assert (await upstream(split, request)).status_code == 200
        assert await shared.secrets("phone").get(ALICE.agent_id, SECRET_NAME) is not None
