"""Open streamed HTTP responses and WebSockets per agent and per session, so a revocation or a session's end
can cut them.

A Server-Sent Events stream or a long download is as much a live connection as a WebSocket: a deprovisioned
agent must not keep receiving it (ASVS 7.4.2), nor may a session ended by logout or expiry keep being used through
it (ASVS 7.4.1). Each forwarded response is tracked while its body streams; on revocation its upstream connection
is closed, which ends the relay and aborts the client connection. The sessions with live connections here are
kept as ``SessionBinding``s, which gateway/sessions/watch.py checks against the timeouts.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from gateway.sessions.base import Session, session_key

Abort = Callable[[], None]

#: How long a session that ended is remembered here: a handshake or a response that passed its session check just
#: before the end was broadcast, and registers just after, is refused then. Well above the upstream connect timeout.
ENDED_MEMORY_SECONDS = 60.0


class StreamRegistry:
    def __init__(self) -> None:
        self._streams: dict[str, dict[int, Abort]] = {}
        self._by_session: dict[str, dict[int, Abort]] = {}
        self._next = 0

    def track(self, agent_id: str, abort: Abort, session: str | None = None) -> Callable[[], None]:
        """Remember an open response (of the session whose storage key is ``session``, if given); returns the
        function that forgets it when its body ends."""
        self._next += 1
        token = self._next
        self._streams.setdefault(agent_id, {})[token] = abort
        if session is not None:
            self._by_session.setdefault(session, {})[token] = abort

        def untrack() -> None:
            _forget(self._streams, agent_id, token)
            if session is not None:
                _forget(self._by_session, session, token)

        return untrack

    def close_agent(self, agent_id: str) -> int:
        streams = self._streams.pop(agent_id, {})
        for abort in streams.values():
            abort()
        return len(streams)

    def close_session(self, session: str) -> int:
        streams = self._by_session.pop(session, {})
        for abort in streams.values():
            abort()
        return len(streams)

    def count(self) -> int:
        return sum(len(streams) for streams in self._streams.values())

    def agents(self) -> set[str]:
        return set(self._streams)


def _forget(index: dict[str, dict[int, Abort]], key: str, token: int) -> None:
    streams = index.get(key)
    if streams is not None:
        streams.pop(token, None)
        if not streams:
            del index[key]


@dataclass(eq=False, slots=True)
class SessionBinding:
    """One session with live connections on this replica, and what is known here of its timeouts."""

    #: The storage key (``session_key``): what a session's end is broadcast under.
    key: str
    #: The session id itself, to refresh the idle clock by a lookup; held in this process only, as a request's is.
    session_id: str
    agent_id: str
    created_at: float
    #: The session's ``last_seen_at`` as the store last confirmed it (its idle clock cannot be older).
    confirmed_at: float
    #: The agent sent something on one of its WebSockets since ``confirmed_at``.
    used: bool = False
    connections: int = 0

    def use(self) -> None:
        self.used = True


class LiveConnections:
    """Everything a revoked agent or an ended session may still have open on this replica: WebSockets and
    streamed responses."""

    def __init__(self) -> None:
        from gateway.proxy.websocket import WebSocketRegistry

        self.websockets = WebSocketRegistry()
        self.streams = StreamRegistry()
        self._sessions: dict[str, SessionBinding] = {}
        #: Storage key → monotonic time until which a session that ended is remembered (``ENDED_MEMORY_SECONDS``).
        self._ended: dict[str, float] = {}

    def bind(self, session: Session) -> SessionBinding | None:
        """Count one more live connection of ``session`` (undone by ``unbind``); None if the session ended here a
        moment ago (its end was broadcast after the caller's lookup): the connection must be refused."""
        key = session_key(session.id)
        if self._ended.get(key, 0.0) > time.monotonic():
            return None
        binding = self._sessions.get(key)
        if binding is None:
            binding = self._sessions[key] = SessionBinding(
                key, session.id, session.data.agent_id, session.created_at, session.last_seen_at
            )
        binding.confirmed_at = max(binding.confirmed_at, session.last_seen_at)
        binding.connections += 1
        return binding

    def unbind(self, binding: SessionBinding) -> None:
        binding.connections -= 1
        if binding.connections <= 0 and self._sessions.get(binding.key) is binding:
            del self._sessions[binding.key]

    def track_stream(self, session: Session, abort: Abort) -> Callable[[], None]:
        """Track a streamed response of ``session``; returns the function that forgets it. A session that ended
        while the response's head was on its way has it aborted at once."""
        binding = self.bind(session)
        if binding is None:
            abort()
            return lambda: None
        untrack = self.streams.track(session.data.agent_id, abort, binding.key)

        def forget() -> None:
            untrack()
            self.unbind(binding)

        return forget

    def sessions(self) -> list[SessionBinding]:
        """The sessions with live connections here."""
        return list(self._sessions.values())

    async def close_session(self, key: str, reason: str = "session ended") -> int:
        """Close every WebSocket and streamed response of the session stored under ``key``; returns how many.

        The session is remembered as ended for ``ENDED_MEMORY_SECONDS``, so a connection that checked it just
        before cannot register after."""
        now = time.monotonic()
        if len(self._ended) > 10_000:
            self._ended = {ended: until for ended, until in self._ended.items() if until > now}
        self._ended[key] = now + ENDED_MEMORY_SECONDS
        return self.streams.close_session(key) + await self.websockets.close_session(key, reason=reason)

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
