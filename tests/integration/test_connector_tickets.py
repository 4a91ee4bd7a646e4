"""Ticket hand-over (``connectors/tickets.py``) against the real demo consoles' ticket API, over HTTP.

A departing agent's open tickets go to the successor, or to the channel's fallback queue without one; each
ticket moves exactly once even when the hand-over is retried after a partial failure or runs twice at once;
receipts carry ticket ids and counts, never subjects. The ticket API is called with the console's own
credential in the console's scheme, by the static kind as by the seats kind.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from connectors.base import AgentRef, Capability, Outcome, StepContext
from connectors.vendor_http import MAX_ANSWER_BYTES, VendorAnswer, call
from deploy.demo.tickets_api import Ticket
from tests.components.asgi_server import serve_asgi
from tests.components.seats_console import FALLBACK_QUEUE, Console, Replicas, demo_console, replicas, seed
from tests.components.split_answers import SplitAnswers

ALICE = AgentRef(agent_id="agent-alice", user_name="alice", manager_user_name="carol")
CAROL = AgentRef(agent_id="agent-carol", user_name="carol")
DAVE = AgentRef(agent_id="agent-dave", user_name="dave")
TICKETS = seed(
    ("T-1", "alice", "open"),
    ("T-2", "alice", "open"),
    ("T-3", "bob", "open"),
    ("T-4", "alice", "closed"),
    ("T-5", "alice", "open"),
)
ALICES_OPEN = ["T-1", "T-2", "T-5"]


def ctx() -> StepContext:
    return StepContext(idempotency_key=f"run-{uuid.uuid4().hex}:chat:hand_over")


@pytest.fixture
async def chat() -> AsyncIterator[Console]:
    async with demo_console("chat", tickets=TICKETS) as console:
        yield console


@pytest.fixture
async def shared(tmp_path: Path) -> AsyncIterator[Replicas]:
    async with replicas(f"sqlite+aiosqlite:///{tmp_path}/channelgate.db") as shared:
        yield shared


async def where(console: Console) -> dict[str, tuple[str | None, str | None]]:
    """Each ticket's (assignee, queue)."""
    return {t["id"]: (t["assignee"], t["queue"]) for t in await console.tickets()}


async def reassigned(console: Console) -> list[str]:
    """The ticket id of every reassignment the console applied, in order."""
    return [e["detail"].split(" ")[0] for e in await console.effects() if e["effect"] == "ticket reassigned"]


async def test_open_tickets_go_to_the_successor_and_the_receipt_names_ids_not_subjects(
    chat: Console, shared: Replicas
) -> None:
    connector = shared.static(chat)
    result = await connector.hand_over(ALICE, CAROL, ctx())
    assert (result.outcome, result.step, result.channel) == (Outcome.DONE, "hand_over", "chat")
    assert result.detail == "3 open tickets handed to carol"
    assert result.vendor_reference == ", ".join(ALICES_OPEN)
    assert "Private matter" not in repr(result)
    placed = await where(chat)
    assert {ticket: placed[ticket] for ticket in ALICES_OPEN} == dict.fromkeys(ALICES_OPEN, ("carol", None))
    assert placed["T-3"] == ("bob", "support")
    assert placed["T-4"] == ("alice", "support")  # closed: not alice's open work
    assert sorted(await reassigned(chat)) == ALICES_OPEN
    assert {e["subject"] for e in await chat.effects()} == {"alice"}


async def test_without_a_successor_open_tickets_go_to_the_fallback_queue(chat: Console, shared: Replicas) -> None:
    result = await shared.static(chat).hand_over(ALICE, None, ctx())
    assert result.outcome is Outcome.DONE
    assert result.detail == f"3 open tickets moved to queue {FALLBACK_QUEUE!r} (no successor)"
    placed = await where(chat)
    assert [placed[ticket] for ticket in ALICES_OPEN] == [(None, FALLBACK_QUEUE)] * 3


async def test_an_agent_without_open_tickets_is_done_with_nothing_moved(chat: Console, shared: Replicas) -> None:
    result = await shared.static(chat).hand_over(DAVE, CAROL, ctx())
    assert (result.outcome, result.vendor_reference) == (Outcome.DONE, None)
    assert result.detail == "dave has no open tickets"
    assert await reassigned(chat) == []


async def test_a_hand_over_resumed_after_a_partial_failure_moves_each_ticket_exactly_once(
    chat: Console, shared: Replicas
) -> None:
    connector, step = shared.static(chat), ctx()
    chat.faults.set("unavailable", "/api/tickets/T-2/")
    partial = await connector.hand_over(ALICE, CAROL, step)
    assert partial.outcome is Outcome.RETRY
    assert partial.detail.startswith("1 of 3 open tickets handed to carol (T-1); then the ticket API failed for now")
    assert "assigning ticket T-2: HTTP 503" in partial.detail
    assert partial.vendor_reference == "T-1"
    chat.faults.set("ok")
    resumed = await connector.hand_over(ALICE, CAROL, step)
    assert (resumed.outcome, resumed.vendor_reference) == (Outcome.DONE, "T-2, T-5")
    assert await reassigned(chat) == ALICES_OPEN
    again = await connector.hand_over(ALICE, CAROL, step)
    assert (again.outcome, again.detail) == (Outcome.DONE, "alice has no open tickets")
    assert await reassigned(chat) == ALICES_OPEN


async def test_two_copies_of_one_hand_over_at_once_move_each_ticket_once(chat: Console, shared: Replicas) -> None:
    step = ctx()
    both = await asyncio.gather(
        shared.static(chat).hand_over(ALICE, CAROL, step), shared.static(chat).hand_over(ALICE, CAROL, step)
    )
    assert [result.outcome for result in both] == [Outcome.DONE, Outcome.DONE]
    assert sorted(await reassigned(chat)) == ALICES_OPEN
    keys = [e["idempotency_key"] for e in await chat.effects()]
    assert len(set(keys)) == 3
    assert all(key.startswith(step.idempotency_key + ":ticket:") for key in keys)


@pytest.mark.parametrize(("channel", "inject"), [("chat", "bearer"), ("phone", "header"), ("mail", "basic")])
async def test_the_ticket_api_takes_the_console_credential_in_the_consoles_own_scheme(
    shared: Replicas, channel: str, inject: str
) -> None:
    async with demo_console(channel, tickets=TICKETS) as console:
        header = {"header_name": "X-Api-Key"} if inject == "header" else {}
        connector = shared.static(console, inject, **header)
        assert Capability.TICKETS in connector.capabilities
        result = await connector.hand_over(ALICE, CAROL, ctx())
        assert result.outcome is Outcome.DONE
        assert sorted(await reassigned(console)) == ALICES_OPEN


async def test_more_open_tickets_than_a_page_holds_are_all_handed_over(shared: Replicas) -> None:
    many = seed(*((f"M-{number:04d}", "alice", "open") for number in range(450)))
    async with demo_console("chat", tickets=many) as console:
        result = await shared.static(console).hand_over(ALICE, CAROL, ctx())
        assert result.outcome is Outcome.DONE
        assert result.detail == "450 open tickets handed to carol"
        assert result.vendor_reference is not None
        assert result.vendor_reference.endswith("M-0019 and 430 more")
        assert len(await reassigned(console)) == 450


async def test_a_wrong_ticket_credential_fails_with_what_to_do_and_no_secret(chat: Console, shared: Replicas) -> None:
    wrong = "not-the-console-credential-9c1"
    result = await shared.static(chat, credential=wrong).hand_over(ALICE, CAROL, ctx())
    assert result.outcome is Outcome.FAILED
    assert "refused the channel credential (HTTP 401" in result.detail
    assert "channelgate channels set-credential chat" in result.detail
    assert wrong not in repr(result)
    assert chat.credential not in repr(result)
    assert await reassigned(chat) == []


async def test_a_ticket_api_that_is_down_or_answers_503_is_a_retry(chat: Console, shared: Replicas) -> None:
    connector = shared.static(chat)
    chat.faults.set("unavailable", "/api/")
    unavailable = await connector.hand_over(ALICE, CAROL, ctx())
    assert unavailable.outcome is Outcome.RETRY
    assert unavailable.detail == "listing open tickets: HTTP 503 (temporarily_unavailable)"
    chat.faults.set("ok")
    await chat.served.stop()
    down = await connector.hand_over(ALICE, CAROL, ctx())
    assert down.outcome is Outcome.RETRY
    assert down.detail.startswith("listing open tickets: connection failed")


async def test_a_successor_who_is_the_departing_agent_is_refused(chat: Console, shared: Replicas) -> None:
    result = await shared.static(chat).hand_over(ALICE, ALICE, ctx())
    assert result.outcome is Outcome.FAILED
    assert "name someone else" in result.detail
    assert await reassigned(chat) == []


async def test_the_seats_kind_hands_over_through_the_same_ticket_api_with_its_admin_key(shared: Replicas) -> None:
    async with demo_console("phone", auth="seats", tickets=TICKETS) as console:
        connector = shared.seats(console, tickets=console.tickets_settings())
        assert Capability.TICKETS in connector.capabilities
        result = await connector.hand_over(ALICE, None, ctx())
        assert result.outcome is Outcome.DONE
        assert result.detail.startswith("3 open tickets moved to queue")
        assert sorted(await reassigned(console)) == ALICES_OPEN


async def test_ticket_pages_that_arrive_in_two_parts_are_read_whole_and_handed_over(shared: Replicas) -> None:
    async with demo_console("chat", tickets=TICKETS, wrap=SplitAnswers) as chat:
        result = await shared.static(chat).hand_over(ALICE, CAROL, ctx())
        assert (result.outcome, result.detail) == (Outcome.DONE, "3 open tickets handed to carol")
        assert sorted(await reassigned(chat)) == ALICES_OPEN


async def test_a_ticket_page_of_several_hundred_kilobytes_under_the_limit_is_read_whole(shared: Replicas) -> None:
    """No pause anywhere: on loopback a page this size already arrives in more than one read."""
    tickets = [Ticket(f"T-{i}", "s" * 3000, "alice", "support", "open") for i in range(150)]
    async with demo_console("chat", tickets=tickets) as chat:
        result = await shared.static(chat).hand_over(ALICE, CAROL, ctx())
        assert (result.outcome, result.detail) == (Outcome.DONE, "150 open tickets handed to carol")


async def test_an_answer_larger_than_the_size_limit_is_read_as_no_body() -> None:
    async def huge(request: Request) -> Response:
        return Response(b"[" + b"0," * (MAX_ANSWER_BYTES // 2) + b"0]", media_type="application/json")

    async with serve_asgi(Starlette(routes=[Route("/api/tickets", huge)])) as server, aiohttp.ClientSession() as http:
        answer = await call(http, "GET", f"{server.url}/api/tickets", authorization=("Authorization", "Bearer k"))
    assert isinstance(answer, VendorAnswer) and (answer.status, answer.body) == (200, None)
