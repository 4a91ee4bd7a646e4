"""The replica's revocation listener: each broadcast is closed and acknowledged on its own."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator
from typing import Any, cast

from gateway.app import _revocation_listener
from gateway.services import Services
from gateway.sessions.base import Revocation


class FakeStore:
    def __init__(self, revocations: list[Revocation]) -> None:
        self._revocations = revocations
        self.acknowledged: list[str] = []

    async def revocations(self) -> AsyncGenerator[Revocation, None]:
        for revocation in self._revocations:
            yield revocation
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
        self.closed.append(agent_id)
        return 1

    async def close_session(self, key: str) -> int:
        self.sessions_closed.append(key)
        return 1


def _services(store: FakeStore, live: FakeLive) -> Services:
    fields = {"sessions": store, "live": live, "connectors": {}, "collector": None}
    return cast(Services, cast(Any, type("S", (), fields)))


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
