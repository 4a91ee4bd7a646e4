"""The pipeline's records as the storage hands them out, and what a worker's batch of results changes.

Shared by the SQLAlchemy repository (``gateway.storage.pipeline``, SQLite and PostgreSQL) and the direct SQLite
path (``gateway.storage.sqlite_pipeline``): both read into these and write what :class:`Changes` says.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import NamedTuple

from sqlalchemy import RowMapping

from gateway.deprovision.plan import RunState, StepKind, StepState
from gateway.storage._time import from_db
from gateway.storage.access_log import AccessRecord
from gateway.storage.limits import fit_text


@dataclass(frozen=True, slots=True)
class RunRecord:
    id: str
    agent_id: str
    user_name: str
    source: str
    actor: str
    reason: str
    successor: str | None
    state: RunState
    created_at: datetime
    finished_at: datetime | None
    approved_by: str | None

    @property
    def held(self) -> bool:
        return self.state is RunState.HELD

    def as_dict(self) -> dict[str, object]:
        return {
            "run_id": self.id,
            "agent_id": self.agent_id,
            "user_name": self.user_name,
            "source": self.source,
            "actor": self.actor,
            "reason": self.reason,
            "successor": self.successor,
            "state": self.state.value,
            "created_at": self.created_at.isoformat(),
            "finished_at": self.finished_at.isoformat() if self.finished_at else None,
            "approved_by": self.approved_by,
        }


@dataclass(frozen=True, slots=True)
class StepRecord:
    id: int
    run_id: str
    channel: str
    step: StepKind
    state: StepState
    attempts: int
    next_attempt_at: datetime
    idempotency_key: str
    vendor_reference: str | None
    detail: str | None
    updated_at: datetime

    def as_dict(self) -> dict[str, object]:
        return {
            "channel": self.channel,
            "step": self.step.value,
            "state": self.state.value,
            "attempts": self.attempts,
            "next_attempt_at": self.next_attempt_at.isoformat() if self.state is StepState.PENDING else None,
            "vendor_reference": self.vendor_reference,
            "detail": self.detail,
            "updated_at": self.updated_at.isoformat(),
        }


@dataclass(frozen=True, slots=True)
class PlannedStep:
    channel: str
    step: StepKind
    state: StepState


#: ``deprovision_steps.vendor_reference``'s length, and the part of a result's detail a step keeps.
VENDOR_REFERENCE_LENGTH = 256
STEP_DETAIL_LENGTH = 2000


@dataclass(frozen=True, slots=True)
class StepFinish:
    """What a worker learned from one attempt; written by :meth:`PipelineRepository.finish` (or ``record``). The
    console's reference and the detail come from the console: fitted here to what the database holds
    (gateway/storage/limits.py), as a refused write would be refused again at every retry of the step."""

    step_id: int
    state: StepState
    next_attempt_at: datetime
    vendor_reference: str | None
    detail: str

    def __post_init__(self) -> None:
        if self.vendor_reference is not None:
            object.__setattr__(self, "vendor_reference", fit_text(self.vendor_reference, VENDOR_REFERENCE_LENGTH))
        object.__setattr__(self, "detail", fit_text(self.detail, STEP_DETAIL_LENGTH))


def run_from_row(row: RowMapping) -> RunRecord:
    return RunRecord(
        id=row["id"],
        agent_id=row["agent_id"],
        user_name=row["user_name"],
        source=row["source"],
        actor=row["actor"],
        reason=row["reason"],
        successor=row["successor"],
        state=RunState(row["state"]),
        created_at=from_db(row["created_at"]),
        finished_at=from_db(row["finished_at"]) if row["finished_at"] is not None else None,
        approved_by=row["approved_by"],
    )


def step_from_row(row: RowMapping) -> StepRecord:
    return StepRecord(
        id=row["id"],
        run_id=row["run_id"],
        channel=row["channel"],
        step=StepKind(row["step"]),
        state=StepState(row["state"]),
        attempts=row["attempts"],
        next_attempt_at=from_db(row["next_attempt_at"]),
        idempotency_key=row["idempotency_key"],
        vendor_reference=row["vendor_reference"],
        detail=row["detail"],
        updated_at=from_db(row["updated_at"]),
    )


def idempotency_key(run_id: str, channel: str, step: StepKind) -> str:
    """Stable across every attempt of one step (and so across crashes and replicas): the vendor dedupes on it."""
    return f"channelgate:{run_id}:{channel}:{step.value}"


@dataclass(frozen=True, slots=True)
class Person:
    """An agent as the pipeline needs it: who acts, who takes over."""

    id: str
    user_name: str
    email: str | None
    active: bool
    deleted: bool


@dataclass(frozen=True, slots=True)
class RunPeople:
    """The people of one run, read together: its agent (deleted or not), that agent's live manager, and the live
    agent whose userName the trigger named as successor."""

    agent: Person | None
    manager: Person | None
    named_successor: Person | None


class Sibling(NamedTuple):
    """What recording a batch needs of each step of its runs: which step it is and its state (a tuple: a batch
    reads every step of its runs, and a tuple is cheaper to make than a frozen dataclass)."""

    id: int
    run_id: str
    channel: str
    step: StepKind
    state: StepState


#: Text → member without ``Enum.__call__`` (a recorded batch converts every step of its runs).
STEP_KINDS = {kind.value: kind for kind in StepKind}
STEP_STATES = {state.value: state for state in StepState}
RUN_STATES = {state.value: state for state in RunState}


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The current state of a batch's runs inside the transaction that records the batch: every step of those
    runs, each run's state, and which of the batch's steps this worker still holds (its lease, still pending)."""

    steps: Sequence[Sibling]
    runs: Mapping[str, RunState]
    held: frozenset[int]


@dataclass(frozen=True, slots=True)
class Changes:
    """What recording a batch writes, in one transaction: each attempt's result (fenced by its lease), the waiting
    steps it unlocked, the runs whose state moved, and the access-log records (a receipt per attempt, a summary
    per finished run), in order."""

    now: datetime
    finishes: Sequence[StepFinish] = ()
    unlocked: Sequence[tuple[int, StepState]] = ()
    runs: Sequence[tuple[str, RunState]] = ()
    records: Sequence[AccessRecord] = ()
    #: Not written: the attempts that counted and the state each step went to (metrics, dead-letter alerts).
    settled: Sequence[tuple[int, StepState]] = field(default=())


@dataclass(frozen=True, slots=True)
class Budget:
    """What a claim does with a due step whose lease lapsed with its budget spent (every attempt ended with its
    worker, before a result was recorded): instead of handing it out again, it records the step's death in the
    claim's own transaction. ``bury`` decides, from those steps, the snapshot of their runs read in that
    transaction and the claim's time, what that changes (``gateway.deprovision.results.budget``), as
    ``record``'s ``decide`` does."""

    max_attempts: int
    bury: Callable[[Sequence[tuple[StepRecord, RunRecord]], Snapshot, datetime], Changes]
