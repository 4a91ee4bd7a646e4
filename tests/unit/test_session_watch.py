"""The sweep that ends live connections with their session (gateway/sessions/watch.py): the verdict table, and the
sweep against the embedded store."""

from __future__ import annotations

import logging

import pytest

from gateway.errors import SessionStoreUnavailable
from gateway.proxy.streams import LiveConnections, SessionBinding
from gateway.sessions.base import Session, SessionData, SessionState, session_key
from gateway.sessions.memory import MemorySessionStore
from gateway.sessions.watch import Verdict, sweep, verdict
from tests.components.recording_live import RecordingLive

IDLE, ABSOLUTE, T0 = 600.0, 3600.0, 1_700_000_000.0
ALICE = SessionData(agent_id="agent-alice", user_name="alice", issuer="https://idp.example", subject="alice-1")


def _binding(*, created: float = T0, confirmed: float = T0, used: bool = False) -> SessionBinding:
    return SessionBinding("key", "id", "agent", created, confirmed, used, 1)


@pytest.mark.parametrize(
    ("created", "confirmed", "used", "now", "expected"),
    [
        (T0, T0, False, T0 + 1, Verdict.KEEP),
        (T0, T0, True, T0 + IDLE / 2 - 1, Verdict.KEEP),
        (T0, T0, True, T0 + IDLE / 2, Verdict.REFRESH),
        (T0, T0, False, T0 + IDLE / 2, Verdict.KEEP),
        (T0, T0, False, T0 + IDLE - 1, Verdict.KEEP),
        (T0, T0, False, T0 + IDLE, Verdict.CHECK),
        (T0, T0, True, T0 + IDLE, Verdict.REFRESH),
        (T0, T0 + ABSOLUTE - 10, True, T0 + ABSOLUTE, Verdict.EXPIRED),
        (T0, T0 + ABSOLUTE - 10, False, T0 + ABSOLUTE - 1, Verdict.KEEP),
    ],
    ids=[
        "fresh",
        "used-not-yet-half-idle",
        "used-half-idle-refreshes",
        "unused-half-idle-waits",
        "unused-just-inside-idle",
        "unused-whole-idle-checks",
        "used-whole-idle-refreshes",
        "absolute-wins-over-use",
        "just-inside-absolute",
    ],
)
def test_the_verdict_of_a_session_with_live_connections(
    created: float, confirmed: float, used: bool, now: float, expected: Verdict
) -> None:
    assert verdict(_binding(created=created, confirmed=confirmed, used=used), now, IDLE, ABSOLUTE) is expected


async def test_a_sweep_refreshes_a_used_session_and_closes_an_idle_one() -> None:
    store = MemorySessionStore(IDLE, ABSOLUTE, "replica-a")
    used, idle = await store.create(ALICE, T0), await store.create(ALICE, T0)
    live = RecordingLive()
    used_binding, idle_binding = live.bind(used), live.bind(idle)
    assert used_binding is not None and idle_binding is not None
    used_binding.use()

    assert await sweep(live, store, T0 + IDLE * 0.6, IDLE, ABSOLUTE) == 0
    assert (used_binding.confirmed_at, used_binding.used) == (T0 + IDLE * 0.6, False)
    assert await sweep(live, store, T0 + IDLE * 1.1, IDLE, ABSOLUTE) == 1

    assert live.closed == [(session_key(idle.id), "session ended")]
    assert (await store.lookup(used.id, T0 + IDLE * 1.1)).state is SessionState.VALID


async def test_a_sweep_closes_a_session_past_its_absolute_lifetime_without_asking_the_store() -> None:
    store = MemorySessionStore(IDLE, ABSOLUTE, "replica-a")
    session = await store.create(ALICE, T0)
    live = RecordingLive()
    assert live.bind(session) is not None
    await store.close()  # not asked

    assert await sweep(live, store, T0 + ABSOLUTE, IDLE, ABSOLUTE) == 1
    assert live.closed == [(session_key(session.id), "session expired")]


async def test_a_session_that_just_ended_here_binds_no_new_connection() -> None:
    store = MemorySessionStore(IDLE, ABSOLUTE, "replica-a")
    session = await store.create(ALICE, T0)
    live = LiveConnections()
    await live.close_session(session_key(session.id))
    assert live.bind(session) is None
    aborted: list[bool] = []
    live.track_stream(session, lambda: aborted.append(True))
    assert aborted == [True] and live.sessions() == []


async def test_a_sweep_that_cannot_reach_the_store_keeps_the_connections_and_warns_once_not_per_session(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = MemorySessionStore(IDLE, ABSOLUTE, "replica-a")
    sessions = [await store.create(ALICE, T0) for _ in range(50)]
    live = RecordingLive()
    for session in sessions:
        assert live.bind(session) is not None

    async def down(agent_id: str, now: float) -> list[Session]:
        raise SessionStoreUnavailable("the session store does not answer")

    store.sessions_of = down  # type: ignore[method-assign]
    with caplog.at_level(logging.WARNING, logger="gateway.sessions.watch"):
        assert await sweep(live, store, T0 + IDLE, IDLE, ABSOLUTE) == 0

    assert live.closed == []
    assert [r.getMessage() for r in caplog.records] == [
        "could not check the sessions of open connections (50): the session store does not answer"
    ]
