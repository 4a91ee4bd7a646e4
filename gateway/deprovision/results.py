"""What a batch of attempts does to the pipeline's state (pure): the rule the worker's commits apply.

Each attempt that still holds its lease gives its step a state (``plan.step_state_for``; a retry is due again after
exponential backoff with full jitter, ``backoff.retry_delay``) and a receipt for the access log. A final state
unlocks the channel's next step (``plan.unlocked``) and may finish the run (``plan.run_state``): done only when
every step is, with a summary record. A step the worker did not take because the run's agent is active again is
superseded, and so are the later steps of its channel; the run then ends superseded, never done. The batch is
applied in order to one snapshot read inside the transaction that records it, so several steps of one run in one
batch end exactly as if they had been recorded one by one, and an attempt whose lease another worker took over
changes nothing (its result is that worker's to record).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from connectors.base import Outcome, StepResult
from gateway.deprovision.backoff import retry_delay
from gateway.deprovision.plan import (
    FINAL,
    FINISHED_RUNS,
    RunState,
    StepState,
    carried_out,
    run_state,
    step_state_for,
    unlocked,
)
from gateway.settings import DeprovisionSettings
from gateway.storage.access_log import AccessRecord
from gateway.storage.pipeline_records import (
    Budget,
    Changes,
    RunRecord,
    Sibling,
    Snapshot,
    StepFinish,
    StepRecord,
    idempotency_key,
)

#: The steps a run still has to take; those of a superseded run are not taken.
UNFINISHED = frozenset({StepState.WAITING, StepState.PENDING, StepState.HELD})


@dataclass(frozen=True, slots=True)
class Attempt:
    """One attempt at one step, as the worker ran it: the step and run as claimed, and the connector's answer."""

    step: StepRecord
    run: RunRecord
    result: StepResult
    #: Not taken: the run's agent was active again at the attempt (``PipelineWorker``), so the run is superseded.
    superseded: bool = False


def settle(
    batch: Sequence[Attempt],
    snapshot: Snapshot,
    now: datetime,
    settings: DeprovisionSettings,
    *,
    uniform: Callable[[float, float], float] = random.uniform,
) -> Changes:
    """The changes recording ``batch`` makes to ``snapshot`` (see the module docstring)."""
    states = {s.id: s.state for s in snapshot.steps}
    of_run: dict[str, list[Sibling]] = {}
    for s in snapshot.steps:
        of_run.setdefault(s.run_id, []).append(s)
    run_states = dict(snapshot.runs)
    open_leases = set(snapshot.held)
    finishes: list[StepFinish] = []
    moved: list[tuple[int, StepState]] = []
    runs: dict[str, RunState] = {}
    records: list[AccessRecord] = []
    settled: list[tuple[int, StepState]] = []
    for attempt in batch:
        step, result = attempt.step, attempt.result
        if step.id not in open_leases:
            continue  # the lease lapsed and another worker owns the step now; its result counts
        open_leases.discard(step.id)
        state = (
            StepState.SUPERSEDED
            if attempt.superseded
            else step_state_for(result.outcome, step.attempts, settings.max_attempts)
        )
        next_at = now
        if state is StepState.PENDING:
            delay = retry_delay(step.attempts, settings.retry_base_seconds, settings.retry_max_seconds, uniform=uniform)
            next_at = now + timedelta(seconds=delay)
        finishes.append(
            StepFinish(step.id, state, next_at, result.vendor_reference, result.detail or result.outcome.value)
        )
        states[step.id] = state
        settled.append((step.id, state))
        records.append(receipt(attempt, state, next_at, now))
        run = attempt.run  # as claimed: what a summary says of it (agent, reason, source) does not change
        if state not in FINAL or run.id not in run_states:
            continue
        steps = of_run.get(step.run_id, [])
        held = run_states[run.id] is RunState.HELD
        channel = {s.step: s for s in steps if s.channel == step.channel}
        for kind, new in unlocked(step.step, state, {k: states[s.id] for k, s in channel.items()}, held=held).items():
            states[channel[kind].id] = new
            moved.append((channel[kind].id, new))
        new_state = run_state((states[s.id] for s in steps), held=held)
        if new_state is run_states[run.id]:
            continue
        run_states[run.id] = runs[run.id] = new_state
        if new_state in FINISHED_RUNS:
            records.append(summary(replace(run, state=new_state, finished_at=now), steps, states))
    return Changes(now, finishes, moved, list(runs.items()), records, settled)


def budget(settings: DeprovisionSettings) -> Budget:
    """The pipeline's budget per step: a claim dead-letters a step it would hand out past ``max_attempts``."""
    return Budget(
        settings.max_attempts, lambda spent, snapshot, now: settle(spent_attempts(spent), snapshot, now, settings)
    )


def spent_attempts(spent: Sequence[tuple[StepRecord, RunRecord]]) -> list[Attempt]:
    """Claimed steps whose budget is spent without a result (each attempt ended with its worker: a crash, kill -9,
    out of memory), as a last attempt that asked for a retry: ``settle`` then dead-letters each with its receipt,
    unlocks what a dead step unlocks and may finish its run, exactly as a recorded death."""
    return [
        Attempt(
            step,
            run,
            StepResult(
                step.channel,
                step.step.value,
                Outcome.RETRY,
                detail=f"no result after {step.attempts} attempts: each ended with its worker (crash, kill, out of "
                "memory) before it was recorded",
            ),
        )
        for step, run in spent
    ]


def receipt(attempt: Attempt, state: StepState, next_at: datetime, now: datetime) -> AccessRecord:
    """The access-log receipt of one attempt at one channel: what, where, outcome, the vendor's reference."""
    step, run, result = attempt.step, attempt.run, attempt.result
    detail: dict[str, object] = {
        "run": run.id,
        "step": step.step.value,
        "attempt": step.attempts,
        "outcome": "superseded" if attempt.superseded else result.outcome.value,
        "state": state.value,
        "vendor_reference": result.vendor_reference,
        "idempotency_key": step.idempotency_key,
    }
    if state is StepState.PENDING:
        detail["next_attempt_at"] = next_at.isoformat()
    return AccessRecord(
        time=now,
        kind="deprovision_step",
        agent_id=run.agent_id,
        agent_name=run.user_name,
        channel=step.channel,
        actor="pipeline",
        decision=state.value,
        reason=(result.detail or result.outcome.value)[:500],
        detail=detail,
    )


def summary(
    run: RunRecord,
    steps: Iterable[Sibling],
    states: dict[int, StepState],
    *,
    actor: str = "pipeline",
    reason: str | None = None,
) -> AccessRecord:
    """The record of a finished run: every step's final state per channel; "complete" only when the run is done.
    A superseded run's record (kind ``deprovision``, decision ``superseded``) also lists what it carried out before
    it was superseded, for a person to undo, and what it did not take."""
    outcome: dict[str, dict[str, str]] = {}
    acted: list[dict[str, str]] = []
    not_taken: list[dict[str, str]] = []
    for s in steps:
        state = states.get(s.id, s.state)
        outcome.setdefault(s.channel, {})[s.step.value] = state.value
        if carried_out(s.step, state):
            acted.append({"channel": s.channel, "step": s.step.value})
        elif state is StepState.SUPERSEDED:
            not_taken.append({"channel": s.channel, "step": s.step.value})
    assert run.finished_at is not None
    detail: dict[str, object] = {"run": run.id, "source": run.source, "steps": outcome}
    if run.state is not RunState.SUPERSEDED:
        return AccessRecord(
            time=run.finished_at,
            kind="deprovision_complete" if run.state is RunState.DONE else "deprovision_attention",
            agent_id=run.agent_id,
            agent_name=run.user_name,
            actor=actor,
            decision=run.state.value,
            reason=reason or run.reason,
            detail=detail,
        )
    named = ", ".join(f"{a['channel']} {a['step']}" for a in acted) or "nothing"
    return AccessRecord(
        time=run.finished_at,
        kind="deprovision",
        agent_id=run.agent_id,
        agent_name=run.user_name,
        actor=actor,
        decision=RunState.SUPERSEDED.value,
        reason=f"{reason or f'superseded: {run.user_name} is active again'}; carried out before, for a person to "
        f"undo: {named}"[:500],
        detail=detail | {"state": run.state.value, "carried_out": acted, "not_taken": not_taken},
    )


@dataclass(frozen=True, slots=True)
class Superseded:
    """What making an agent active again does to its runs still going: their unfinished steps become superseded
    (with ``detail`` as the reason shown), the runs end superseded, and a receipt per step and a record per run say
    why (the run's record names what it had carried out)."""

    detail: str
    steps: Sequence[int]
    runs: Sequence[tuple[str, RunState]]
    records: Sequence[AccessRecord]


def supersede(
    runs: Sequence[RunRecord], steps: Sequence[Sibling], now: datetime, *, actor: str, reason: str
) -> Superseded:
    """The agent of ``runs`` (its running and held runs, and those that ended needing attention) was made active
    again: the disable those runs carry out no longer holds, so they must not revoke, hand over or delete anything
    of an active agent. They end superseded, not done: they did not end the agent's access. What they did already
    stays done (a disabled seat is enabled again by a person, never by the gateway), and each run's record lists
    it."""
    detail = f"superseded: the agent was made active again by {actor} ({reason})"
    states = {s.id: s.state for s in steps}
    cancelled: list[int] = []
    moved: list[tuple[str, RunState]] = []
    records: list[AccessRecord] = []
    for run in runs:
        mine = [s for s in steps if s.run_id == run.id]
        for s in mine:
            if s.state not in UNFINISHED:
                continue
            cancelled.append(s.id)
            states[s.id] = StepState.SUPERSEDED
            records.append(
                AccessRecord(
                    time=now,
                    kind="deprovision_step",
                    agent_id=run.agent_id,
                    agent_name=run.user_name,
                    channel=s.channel,
                    actor=actor,
                    decision=StepState.SUPERSEDED.value,
                    reason=detail[:500],
                    detail={
                        "run": run.id,
                        "step": s.step.value,
                        "outcome": "superseded",
                        "state": StepState.SUPERSEDED.value,
                        "was": s.state.value,
                        "idempotency_key": idempotency_key(run.id, s.channel, s.step),
                    },
                )
            )
        moved.append((run.id, RunState.SUPERSEDED))
        ended = replace(run, state=RunState.SUPERSEDED, finished_at=now)
        records.append(summary(ended, mine, states, actor=actor, reason=detail))
    return Superseded(detail, cancelled, moved, records)
