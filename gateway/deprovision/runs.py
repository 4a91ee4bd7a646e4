"""Queueing a deprovisioning: the run and its planned steps, inside the trigger's transaction (the outbox).

Every trigger (CLI, admin API, SCIM, RISC; LDAP later) reaches this through ``SessionKiller.deprovision``, so
there is one pipeline. The plan comes from each configured connector's capabilities
(``gateway.deprovision.plan``); the mass-deletion guard decides, in the same transaction, whether the run's
irreversible steps wait for an admin.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncConnection

from connectors.base import Connector
from gateway.audit.writer import AuditLog
from gateway.deprovision.plan import RunState, initial_state, plan_channel
from gateway.metrics import Metrics
from gateway.settings import MassDeletionGuardSettings
from gateway.storage.access_log import AccessRecord
from gateway.storage.agents import Agent, AgentRepository
from gateway.storage.pipeline import PipelineRepository, PlannedStep, RunRecord
from gateway.storage.sqlite_outbox import Outbox

log = logging.getLogger("channelgate.deprovision")


def joined_run(previous: Sequence[RunRecord], *, was_active: bool) -> RunRecord | None:
    """The run a trigger joins instead of starting one (IdPs repeat their disable calls): the agent's run that is
    still going, or, for an agent that was already disabled and has been through the pipeline, its latest run,
    unless that run was superseded (it did not end the agent's access: a new run does). ``previous`` is newest
    first."""
    going = [r for r in previous if r.state in (RunState.RUNNING, RunState.HELD)]
    if going:
        return going[0]
    if previous and not was_active and previous[0].state is not RunState.SUPERSEDED:
        return previous[0]
    return None


@dataclass(frozen=True, slots=True)
class Hold:
    """The mass-deletion guard tripped: deprovisionings in the window (this one included), and the workforce."""

    recent: int
    workforce: int


class MassDeletionGuard:
    """Trips when the deprovisionings in the window exceed ``max_share`` of the workforce (and ``min_agents``)."""

    def __init__(self, settings: MassDeletionGuardSettings, agents: AgentRepository, runs: PipelineRepository) -> None:
        self._settings = settings
        self._agents = agents
        self._runs = runs

    def _decide(self, recent: int, workforce: int) -> Hold | None:
        limit = max(self._settings.min_agents, self._settings.max_share * workforce)
        return Hold(recent, workforce) if recent > limit else None

    def _since(self, now: datetime) -> datetime:
        return now - timedelta(seconds=self._settings.window_seconds)

    async def tripped(self, now: datetime, *, conn: AsyncConnection) -> Hold | None:
        """A hold when this deprovisioning trips the guard, counted in the trigger's transaction ``conn``."""
        if not self._settings.enabled:
            return None
        since = self._since(now)
        recent = await self._runs.runs_started_since(since, conn=conn) + 1
        return self._decide(recent, await self._agents.count_workforce(since, conn=conn))

    def tripped_in(self, outbox: Outbox, now: datetime) -> Hold | None:
        """:meth:`tripped`, counted in the trigger's direct SQLite transaction."""
        if not self._settings.enabled:
            return None
        since = self._since(now)
        return self._decide(outbox.runs_started_since(since) + 1, outbox.count_workforce(since))


class RunPlanner:
    def __init__(
        self,
        connectors: Mapping[str, Connector],
        runs: PipelineRepository,
        guard: MassDeletionGuard,
        audit: AuditLog,
        metrics: Metrics,
    ) -> None:
        self._runs = runs
        self._guard = guard
        self._audit = audit
        self._metrics = metrics
        # The steps every run plans, from each configured connector's capabilities (``gateway.deprovision.plan``),
        # with and without the guard's hold: the connectors and their capabilities do not change while running.
        self._steps = {held: _plan_steps(connectors, held=held) for held in (False, True)}

    def _plan(
        self, agent: Agent, *, source: str, actor: str, reason: str, successor: str | None, now: datetime, held: bool
    ) -> tuple[RunRecord, list[PlannedStep]]:
        """The run and its steps."""
        run = RunRecord(
            id=str(uuid.uuid4()),
            agent_id=agent.id,
            user_name=agent.user_name,
            source=source,
            actor=actor,
            reason=reason,
            successor=successor,
            state=RunState.HELD if held else RunState.RUNNING,
            created_at=now,
            finished_at=None,
            approved_by=None,
        )
        steps = self._steps[held]
        if not steps:
            run = replace(run, state=RunState.DONE, finished_at=now)
        return run, steps

    async def enqueue(
        self,
        agent: Agent,
        *,
        source: str,
        actor: str,
        reason: str,
        successor: str | None,
        now: datetime,
        conn: AsyncConnection,
    ) -> RunRecord:
        """Insert the run and its steps in ``conn``'s transaction; the caller commits them with the disable."""
        hold = await self._guard.tripped(now, conn=conn)
        run, steps = self._plan(
            agent, source=source, actor=actor, reason=reason, successor=successor, now=now, held=hold is not None
        )
        await self._runs.create_run(run, steps, conn=conn)
        if hold is not None:
            self.announce(run, hold)
            await self._audit.write(_held_record(run, actor, hold), conn=conn)
        return run

    def enqueue_in(
        self,
        outbox: Outbox,
        agent: Agent,
        *,
        source: str,
        actor: str,
        reason: str,
        successor: str | None,
        now: datetime,
    ) -> tuple[RunRecord, Hold | None]:
        """:meth:`enqueue` in the trigger's direct SQLite transaction (run in the database writer's thread); the
        caller announces a hold once the transaction committed."""
        hold = self._guard.tripped_in(outbox, now)
        run, steps = self._plan(
            agent, source=source, actor=actor, reason=reason, successor=successor, now=now, held=hold is not None
        )
        outbox.create_run(run, steps)
        if hold is not None:
            outbox.append_log([_held_record(run, actor, hold)])
        return run, hold

    def announce(self, run: RunRecord, hold: Hold) -> None:
        """The guard held a run's irreversible steps: a metric and a warning an operator's alerting sees."""
        self._metrics.guard_holds.inc()
        log.warning(
            "mass-deletion guard: %d deprovisionings within the window (workforce %d); run %s for %s holds its "
            "irreversible steps until an admin approves (channelgate deprovision approve)",
            hold.recent,
            hold.workforce,
            run.id,
            run.user_name,
        )


def _plan_steps(connectors: Mapping[str, Connector], *, held: bool) -> list[PlannedStep]:
    steps: list[PlannedStep] = []
    for channel, connector in sorted(connectors.items()):
        planned = plan_channel(connector.capabilities)
        steps.extend(PlannedStep(channel, kind, initial_state(kind, planned, held=held)) for kind in planned)
    return steps


def _held_record(run: RunRecord, actor: str, hold: Hold) -> AccessRecord:
    return AccessRecord(
        time=run.created_at,
        kind="deprovision_held",
        agent_id=run.agent_id,
        agent_name=run.user_name,
        actor=actor,
        reason="mass-deletion guard: irreversible steps wait for approval",
        decision="held",
        detail={"run": run.id, "recent": hold.recent, "workforce": hold.workforce},
    )
