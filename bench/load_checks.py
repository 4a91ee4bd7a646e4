"""The load test's correctness checks, pure: from what was sent, served and observed to the counts that must be 0.

"Served" is the upstream's log (bench/load_nginx.py): a request the gateway let through to a console. Every
request carries its agent and its send time (CLOCK_MONOTONIC), so each is judged against the moments of that
agent's deprovisioning: when the call started, when the agent's sessions were deleted from Redis (seen as the
keyspace event of its session index), and when the call returned (every replica had acknowledged).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from bench.load_wrk import Tagged
from bench.load_ws import SocketRecord

#: A request sent this long before the load generator stopped may have had no answer yet (not an error).
IN_FLIGHT_SECONDS = 2.0
#: A deprovisioned agent's request refused although sent this long before the call started is an error.
EARLY_SECONDS = 1.0
#: RFC 6455 §7.4.1 policy violation: the gateway's close code for a revoked agent's WebSocket.
REVOKED_CLOSE_CODE = 1008


@dataclass(frozen=True)
class Moments:
    """One deprovisioning's moments (monotonic seconds); ``killed`` is None if its deletion was never seen."""

    started: float
    returned: float
    killed: float | None


@dataclass
class RequestChecks:
    sent: int = 0
    served: int = 0
    #: Served although sent after the agent's deprovisioning call returned: must be 0.
    late_after_return: list[Tagged] = field(default_factory=list)
    #: Served although sent after the agent's sessions were deleted: must be 0.
    late_after_kill: list[Tagged] = field(default_factory=list)
    #: Not served, for an agent never deprovisioned, and not in flight at the end: must be 0.
    refused_live: list[Tagged] = field(default_factory=list)
    #: Not served, for a deprovisioned agent, but sent well before its call started: must be 0.
    refused_early: list[Tagged] = field(default_factory=list)
    #: Not served, for a deprovisioned agent, after its call started: the refusals the storm is expected to cause.
    expected_refusals: int = 0
    in_flight_at_end: int = 0
    #: Served requests absent from every send log (the logs must account for each): must be 0.
    unaccounted: int = 0


def check_requests(
    sent: Iterable[Tagged], served: Iterable[Tagged], revoked: Mapping[str, Moments], end: float
) -> RequestChecks:
    """Judge every request by its agent's deprovisioning (``revoked``: agent name → moments); ``end``: when the
    load generator stopped."""
    result = RequestChecks()
    served_ids = set()
    for request in served:
        result.served += 1
        served_ids.add(request.seq)
        moments = revoked.get(request.agent)
        if moments is None:
            continue
        if request.sent > moments.returned:
            result.late_after_return.append(request)
        if moments.killed is not None and request.sent > moments.killed:
            result.late_after_kill.append(request)
    sent_ids = set()
    for request in sent:
        result.sent += 1
        sent_ids.add(request.seq)
        if request.seq in served_ids:
            continue
        moments = revoked.get(request.agent)
        if moments is not None and request.sent >= moments.started - EARLY_SECONDS:
            result.expected_refusals += 1
        elif request.sent > end - IN_FLIGHT_SECONDS:
            result.in_flight_at_end += 1
        elif moments is None:
            result.refused_live.append(request)
        else:
            result.refused_early.append(request)
    result.unaccounted = len(served_ids - sent_ids)
    return result


@dataclass
class SocketChecks:
    sockets: int = 0
    opened: int = 0
    #: Could not open, or failed while open (the record's error): must be 0.
    failed: list[str] = field(default_factory=list)
    #: Deprovisioned agents' sockets the gateway closed with 1008.
    revoked_closed: int = 0
    #: Deprovisioned agents' sockets left open, or closed with another code: must be 0.
    revoked_not_closed: list[str] = field(default_factory=list)
    #: Sockets of agents never deprovisioned that the gateway closed: must be 0.
    live_closed: list[str] = field(default_factory=list)
    #: Echoes naming another agent than the socket's: must be 0.
    wrong_agent: int = 0
    messages: int = 0
    echoes: int = 0
    #: Messages of live sockets without an echo, beyond the one that may be in flight when the fleet closes.
    lost_echoes: int = 0


def check_sockets(records: Iterable[SocketRecord], revoked: Iterable[str]) -> SocketChecks:
    gone = set(revoked)
    result = SocketChecks()
    for record in records:
        result.sockets += 1
        result.opened += record.opened is not None
        result.wrong_agent += record.wrong_agent
        result.messages += record.sent
        result.echoes += len(record.rtts)
        if record.error is not None:
            result.failed.append(f"{record.agent}: {record.error}")
        if record.agent in gone:
            if record.closed is not None and record.close_code == REVOKED_CLOSE_CODE:
                result.revoked_closed += 1
            else:
                result.revoked_not_closed.append(f"{record.agent} (close code {record.close_code})")
        else:
            if record.closed is not None:
                result.live_closed.append(f"{record.agent} (close code {record.close_code})")
            result.lost_echoes += max(0, record.sent - len(record.rtts) - 1)
    return result
