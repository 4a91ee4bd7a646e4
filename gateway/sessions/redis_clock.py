"""This replica's clock against the other replicas' and Redis's: session timeouts use the replica's clock.

A lookup (``LOOKUP_SCRIPT``, gateway/sessions/redis_scripts.py) compares the ``now`` the serving replica sends with
the ``created`` and ``seen`` times that other replicas wrote with theirs. A replica whose clock runs behind keeps
sessions alive past their idle and absolute timeouts; one that runs ahead writes ``seen`` in the future, which
lengthens the idle timeout on every replica by as much (OWASP ASVS 7.3: timeouts must hold). What matters is that
the replicas agree with each other; NTP keeps them within milliseconds.

Each replica reads Redis's ``TIME`` and notes its own clock just before sending and just after the answer: its
offset from Redis is Redis's reading minus the midpoint, give or take half the round trip. It publishes that
offset (``CLOCKS_SCRIPT``) and reads the other live replicas'. What must hold is that the replicas agree with each
other, so the replicas' clocks vote: two agree when their offsets are within ``[sessions.redis]
max_clock_skew_seconds`` (plus half this round trip). A replica that agrees with more than half of the live
replicas (itself included) serves; one outside a group of more than half is refused; when no group is larger than
half (two replicas that disagree, three that all do) Redis's clock breaks the tie: a replica that agrees with it
serves. Refused, it refuses sessions (503, fail closed) and is not ready until it agrees again, and says so in its
log once per change. So a Redis whose own clock drifts takes no replica down while most replicas agree, the
replicas that agree keep serving whatever the others do, and a replica alone is never refused (every timeout is
then decided with its one clock, consistently).
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
        limit = self.max_skew_seconds + reading.slack
        offsets = [reading.offset, *peers]

        def agreeing(offset: float) -> int:
            return sum(1 for other in offsets if abs(offset - other) <= limit)

        mine = agreeing(reading.offset)  # itself included
        self._against = (len(offsets) - mine, len(offsets))
        if 2 * mine > len(offsets):
            broken = False  # with more than half of the replicas
        elif any(2 * agreeing(other) > len(offsets) for other in peers):
            broken = True  # more than half of them agree, without it
        else:
            broken = abs(reading.offset) > limit  # no majority: Redis's clock breaks the tie
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
            f"the {voters} live replicas' clocks by more than {self.max_skew_seconds:g} s "
            "([sessions.redis] max_clock_skew_seconds): session timeouts would be decided wrongly, so sessions are "
            "refused here until it agrees again; synchronise the host's clock (NTP: chrony or systemd-timesyncd)"
        )
