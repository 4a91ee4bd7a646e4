"""Live connections end with their session, also when nothing else notices the end (ASVS 7.3.1, 7.3.2, 7.4.1).

A logout, or a lookup that finds a session expired, is broadcast (``Revocation.ended_session``) and every replica
closes that session's WebSockets and streamed responses at once (gateway/app.py). What no request notices is
found here, by a sweep every ``SWEEP_SECONDS`` over the sessions with live connections on this replica
(``LiveConnections.sessions``):

* past its absolute lifetime: closed, without asking the store (every replica reaches that verdict alone);
* used — the agent sent a WebSocket message since the store last confirmed the session — and half an idle
  timeout past that confirmation: looked up, which refreshes its idle clock. An agent working in a console over
  its WebSocket is active, as one sending requests is (ASVS 7.3.1 ends sessions of inactive users); a keep-alive
  that the console's page sends by itself counts as use too. Messages from the console to the agent never do;
* unused for a whole idle timeout since that confirmation: asked without refreshing (``sessions_of``) whether
  requests kept it alive meanwhile; closed if not.

A store that cannot be reached leaves the connection open until the next sweep asks again (the absolute limit
still applies); the resync after the broadcast channel comes back re-checks every session (gateway/app.py).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from enum import Enum

from gateway.errors import ChannelgateError
from gateway.proxy.streams import LiveConnections, SessionBinding
from gateway.sessions.base import SessionState, SessionStore

log = logging.getLogger(__name__)

#: How often the sessions with live connections are compared with their timeouts (a comparison each; the store
#: is asked only for those due, at most about twice per idle timeout).
SWEEP_SECONDS = 1.0


class Verdict(Enum):
    KEEP = "keep"
    #: Past the absolute lifetime: close.
    EXPIRED = "expired"
    #: In use: look it up (refreshing its idle clock); close unless valid.
    REFRESH = "refresh"
    #: Unused for a whole idle timeout: ask whether it is still valid; close unless it is.
    CHECK = "check"


def verdict(binding: SessionBinding, now: float, idle: float, absolute: float) -> Verdict:
    """What the sweep does with one session at ``now`` (pure: the clock travels in)."""
    if now - binding.created_at >= absolute:
        return Verdict.EXPIRED
    since = now - binding.confirmed_at
    if binding.used and since >= idle / 2:
        return Verdict.REFRESH
    if since >= idle:
        return Verdict.CHECK
    return Verdict.KEEP


async def sweep(live: LiveConnections, store: SessionStore, now: float, idle: float, absolute: float) -> int:
    """Close the live connections of every session that ended unnoticed; returns how many were closed."""
    closed = 0
    if store.clock_skewed:
        # This replica cannot tell whether a session is still valid (its clock was outvoted, the store refuses
        # lookups): its open connections are closed, as their next request would be refused (fail closed).
        for binding in live.sessions():
            closed += await live.close_session(binding.key, reason="this replica's clock cannot be trusted")
        return closed
    unchecked: list[str] = []
    for binding in live.sessions():
        decided = verdict(binding, now, idle, absolute)
        if decided is Verdict.KEEP:
            continue
        if decided is Verdict.EXPIRED:
            closed += await live.close_session(binding.key, reason="session expired")
            continue
        try:
            valid = await _still_valid(store, binding, now, refresh=decided is Verdict.REFRESH)
        except ChannelgateError as exc:
            unchecked.append(exc.message)  # kept open and checked again next sweep (the store is down)
            continue
        if not valid:
            closed += await live.close_session(binding.key, reason="session ended")
    if unchecked:
        # Once a sweep, not once a session: a store outage with thousands of open sockets would flood the log.
        log.warning("could not check the sessions of open connections (%d): %s", len(unchecked), unchecked[0])
    return closed


async def _still_valid(store: SessionStore, binding: SessionBinding, now: float, *, refresh: bool) -> bool:
    if refresh:
        binding.used = False  # before the await: a message sent meanwhile marks the next period
        try:
            found = await store.lookup(binding.session_id, now)
        except ChannelgateError:
            binding.used = True
            raise
        if found.state is not SessionState.VALID or found.session is None:
            return False
        binding.confirmed_at = found.session.last_seen_at
        return True
    for session in await store.sessions_of(binding.agent_id, now):
        if session.id == binding.key:
            binding.confirmed_at = session.last_seen_at
            return True
    return False


async def watch_sessions(
    live: LiveConnections, store: SessionStore, clock: Callable[[], float], idle: float, absolute: float
) -> None:
    """Sweep every ``SWEEP_SECONDS`` until cancelled."""
    while True:
        await asyncio.sleep(SWEEP_SECONDS)
        await sweep(live, store, clock(), idle, absolute)
