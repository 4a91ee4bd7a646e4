"""This replica's clock against Redis's: session timeouts are decided with the replica's clock.

A lookup (``LOOKUP_SCRIPT``, gateway/sessions/redis_scripts.py) compares the ``now`` the serving replica sends with
the ``created`` and ``seen`` times that other replicas wrote with theirs. A replica whose clock runs behind keeps
sessions alive past their idle and absolute timeouts; one that runs ahead writes ``seen`` in the future, which
lengthens the idle timeout on every replica by as much (OWASP ASVS 7.3: timeouts must hold). NTP keeps clocks
within milliseconds of each other, so a replica off Redis's clock by more than ``[sessions.redis]
max_clock_skew_seconds`` has a broken clock: it refuses every session (503, fail closed) and is not ready until
its clock agrees again, and says so in its log once per change.

How far off: the heartbeat reads Redis's ``TIME`` inside its script; the replica notes its own clock just before
sending and just after the answer. If both clocks agree, Redis's reading lies between the two, so the skew is the
distance of Redis's reading from that interval (zero inside it): a slow round trip widens the interval and can
only hide skew up to its own length, never invent it.
"""

from __future__ import annotations

import logging
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
    def skew(self) -> float:
        """Seconds Redis's clock is ahead of this replica's (negative: behind), beyond the round trip's slack."""
        if self.redis_now < self.sent_at:
            return self.redis_now - self.sent_at
        if self.redis_now > self.received_at:
            return self.redis_now - self.received_at
        return 0.0


class ClockSkew:
    """The latest comparison of this replica's clock with Redis's, against the largest skew allowed."""

    def __init__(self, max_skew_seconds: float) -> None:
        self.max_skew_seconds = max_skew_seconds
        self._skew = 0.0
        self._broken = False

    @property
    def broken(self) -> bool:
        """Whether the latest reading was off by more than allowed (sessions are then refused)."""
        return self._broken

    @property
    def skew(self) -> float:
        return self._skew

    def observe(self, reading: ClockReading) -> None:
        """Take a reading; log once when the clock goes wrong and once when it is right again."""
        self._skew = reading.skew
        broken = abs(self._skew) > self.max_skew_seconds
        if broken and not self._broken:
            log.error("%s", self.problem())
        elif self._broken and not broken:
            log.warning(
                "this replica's clock agrees with Redis's again (off by %.3f s): sessions are served", self._skew
            )
        self._broken = broken

    def problem(self) -> str:
        """What is wrong and what to do, for the log and the readiness probe's operator."""
        direction = "behind" if self._skew > 0 else "ahead of"
        return (
            f"this replica's clock is {abs(self._skew):.1f} s {direction} Redis's (at most "
            f"{self.max_skew_seconds:g} s allowed, [sessions.redis] max_clock_skew_seconds): session timeouts "
            "would be decided wrongly, so sessions are refused here until it agrees again; synchronise the host's "
            "clock (NTP: chrony or systemd-timesyncd)"
        )
