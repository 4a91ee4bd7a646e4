"""Open streamed HTTP responses per agent, so a revocation can cut them.

A Server-Sent Events stream or a long download is as much a live connection as a WebSocket: a deprovisioned
agent must not keep receiving it (ASVS 7.4.2). Each forwarded response is tracked while its body streams; on
revocation its upstream connection is closed, which ends the relay and aborts the client connection.
"""

from __future__ import annotations

from collections.abc import Callable

Abort = Callable[[], None]


class StreamRegistry:
    def __init__(self) -> None:
        self._streams: dict[str, dict[int, Abort]] = {}
        self._next = 0

    def track(self, agent_id: str, abort: Abort) -> Callable[[], None]:
        """Remember an open response; returns the function that forgets it when its body ends."""
        self._next += 1
        token = self._next
        self._streams.setdefault(agent_id, {})[token] = abort

        def untrack() -> None:
            streams = self._streams.get(agent_id)
            if streams is not None:
                streams.pop(token, None)
                if not streams:
                    del self._streams[agent_id]

        return untrack

    def close_agent(self, agent_id: str) -> int:
        streams = self._streams.pop(agent_id, {})
        for abort in streams.values():
            abort()
        return len(streams)

    def count(self) -> int:
        return sum(len(streams) for streams in self._streams.values())

    def agents(self) -> set[str]:
        return set(self._streams)


class LiveConnections:
    """Everything a revoked agent may still have open on this replica: WebSockets and streamed responses."""

    def __init__(self) -> None:
        from gateway.proxy.websocket import WebSocketRegistry

        self.websockets = WebSocketRegistry()
        self.streams = StreamRegistry()

    async def close_agent(self, agent_id: str) -> int:
        """Close every WebSocket and streamed response of ``agent_id``; returns how many were open."""
        return self.streams.close_agent(agent_id) + await self.websockets.close_agent(agent_id)

    def agents(self) -> set[str]:
        return set(self.websockets.agents()) | self.streams.agents()

    def count(self) -> int:
        return self.websockets.count() + self.streams.count()

    async def close_all(self) -> None:
        for agent_id in list(self.streams.agents()):
            self.streams.close_agent(agent_id)
        await self.websockets.close_all()
