"""Queueing a deprovisioning: the run and its planned steps, inside the trigger's transaction (the outbox).

Every trigger (CLI, admin API, SCIM, RISC; LDAP later) reaches this through ``SessionKiller.deprovision``, so
there is one pipeline. The plan comes from each configured connector's capabilities
(``gateway.deprovision.plan``); the mass-deletion guard decides, in the same transaction, whether the run's
irreversible steps wait for an admin.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping
from dataclasses import replace
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

log = logging.getLogger("channelgate.deprovision")


class MassDeletionGuard:
    """Trips when the deprovisionings in the window exceed ``max_share`` of the workforce (and ``min_agents``)."""

    def __init__(self, settings: MassDeletionGuardSettings, agents: AgentRepository, runs: PipelineRepository) -> None:
        self._settings = settings
        self._agents = agents
        self._runs = runs

    async def tripped(self, now: datetime, *, conn: AsyncConnection) -> tuple[bool, int, int]:
        """(tripped, deprovisionings in the window including this one, workforce)."""
        if not self._settings.enabled:
            return False, 0, 0
        since = now - timedelta(seconds=self._settings.window_seconds)
        recent = await self._runs.runs_started_since(since, conn=conn) + 1
        workforce = await self._agents.count_workforce(since, conn=conn)
        limit = max(self._settings.min_agents, self._settings.max_share * workforce)
        return recent > limit, recent, workforce


class RunPlanner:
    def __init__(
        self,
        connectors: Mapping[str, Connector],
        runs: PipelineRepository,
        guard: MassDeletionGuard,
        audit: AuditLog,
        metrics: Metrics,
    ) -> None:
        self._connectors = connectors
        self._runs = runs
        self._guard = guard
        self._audit = audit
        self._metrics = metrics

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
        held, recent, workforce = await self._guard.tripped(now, conn=conn)
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
        steps: list[PlannedStep] = []
        for channel, connector in sorted(self._connectors.items()):
            planned = plan_channel(connector.capabilities)
            steps.extend(PlannedStep(channel, kind, initial_state(kind, planned, held=held)) for kind in planned)
        if not steps:
            run = replace(run, state=RunState.DONE, finished_at=now)
        await self._runs.create_run(run, steps, conn=conn)
        if held:
            self._metrics.guard_holds.inc()
            log.warning(
                "mass-deletion guard: %d deprovisionings within the window (workforce %d); run %s for %s holds its "
                "irreversible steps until an admin approves (channelgate deprovision approve)",
                recent,
                workforce,
                run.id,
                agent.user_name,
            )
            await self._audit.write(
                AccessRecord(
                    time=now,
                    kind="deprovision_held",
                    agent_id=agent.id,
                    agent_name=agent.user_name,
                    actor=actor,
                    reason="mass-deletion guard: irreversible steps wait for approval",
                    decision="held",
                    detail={"run": run.id, "recent": recent, "workforce": workforce},
                ),
                conn=conn,
            )
        return run
