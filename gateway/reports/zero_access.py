"""The final zero-access check of an offboarding (pure): each check with its evidence, and a verdict that claims
no more than the evidence shows.

The seed's third offboarding rule asks for a final check that every account and every access to personal data
is shut (PIPA safety-measure standard art. 5: access rights removed without delay when a handler leaves). Access
is "ended" only when every check passed:

1. the agent is disabled (the first disable record since it was last made active is when access had to
   stop: a repeated deprovisioning writes a later one that must not move that moment);
2. the session store holds no live session of the agent (and this process can see the store the gateway uses);
3. every deprovisioning run is ``done``, and at each channel the revoke and remove steps are done (or had nothing
   to do) and the verify step is done: the channel itself said the token, seat or console session is gone. A run
   ``superseded`` (its agent was made active again before it finished) is listed but counts neither way: it ended
   nobody's access, so at least one other run must be done;
4. no request or login was allowed for the agent after the disable time (a request let in before it and still
   running at it, such as a console WebSocket closed by the session kill, is listed but is not access after it).

Anything else is "access NOT proven ended", with the failing checks as the reasons.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from gateway.deprovision.plan import RunState, StepKind, StepState
from gateway.storage.access_log import AccessRecord
from gateway.storage.pipeline import RunRecord, StepRecord

ENDED = "access ended"
NOT_PROVEN = "access NOT proven ended"
#: How much later than the kill's record a request closed by that kill may end (clock differences of replicas).
KILL_GRACE = timedelta(seconds=2)
#: Findings of one failed check repeated in the verdict's reasons (the check itself lists them all).
REASONS_PER_CHECK = 4

_CHAIN = (StepKind.REVOKE, StepKind.VERIFY, StepKind.REMOVE)
_HAD_NOTHING_TO_DO = frozenset({StepState.DONE, StepState.NOT_APPLICABLE})


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    passed: bool
    #: What was looked at and what it showed (or why the check failed), one line each.
    evidence: tuple[str, ...]

    def as_dict(self) -> dict[str, object]:
        return {"name": self.name, "passed": self.passed, "evidence": list(self.evidence)}


@dataclass(frozen=True, slots=True)
class SessionsSeen:
    """What the session store said: ``count`` live sessions, or why it could not be asked (``unseen``)."""

    store: str
    count: int = 0
    unseen: str | None = None


@dataclass(frozen=True, slots=True)
class Verdict:
    ended: bool
    checks: tuple[Check, ...]
    checked_at: datetime
    #: Allowed access after the disable time (the first ones, if many) and how many there are in all.
    access_after_disable: tuple[AccessRecord, ...] = field(default=())
    access_after_disable_total: int = 0
    #: Requests let in before the disable that were still running at it (closed by the session kill).
    in_flight_at_disable: tuple[AccessRecord, ...] = field(default=())

    @property
    def statement(self) -> str:
        return ENDED if self.ended else NOT_PROVEN

    @property
    def reasons(self) -> list[str]:
        """Why access is not proven ended: each failed check's findings (at most a few per check)."""
        return [f"{c.name}: {line}" for c in self.checks if not c.passed for line in c.evidence[:REASONS_PER_CHECK]]


def disabled_check(active: bool, deleted: bool, disabled_at: datetime | None, disable: AccessRecord | None) -> Check:
    name = "agent disabled"
    if active and not deleted:
        return Check(name, False, ("the agent is active: it can still sign in",))
    state = "deleted" if deleted else "disabled"
    if disable is None or disabled_at is None:
        return Check(
            name,
            False,
            (f"the agent is {state}, but the access log holds no disable record: when access had to stop is unknown",),
        )
    source = (disable.detail or {}).get("source")
    return Check(
        name,
        True,
        (
            f"the agent is {state}; disabled at {disabled_at.isoformat()} by {disable.actor}"
            f"{f' ({source})' if source else ''}: {disable.reason}",
            f"access-log record seq {disable.seq}"
            + (f", chain position {disable.chain_pos}" if disable.chain_pos else ""),
        ),
    )


def sessions_check(seen: SessionsSeen) -> Check:
    name = "no live session"
    if seen.unseen is not None:
        return Check(name, False, (f"the {seen.store} session store was not checked: {seen.unseen}",))
    if seen.count:
        return Check(name, False, (f"the {seen.store} session store holds {seen.count} live session(s) of the agent",))
    return Check(name, True, (f"the {seen.store} session store holds no live session of the agent",))


def pipeline_check(runs: Sequence[RunRecord], steps: Sequence[StepRecord]) -> Check:
    name = "every channel revoked and verified"
    if not runs:
        return Check(name, False, ("no deprovisioning run is recorded for the agent",))
    problems: list[str] = []
    shown: list[str] = []
    ordered = sorted(runs, key=lambda r: r.created_at)
    set_aside = [
        f"run {r.id} superseded (the agent was made active again before it finished): not counted"
        for r in ordered
        if r.state is RunState.SUPERSEDED
    ]
    counted = [r for r in ordered if r.state is not RunState.SUPERSEDED]
    if not counted:
        return Check(name, False, ("no deprovisioning run ended the agent's access: each was superseded", *set_aside))
    for run in counted:
        if run.state is not RunState.DONE:
            problems.append(f"run {run.id} is {run.state.value}, not done")
        of_run = [s for s in steps if s.run_id == run.id]
        for channel in sorted({s.channel for s in of_run}):
            chain = {s.step: s for s in of_run if s.channel == channel and s.step in _CHAIN}
            if not chain:
                continue
            verify = chain.get(StepKind.VERIFY)
            if verify is None:
                problems.append(f"channel {channel}: no verify step, so the channel never confirmed access is gone")
            elif verify.state is not StepState.DONE:
                problems.append(f"channel {channel}: verify is {verify.state.value}: {verify.detail or 'no detail'}")
            else:
                shown.append(f"channel {channel}: verified ({verify.detail or 'done'})")
            for kind in (StepKind.REVOKE, StepKind.REMOVE):
                step = chain.get(kind)
                if step is not None and step.state not in _HAD_NOTHING_TO_DO:
                    problems.append(
                        f"channel {channel}: {kind.value} is {step.state.value} after {step.attempts} attempt(s): "
                        f"{step.detail or 'no detail'}"
                    )
    if problems:
        return Check(name, False, (*problems, *set_aside))
    return Check(name, True, (f"{len(counted)} run(s) done", *set_aside, *shown))


def admitted_at(record: AccessRecord) -> datetime:
    """When a request was let in. Request records are written when the request ends (``duration_ms`` later), so a
    WebSocket or stream that was open at the disable, and was closed by the session kill, ends after it."""
    return record.time - timedelta(milliseconds=record.duration_ms or 0)


def split_at_disable(
    disabled_at: datetime, killed_at: datetime | None, records: Sequence[AccessRecord]
) -> tuple[list[AccessRecord], list[AccessRecord]]:
    """Records ending after the disable: (access after it, requests in flight at it). In flight means let in before
    the disable and ended by the session kill that followed it (its record, ``killed_at``, is written once every
    replica closed the agent's connections; ``KILL_GRACE`` allows for the replicas' clocks). Anything else, such
    as a stream still open after the kill, is access after the disable."""

    def in_flight(record: AccessRecord) -> bool:
        return (
            admitted_at(record) <= disabled_at
            and killed_at is not None
            and killed_at >= disabled_at
            and record.time <= killed_at + KILL_GRACE
        )

    return [r for r in records if not in_flight(r)], [r for r in records if in_flight(r)]


def _line(record: AccessRecord) -> str:
    return f"seq {record.seq} at {record.time.isoformat()}: {record.kind} {record.channel or ''} {record.path or ''}"


def after_disable_check(
    disabled_at: datetime | None, total: int, after: Sequence[AccessRecord], in_flight: Sequence[AccessRecord]
) -> Check:
    """``total`` records ended after the disable; of those read, ``after`` were let in after it and ``in_flight``
    before it. Any not read (more than the report lists) count as let in after: fail closed."""
    name = "no access allowed after the disable"
    if disabled_at is None:
        return Check(name, False, ("no disable time, so access after it cannot be ruled out",))
    allowed = total - len(in_flight)
    open_at_disable = [
        f"{_line(r).rstrip()}: let in at {admitted_at(r).isoformat()}, before the disable, and ended by the session "
        "kill that followed it"
        for r in in_flight
    ]
    if allowed:
        lines = [f"{allowed} request(s) or login(s) allowed after {disabled_at.isoformat()}"]
        return Check(name, False, (*lines, *(_line(r).rstrip() for r in after), *open_at_disable))
    return Check(name, True, (f"no request or login was allowed after {disabled_at.isoformat()}", *open_at_disable))


def verdict(
    checks: Sequence[Check],
    checked_at: datetime,
    after: Sequence[AccessRecord] = (),
    after_total: int = 0,
    in_flight: Sequence[AccessRecord] = (),
) -> Verdict:
    return Verdict(
        all(c.passed for c in checks), tuple(checks), checked_at, tuple(after), after_total, tuple(in_flight)
    )
