"""What a batch of attempts does to the pipeline's state (pure): the rule the worker's commits apply.

Each attempt that still holds its lease gives its step a state (``plan.step_state_for``; a retry is due again after
exponential backoff with full jitter, ``backoff.retry_delay``) and a receipt for the access log. A final state
unlocks the channel's next step (``plan.unlocked``) and may finish the run (``plan.run_state``): done only when
every step is, with a summary record. The batch is applied in order to one snapshot read inside the transaction
that records it, so several steps of one run in one batch end exactly as if they had been recorded one by one,
and an attempt whose lease another worker took over changes nothing (its result is that worker's to record).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from connectors.base import Outcome, StepResult
from gateway.deprovision.backoff import retry_delay
from gateway.deprovision.plan import FINAL, RunState, StepState, run_state, step_state_for, unlocked
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

FINISHED = (RunState.DONE, RunState.ATTENTION)
#: The steps a run still has to take; those of a superseded run are not taken.
UNFINISHED = frozenset({StepState.WAITING, StepState.PENDING, StepState.HELD})


@dataclass(frozen=True, slots=True)
class Attempt:
    """One attempt at one step, as the worker ran it: the step and run as claimed, and the connector's answer."""

    step: StepRecord
    run: RunRecord
    result: StepResult


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
        state = step_state_for(result.outcome, step.attempts, settings.max_attempts)
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
        if new_state in FINISHED:
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
        "outcome": result.outcome.value,
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


def summary(run: RunRecord, steps: Iterable[Sibling], states: dict[int, StepState]) -> AccessRecord:
    """The record of a finished run: every step's final state per channel; "complete" only when the run is done."""
    outcome: dict[str, dict[str, str]] = {}
    for s in steps:
        outcome.setdefault(s.channel, {})[s.step.value] = states.get(s.id, s.state).value
    assert run.finished_at is not None
    return AccessRecord(
        time=run.finished_at,
        kind="deprovision_complete" if run.state is RunState.DONE else "deprovision_attention",
        agent_id=run.agent_id,
        agent_name=run.user_name,
        actor="pipeline",
        decision=run.state.value,
        reason=run.reason,
        detail={"run": run.id, "source": run.source, "steps": outcome},
    )


@dataclass(frozen=True, slots=True)
class Superseded:
    """What making an agent active again does to its runs still going: their unfinished steps become not
    applicable (with ``detail`` as the reason shown), the runs finish, and a receipt per step and a record per run
    say why."""

    detail: str
    steps: Sequence[int]
    runs: Sequence[tuple[str, RunState]]
    records: Sequence[AccessRecord]


def supersede(
    runs: Sequence[RunRecord], steps: Sequence[Sibling], now: datetime, *, actor: str, reason: str
) -> Superseded:
    """The agent of ``runs`` (its running and held runs) was made active again: the disable those runs carry out
    no longer holds, so they must not revoke, hand over or delete anything of an active agent. What they did
    already stays done (a disabled seat is enabled again by a person, never by the gateway)."""
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
            states[s.id] = StepState.NOT_APPLICABLE
            records.append(
                AccessRecord(
                    time=now,
                    kind="deprovision_step",
                    agent_id=run.agent_id,
                    agent_name=run.user_name,
                    channel=s.channel,
                    actor=actor,
                    decision=StepState.NOT_APPLICABLE.value,
                    reason=detail[:500],
                    detail={
                        "run": run.id,
                        "step": s.step.value,
                        "outcome": "superseded",
                        "state": StepState.NOT_APPLICABLE.value,
                        "was": s.state.value,
                        "idempotency_key": idempotency_key(run.id, s.channel, s.step),
                    },
                )
            )
        new_state = run_state((states[s.id] for s in mine), held=False)
        moved.append((run.id, new_state))
        outcome: dict[str, dict[str, str]] = {}
        for s in mine:
            outcome.setdefault(s.channel, {})[s.step.value] = states[s.id].value
        records.append(
            AccessRecord(
                time=now,
                kind="deprovision",
                agent_id=run.agent_id,
                agent_name=run.user_name,
                actor=actor,
                decision="superseded",
                reason=detail[:500],
                detail={"run": run.id, "source": run.source, "state": new_state.value, "steps": outcome},
            )
        )
    return Superseded(detail, cancelled, moved, records)
