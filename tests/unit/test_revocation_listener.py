"""The replica's revocation listener: each broadcast is closed and acknowledged on its own."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, Callable
from typing import Any, cast

import pytest

from gateway.app import _revocation_listener
from gateway.services import Services
from gateway.sessions.base import RESYNC_AGENT_ID, Revocation


class FakeStore:
    """Yields ``revocations``, then raises ``fail_with`` (if set) or stays open; a feed opened to resync yields the
    resync marker and stays open."""

    def __init__(self, revocations: list[Revocation], fail_with: Exception | None = None) -> None:
        self._revocations = revocations
        self._fail_with = fail_with
        self.acknowledged: list[str] = []
        self.opened: list[bool] = []

    async def revocations(self, *, resync: bool = False) -> AsyncGenerator[Revocation, None]:
        self.opened.append(resync)
        if resync:
            yield Revocation(RESYNC_AGENT_ID, "resync", "replica-a")
        else:
            for revocation in self._revocations:
                yield revocation
            if self._fail_with is not None:
                raise self._fail_with
        await asyncio.Event().wait()  # the channel stays open

    async def acknowledge(self, revocation: Revocation) -> None:
        self.acknowledged.append(revocation.agent_id)


class FakeLive:
    """``close_agent`` of ``slow`` waits until released: a client that takes its time to answer the close."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.closed: list[str] = []
        self.sessions_closed: list[str] = []

    async def close_agent(self, agent_id: str) -> int:
        if agent_id == "slow":
            await self.release.wait()
        if agent_id == "broken":
            raise RuntimeError("a bug while closing")
        self.closed.append(agent_id)
        return 1

    def agents(self) -> list[str]:
        return []

    def sessions(self) -> list[object]:
        return []

    async def close_session(self, key: str) -> int:
        self.sessions_closed.append(key)
        return 1


def _services(store: FakeStore, live: FakeLive) -> Services:
    fields = {"sessions": store, "live": live, "connectors": {}, "collector": None, "clock": lambda: 0.0}
    return cast(Services, cast(Any, type("S", (), fields)))


async def _until(condition: Callable[[], bool]) -> None:
    for _ in range(200):
        if condition():
            return
        await asyncio.sleep(0.01)


async def test_a_slow_close_does_not_hold_back_the_acknowledgement_of_later_revocations() -> None:
    store = FakeStore([Revocation("slow", "r1", "replica-a"), Revocation("fast", "r2", "replica-a")])
    live = FakeLive()
    services = _services(store, live)
    listener = asyncio.create_task(_revocation_listener(services))
    try:
        for _ in range(100):
            if store.acknowledged:
                break
            await asyncio.sleep(0.01)

        assert store.acknowledged == ["fast"]

        live.release.set()
        for _ in range(100):
            if len(store.acknowledged) == 2:
                break
            await asyncio.sleep(0.01)
        assert store.acknowledged == ["fast", "slow"]
    finally:
        listener.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await listener


async def test_refresh_broadcasts_close_nothing_and_are_not_acknowledged() -> None:
    store = FakeStore([Revocation("agent-1", "r1", "replica-a", refresh_only=True), Revocation("agent-2", "r2", "b")])
    live = FakeLive()
    services = _services(store, live)
    listener = asyncio.create_task(_revocation_listener(services))
    try:
        for _ in range(100):
            if store.acknowledged:
                break
            await asyncio.sleep(0.01)
        assert store.acknowledged == ["agent-2"]
        assert live.closed == ["agent-2"]
    finally:
        listener.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await listener


async def test_a_sessions_end_closes_that_sessions_connections_only_and_is_not_acknowledged() -> None:
    ended = Revocation("agent-1", "r1", "replica-b", refresh_only=True, ended_session="key-1")
    store = FakeStore([ended, Revocation("agent-2", "r2", "replica-b")])
    live = FakeLive()
    listener = asyncio.create_task(_revocation_listener(_services(store, live)))
    try:
        for _ in range(100):
            if store.acknowledged:
                break
            await asyncio.sleep(0.01)
        assert (live.sessions_closed, live.closed, store.acknowledged) == (["key-1"], ["agent-2"], ["agent-2"])
    finally:
        listener.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await listener


async def test_a_revocation_that_fails_unexpectedly_is_logged_unacknowledged_and_the_listener_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = FakeStore([Revocation("broken", "r1", "replica-b"), Revocation("fine", "r2", "replica-b")])
    live = FakeLive()
    listener = asyncio.create_task(_revocation_listener(_services(store, live)))
    try:
        with caplog.at_level(logging.ERROR, logger="channelgate"):
            await _until(lambda: bool(store.acknowledged))
        assert (store.acknowledged, live.closed, listener.done()) == (["fine"], ["fine"], False)
        assert any("could not apply revocation r1" in r.getMessage() and r.exc_info for r in caplog.records)
    finally:
        listener.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await listener


async def test_a_listener_whose_feed_fails_is_started_again_with_a_resync(monkeypatch: pytest.MonkeyPatch) -> None:
    """Not left dead while the heartbeat keeps the replica counted live: started again, it first re-checks every
    open connection (the resync marker), since broadcasts were missed meanwhile."""
    monkeypatch.setattr("gateway.app.LISTENER_RESTART_SECONDS", (0.01, 0.01))
    store = FakeStore([Revocation("agent-1", "r1", "replica-b")], fail_with=RuntimeError("a bug in the feed"))
    live = FakeLive()
    listener = asyncio.create_task(_revocation_listener(_services(store, live)))
    try:
        await _until(lambda: len(store.opened) >= 2)
        assert store.opened[:2] == [False, True]
        assert store.acknowledged == ["agent-1"] and not listener.done()
    finally:
        listener.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await listener
