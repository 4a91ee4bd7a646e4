"""The offboarding evidence pack of one agent (``channelgate report agent``, the console's agent report).

For the exit interview and the final check (the seed's offboarding rules; PIPA safety-measure standard art. 5 and
8): what the agent accessed per channel, which tickets were handed over to whom, every deprovisioning receipt, and
the final zero-access check (``gateway.reports.zero_access``). The access log is read in one snapshot, so the
counts, the receipts and the verdict describe the same moment.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from gateway.deprovision.plan import RunState, StepKind, carried_out
from gateway.errors import ChannelgateError, NotFound
from gateway.reports.handover import HandOver, read_hand_over
from gateway.reports.zero_access import (
    SessionsSeen,
    Verdict,
    admitted_at,
    after_disable_check,
    disabled_check,
    pipeline_check,
    sessions_check,
    split_at_disable,
    verdict,
)
from gateway.services import Services
from gateway.storage import access_reports as q
from gateway.storage.access_log import AccessRecord
from gateway.storage.agents import Agent, user_name_key
from gateway.storage.database import read_transaction
from gateway.storage.pipeline import RunRecord, StepRecord
from gateway.timeutil import utcnow

#: Data subjects listed at most (by request count); the per-channel distinct count is always complete.
SUBJECTS_SHOWN = 2000
#: Access after the disable listed at most; the count is always complete.
AFTER_DISABLE_SHOWN = 200


@dataclass(frozen=True, slots=True)
class AgentReport:
    generated_at: datetime
    agent: Agent
    disabled_at: datetime | None
    channels: tuple[q.ChannelActivity, ...]
    subjects: tuple[q.SubjectCount, ...]
    #: True when more subjects exist than ``subjects`` lists.
    subjects_truncated: bool
    runs: tuple[RunRecord, ...]
    steps: tuple[StepRecord, ...]
    hand_overs: tuple[HandOver, ...]
    receipts: tuple[AccessRecord, ...]
    verdict: Verdict

    def as_dict(self) -> dict[str, object]:
        agent = self.agent
        return {
            "report": "agent",
            "generated_at": self.generated_at.isoformat(),
            "agent": {
                "id": agent.id,
                "user_name": agent.user_name,
                "display_name": agent.display_name,
                "email": agent.email,
                "source": agent.source,
                "active": agent.active,
                "deleted": agent.deleted,
                "disabled_reason": agent.disabled_reason,
                "disabled_at": _iso(self.disabled_at),
                "created_at": agent.created_at.isoformat(),
            },
            "activity": [
                {
                    "channel": a.channel,
                    "first_access": a.first.isoformat(),
                    "last_access": a.last.isoformat(),
                    "requests": a.requests,
                    "downloads": a.downloads,
                    "denied": a.denied,
                    "subjects": a.subjects,
                }
                for a in self.channels
            ],
            "subjects": [
                {"channel": s.channel, "subject": s.subject, "requests": s.requests, "downloads": s.downloads}
                for s in self.subjects
            ],
            "subjects_truncated": self.subjects_truncated,
            "hand_overs": [h.as_dict() for h in self.hand_overs],
            "runs": [run_dict(run, [s for s in self.steps if s.run_id == run.id]) for run in self.runs],
            "receipts": [receipt_dict(r) for r in self.receipts],
            "zero_access": {
                "verdict": self.verdict.statement,
                "ended": self.verdict.ended,
                "reasons": self.verdict.reasons,
                "checked_at": self.verdict.checked_at.isoformat(),
                "checks": [c.as_dict() for c in self.verdict.checks],
                "access_after_disable_total": self.verdict.access_after_disable_total,
                "access_after_disable": [receipt_dict(r) for r in self.verdict.access_after_disable],
                "in_flight_at_disable": [receipt_dict(r) for r in self.verdict.in_flight_at_disable],
            },
        }


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.isoformat()


def run_dict(run: RunRecord, steps: Sequence[StepRecord]) -> dict[str, object]:
    """A run with its steps; a superseded one also with the steps it carried out before it was (``carried_out``:
    what a person may have to undo, such as a seat left disabled)."""
    shown = run.as_dict() | {"steps": [step_dict(s) for s in steps]}
    if run.state is RunState.SUPERSEDED:
        shown["carried_out"] = [step_dict(s) for s in steps if carried_out(s.step, s.state)]
    return shown


def step_dict(step: StepRecord) -> dict[str, object]:
    return step.as_dict() | {"idempotency_key": step.idempotency_key}


def receipt_dict(record: AccessRecord) -> dict[str, object]:
    """An access-log record as the report shows it: what, where, outcome, and its place in the chain."""
    detail = record.detail or {}
    return {
        "seq": record.seq,
        "time": record.time.isoformat(),
        "kind": record.kind,
        "channel": record.channel,
        "step": detail.get("step"),
        "attempt": detail.get("attempt"),
        "run": detail.get("run"),
        "decision": record.decision,
        "reason": record.reason,
        "vendor_reference": detail.get("vendor_reference"),
        "actor": record.actor,
        "path": record.path,
        "source_ip": record.source_ip,
        "duration_ms": record.duration_ms,
        "admitted_at": admitted_at(record).isoformat(),
        "chain_pos": record.chain_pos,
        "hash": record.hash,
    }


async def find_agent(services: Services, identifier: str) -> Agent:
    """The agent named by id or userName, live first, else deleted (an offboarded agent may be deleted by SCIM)."""
    agent = await services.agents.find(identifier) or await services.agents.get_any(identifier)
    if agent is None:
        async with read_transaction(services.database.engine) as conn:
            deleted = await q.deleted_agent_id(conn, user_name_key(identifier))
        agent = await services.agents.get_any(deleted) if deleted is not None else None
    if agent is None:
        raise NotFound(f"No agent, live or deleted, has the id or userName {identifier!r}.")
    return agent


async def _sessions(services: Services, agent_id: str) -> SessionsSeen:
    store = services.settings.sessions.store
    # The memory store lives in the serving gateway's process: another process (the CLI) sees an empty store of
    # its own, and "no session" from it would be a claim without evidence.
    if store == "memory" and services.upstream is None:
        return SessionsSeen(store, unseen="it is in the gateway process's memory; run the report from the console")
    try:
        return SessionsSeen(store, len(await services.sessions.sessions_of(agent_id, services.clock())))
    except ChannelgateError as exc:
        return SessionsSeen(store, unseen=exc.message)


async def build_agent_report(services: Services, agent: str) -> AgentReport:
    """The evidence pack of ``agent`` (id or userName); :class:`NotFound` when no agent, live or deleted, has it."""
    found = await find_agent(services, agent)
    checked_at = utcnow()
    async with read_transaction(services.database.engine) as conn:
        runs = tuple(await services.pipeline.runs_of_agent(found.id, conn=conn))
        channels = await q.channel_activity(conn, found.id)
        subjects = await q.subjects_touched(conn, found.id, SUBJECTS_SHOWN + 1)
        receipts = await q.receipts(conn, found.id)
        steps = tuple(await services.pipeline.steps_of([r.id for r in runs], conn=conn)) if runs else ()
        # The first disable of the current spell, not the latest: a repeated deprovisioning writes another one.
        disable = await q.spell_disable(conn, found.id)
        disabled_at = disable.time if disable is not None and not (found.active and not found.deleted) else None
        total, ended_after = (
            (0, []) if disabled_at is None else await q.allowed_after(conn, found.id, disabled_at, AFTER_DISABLE_SHOWN)
        )
    after: list[AccessRecord] = list(ended_after)
    in_flight: list[AccessRecord] = []
    if disabled_at is not None:
        kills = [r.time for r in receipts if r.kind == "sessions_revoked" and r.time >= disabled_at]
        after, in_flight = split_at_disable(disabled_at, min(kills) if kills else None, ended_after)
    seen = await _sessions(services, found.id)
    checks = [
        disabled_check(found.active, found.deleted, disabled_at, disable),
        sessions_check(seen),
        pipeline_check(runs, steps),
        after_disable_check(disabled_at, total, after, in_flight),
    ]
    by_run = {r.id: r for r in runs}
    hand_overs = tuple(read_hand_over(by_run[s.run_id], s) for s in steps if s.step is StepKind.HAND_OVER)
    return AgentReport(
        generated_at=checked_at,
        agent=found,
        disabled_at=disabled_at,
        channels=tuple(channels),
        subjects=tuple(subjects[:SUBJECTS_SHOWN]),
        subjects_truncated=len(subjects) > SUBJECTS_SHOWN,
        runs=runs,
        steps=steps,
        hand_overs=hand_overs,
        receipts=tuple(receipts),
        verdict=verdict(checks, checked_at, after, total - len(in_flight), in_flight),
    )
