"""This replica's clock against the other replicas' and Redis's: session timeouts use the replica's clock.

A lookup (``LOOKUP_SCRIPT``, gateway/sessions/redis_scripts.py) compares the ``now`` the serving replica sends with
the ``created`` and ``seen`` times that other replicas wrote with theirs. A replica whose clock runs behind keeps
sessions alive past their idle and absolute timeouts; one that runs ahead writes ``seen`` in the future, which
lengthens the idle timeout on every replica by as much (OWASP ASVS 7.3: timeouts must hold). What matters is that
the replicas agree with each other; NTP keeps them within milliseconds.

Each replica reads Redis's ``TIME`` and notes its own clock just before sending and just after the answer: its
offset from Redis is Redis's reading minus the midpoint, give or take half the round trip. It publishes that
offset (``CLOCKS_SCRIPT``) and reads the other live replicas'. The voters are those replicas and Redis itself
(offset 0); a replica that disagrees, by more than ``[sessions.redis] max_clock_skew_seconds`` (plus half its round
trip), with more of them than it agrees with has a broken clock: it refuses sessions (503, fail closed) and is not
ready until it agrees again, and says so in its log once per change. Redis is one voter, not the judge: a Redis
whose own clock drifts (the replicas agree among themselves) takes no replica down, and with two replicas and
Redis one wrong clock is outvoted. A replica with no other live replica to compare with decides every session with
its own clock alone, which is consistent, and is never refused for its offset from Redis.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

log = logging.getLogger("channelgate.sessions")

#: ``[sessions.redis] max_clock_skew_seconds`` by default: far beyond what NTP leaves, far below a session timeout.
DEFAULT_MAX_CLOCK_SKEW_SECONDS = 5.0


@dataclass(frozen=True, slots=True)
class ClockReading:
    """One comparison: the replica's clock before sending and after the answer, and Redis's ``TIME`` between."""

    sent_at: float
    redis_now: float
    received_at: float

    @property
    def offset(self) -> float:
        """Seconds Redis's clock is ahead of this replica's (negative: behind), from the round trip's midpoint."""
        return self.redis_now - (self.sent_at + self.received_at) / 2

    @property
    def slack(self) -> float:
        """How far ``offset`` may be off: half the round trip (Redis read its clock somewhere inside it)."""
        return (self.received_at - self.sent_at) / 2


class ClockSkew:
    """The latest vote on this replica's clock, against the largest skew allowed."""

    def __init__(self, max_skew_seconds: float) -> None:
        self.max_skew_seconds = max_skew_seconds
        self._offset = 0.0
        self._against: tuple[int, int] = (0, 0)
        self._broken = False

    @property
    def broken(self) -> bool:
        """Whether the latest vote went against this replica's clock (sessions are then refused)."""
        return self._broken

    @property
    def offset(self) -> float:
        return self._offset

    def observe(self, reading: ClockReading, peers: Sequence[float]) -> None:
        """Take a reading and the other live replicas' offsets from Redis; log once when the vote turns against
        this replica's clock and once when it no longer does."""
        self._offset = reading.offset
        voters = [0.0, *peers]  # Redis, then each other replica
        limit = self.max_skew_seconds + reading.slack
        against = sum(1 for voter in voters if abs(reading.offset - voter) > limit)
        self._against = (against, len(voters))
        broken = bool(peers) and against > len(voters) - against
        if broken and not self._broken:
            log.error("%s", self.problem())
        elif self._broken and not broken:
            log.warning("this replica's clock agrees with the other replicas' again: sessions are served")
        self._broken = broken

    def problem(self) -> str:
        """What is wrong and what to do, for the log and the readiness probe's operator."""
        direction = "behind" if self._offset > 0 else "ahead of"
        against, voters = self._against
        return (
            f"this replica's clock is {abs(self._offset):.1f} s {direction} Redis's and disagrees with {against} of "
            f"{voters} clocks (Redis and the other live replicas) by more than {self.max_skew_seconds:g} s "
            "([sessions.redis] max_clock_skew_seconds): session timeouts would be decided wrongly, so sessions are "
            "refused here until it agrees again; synchronise the host's clock (NTP: chrony or systemd-timesyncd)"
        )
