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
        mine = sum(1 for other in offsets if abs(reading.offset - other) <= limit)  # itself included
        self._against = (len(offsets) - mine, len(offsets))
        broken = outvoted(reading.offset, offsets, limit)
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


def outvoted(offset: float, offsets: Sequence[float], limit: float) -> bool:
    """Whether the replica whose offset from Redis is ``offset`` is refused, among the live replicas' ``offsets``
    (its own included): it agrees with more than half of them (within ``limit``) and serves; else it is refused when
    more than half of them agree without it; else (no majority) Redis's clock breaks the tie."""

    def agreeing(mine: float) -> int:
        return sum(1 for other in offsets if abs(mine - other) <= limit)

    if 2 * agreeing(offset) > len(offsets):
        return False
    if any(2 * agreeing(other) > len(offsets) for other in offsets):
        return True
    return abs(offset) > limit


def shift_onto_replicas(reading: ClockReading, replicas: Sequence[float], max_skew_seconds: float) -> float:
    """Seconds to add to this host's clock so that it reads no earlier than any serving replica's clock, for a
    process outside the vote that stamps a session end (``channelgate agents deprovision``, ``ldap sync``).

    Only the replicas the vote lets serve stamp sessions, so only their clocks count (an outvoted one, however far
    off, would drag the stamp along); of those, the one reading latest: an end covers the sessions created before
    it, so a later stamp covers every serving replica's sessions (fail closed: it may also end sessions signed in to
    within the serving replicas' skew after the kill). With no serving replica live, the later of this host's and
    Redis's clocks."""
    limit = max_skew_seconds + reading.slack
    serving = [offset for offset in replicas if not outvoted(offset, replicas, limit)]
    if not serving:
        return max(0.0, reading.offset)
    return reading.offset - min(serving)  # a replica's clock is Redis's minus its offset: the least reads latest
