"""Steps 2-4 of deprovisioning, run durably: revoke at each channel, hand tickets over, verify, remove.

Every gateway replica runs one ``PipelineWorker``. It claims due steps from the database with a lease, runs each
through the channel's connector (at most ``concurrency`` at once, each bounded in time), and commits the results
in batches: the step's new state, the access-log receipt of the attempt, the channel's next step and the run's
state, in one transaction, so a receipt exists exactly when the state it reports does.

Failure handling (issue 4): a RETRY outcome (timeout, refused connection, 5xx, 429) is tried again after
exponential backoff with full jitter until ``max_attempts`` is spent, then dead-lettered (a receipt, an error
log line and ``channelgate_deprovision_dead_letters_total``); a crash leaves claimed steps leased, and another
worker (or this one after a restart) takes them over when the lease lapses. Every attempt carries the step's
idempotency key, so a step redone after a crash between the vendor's answer and our commit has one effect.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncConnection

from connectors.base import AgentRef, Connector, Outcome, StepContext, StepResult
from gateway.audit.writer import AuditLog
from gateway.deprovision.backoff import retry_delay
from gateway.deprovision.plan import FINAL, RunState, StepKind, StepState, run_state, step_state_for, unlocked
from gateway.errors import ChannelgateError
from gateway.metrics import Metrics
from gateway.settings import DeprovisionSettings
from gateway.storage.access_log import AccessRecord
from gateway.storage.agents import Agent, AgentRepository
from gateway.storage.database import Database
from gateway.storage.pipeline import PipelineRepository, RunRecord, StepFinish, StepRecord
from gateway.timeutil import utcnow

log = logging.getLogger("channelgate.deprovision")

#: Results committed per transaction at most (a bulk offboarding finishes thousands of steps a second).
COMMIT_BATCH = 200
#: After a failed commit, wait this long before trying the same batch again (nothing is dropped).
COMMIT_RETRY_SECONDS = 1.0
#: Runs whose agent and successor are remembered (a run's steps all act for the same people).
PEOPLE_CACHE = 4096


@dataclass(frozen=True, slots=True)
class Attempt:
    step: StepRecord
    run: RunRecord
    result: StepResult


class PipelineWorker:
    def __init__(
        self,
        settings: DeprovisionSettings,
        database: Database,
        runs: PipelineRepository,
        agents: AgentRepository,
        connectors: Mapping[str, Connector],
        audit: AuditLog,
        metrics: Metrics,
        owner: str,
        *,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self._settings = settings
        self._database = database
        self._runs = runs
        self._agents = agents
        self._connectors = connectors
        self._audit = audit
        self._metrics = metrics
        self.owner = owner
        self._clock = clock
        self._slots = asyncio.Semaphore(settings.concurrency)
        self._in_flight = 0
        self._wakeup = asyncio.Event()
        self._results: asyncio.Queue[Attempt] = asyncio.Queue()
        self._tasks: set[asyncio.Task[None]] = set()
        # run id → (agent, successor): read once per run, not once per step. A successor chosen at the first
        # hand-over of a run stays that run's successor, so every channel's tickets go to the same person.
        self._people: OrderedDict[str, tuple[AgentRef, AgentRef | None]] = OrderedDict()

    def wake(self) -> None:
        """A run was queued here: look for due steps now rather than at the next poll."""
        self._wakeup.set()

    # -- the loop ---------------------------------------------------------------------------------------------

    async def run_forever(self) -> None:
        committer = asyncio.create_task(self._commit_forever(), name="channelgate-pipeline-commits")
        try:
            while True:
                claimed = await self._claim_some()
                if not claimed:
                    await self._sleep(self._settings.poll_seconds)
        finally:
            committer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await committer
            for task in list(self._tasks):
                task.cancel()

    async def drain(self, within_seconds: float) -> bool:
        """Run until no step is due or running (for ``channelgate deprovision work`` and tests); True when idle.

        Steps waiting for a later retry are not waited for: ``within_seconds`` bounds the whole call."""
        committer = asyncio.create_task(self._commit_forever())
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within_seconds
        try:
            while loop.time() < deadline:
                claimed = await self._claim_some()
                if not claimed and self._in_flight == 0 and self._results.empty():
                    due = await self._runs.next_due()
                    if due is None or due > self._clock():
                        return True
                if not claimed:
                    await self._sleep(min(0.05, max(0.0, deadline - loop.time())))
            return False
        finally:
            while self._in_flight or not self._results.empty():
                if loop.time() > deadline + self._settings.lease_seconds:
                    break
                await asyncio.sleep(0.01)
            committer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await committer

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wakeup.wait(), seconds)
        self._wakeup.clear()

    async def _claim_some(self) -> int:
        free = self._settings.concurrency - self._in_flight
        if free <= 0:
            await self._sleep(0.01)
            return 0
        now = self._clock()
        try:
            claimed = await self._runs.claim(
                self.owner, now, now + timedelta(seconds=self._settings.lease_seconds), free
            )
        except ChannelgateError as exc:
            log.warning("deprovisioning worker cannot reach the database: %s", exc.message)
            await self._sleep(self._settings.poll_seconds)
            return 0
        for step, run in claimed:
            self._in_flight += 1
            task = asyncio.create_task(self._attempt(step, run), name=f"channelgate-step-{step.id}")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return len(claimed)

    # -- one attempt ------------------------------------------------------------------------------------------

    async def _attempt(self, step: StepRecord, run: RunRecord) -> None:
        try:
            async with self._slots:
                result = await self._run_step(step, run)
            await self._results.put(Attempt(step, run, result))
        finally:
            self._in_flight -= 1

    async def _run_step(self, step: StepRecord, run: RunRecord) -> StepResult:
        connector = self._connectors.get(step.channel)
        if connector is None:
            return StepResult(
                step.channel,
                step.step.value,
                Outcome.FAILED,
                detail=f"channel {step.channel!r} is no longer configured; configure it again or close the step",
            )
        ctx = StepContext(step.idempotency_key, step.attempts)
        # Well inside the lease, so no other worker takes the step over while this attempt may still act.
        limit = self._settings.lease_seconds / 2
        try:
            agent, successor = await self._people_of(run)
            async with asyncio.timeout(limit):
                if step.step is StepKind.REVOKE:
                    return await connector.revoke(agent, ctx)
                if step.step is StepKind.VERIFY:
                    return await connector.verify_no_access(agent, ctx)
                if step.step is StepKind.REMOVE:
                    return await connector.remove(agent, ctx)
                return await connector.hand_over(agent, successor, ctx)
        except TimeoutError:
            detail = f"no answer within {limit:g} s; will retry"
        except ChannelgateError as exc:
            detail = exc.message
        except Exception:
            # A connector bug must not stop the pipeline or lose the step: it is retried and, if it keeps
            # failing, dead-lettered where a person sees it.
            log.exception("connector %s raised during %s of run %s", step.channel, step.step.value, run.id)
            detail = "the connector raised an unexpected error (see the gateway log); will retry"
        return StepResult(step.channel, step.step.value, Outcome.RETRY, detail=detail)

    async def _people_of(self, run: RunRecord) -> tuple[AgentRef, AgentRef | None]:
        people = self._people.get(run.id)
        if people is None:
            people = (await self._agent_ref(run), await self._successor(run))
            self._people[run.id] = people
            if len(self._people) > PEOPLE_CACHE:
                self._people.popitem(last=False)
        return people

    async def _agent_ref(self, run: RunRecord) -> AgentRef:
        agent = await self._agents.get_any(run.agent_id)
        if agent is None:
            return AgentRef(agent_id=run.agent_id, user_name=run.user_name)
        manager = await self._manager(agent)
        return AgentRef(
            agent_id=agent.id,
            user_name=agent.user_name,
            email=agent.email,
            manager_user_name=manager.user_name if manager is not None else None,
        )

    async def _manager(self, agent: Agent) -> Agent | None:
        if not agent.manager_id:
            return None
        return await self._agents.get(agent.manager_id)

    async def _successor(self, run: RunRecord) -> AgentRef | None:
        """Who takes the agent's open work: the successor the trigger named, else the SCIM enterprise manager; a
        successor who is gone or disabled is no successor (the channel's fallback queue takes the work)."""
        if run.successor:
            chosen = await self._agents.find_by_user_name(run.successor)
        else:
            agent = await self._agents.get_any(run.agent_id)
            chosen = await self._manager(agent) if agent is not None else None
        if chosen is None or not chosen.active or chosen.id == run.agent_id:
            return None
        return AgentRef(agent_id=chosen.id, user_name=chosen.user_name, email=chosen.email)

    # -- committing results -----------------------------------------------------------------------------------

    async def _commit_forever(self) -> None:
        while True:
            batch = [await self._results.get()]
            while len(batch) < COMMIT_BATCH and not self._results.empty():
                batch.append(self._results.get_nowait())
            while True:
                try:
                    await self._commit(batch)
                    break
                except ChannelgateError as exc:
                    # Kept and retried: the vendor already acted, and its receipt must not be lost. If this
                    # process dies meanwhile, the leases lapse and the steps are redone under the same keys.
                    log.error("could not record %d deprovisioning results, retrying: %s", len(batch), exc.message)
                    await asyncio.sleep(COMMIT_RETRY_SECONDS)

    async def _commit(self, batch: list[Attempt]) -> None:
        now = self._clock()
        finished: list[tuple[Attempt, StepState]] = []
        async with self._database.begin() as conn:
            for attempt in batch:
                step, result = attempt.step, attempt.result
                state = step_state_for(result.outcome, step.attempts, self._settings.max_attempts)
                next_at = now
                if state is StepState.PENDING:
                    delay = retry_delay(
                        step.attempts, self._settings.retry_base_seconds, self._settings.retry_max_seconds
                    )
                    next_at = now + timedelta(seconds=delay)
                detail = result.detail or result.outcome.value
                record = await self._runs.finish(
                    self.owner, StepFinish(step.id, state, next_at, result.vendor_reference, detail), now, conn=conn
                )
                if record is None:
                    continue  # the lease lapsed and another worker owns the step now; its result counts
                await self._audit.write(_receipt(attempt, state, next_at, now), conn=conn)
                if state in FINAL:
                    await self._advance(attempt.run, step, state, now, conn)
                finished.append((attempt, state))
        for attempt, state in finished:
            self._metrics.pipeline_steps.labels(attempt.step.channel, attempt.step.step.value, state.value).inc()
            if state is StepState.DEAD:
                self._metrics.dead_letters.labels(attempt.step.channel, attempt.step.step.value).inc()
                log.error(
                    "DEAD LETTER: %s of %s at channel %s gave up after %d attempts (run %s): %s",
                    attempt.step.step.value,
                    attempt.run.user_name,
                    attempt.step.channel,
                    attempt.step.attempts,
                    attempt.run.id,
                    attempt.result.detail,
                )

    async def _advance(
        self, run: RunRecord, step: StepRecord, state: StepState, now: datetime, conn: AsyncConnection
    ) -> None:
        steps = await self._runs.steps_of([run.id], conn=conn)
        current = await self._runs.get_run(run.id, conn=conn)
        held = current is not None and current.state is RunState.HELD
        siblings = {s.step: s.state for s in steps if s.channel == step.channel}
        siblings[step.step] = state
        moves = unlocked(step.step, state, siblings, held=held)
        if moves:
            await self._runs.set_step_states(run.id, step.channel, moves, now, conn=conn)
        states = [moves.get(s.step, s.state) if s.channel == step.channel else s.state for s in steps]
        new_state = run_state(states, held=held)
        changed = await self._runs.set_run_state(run.id, new_state, now, conn=conn)
        if changed is not None and new_state in (RunState.DONE, RunState.ATTENTION):
            await self._audit.write(_summary(changed, steps, step, state, moves), conn=conn)


def _receipt(attempt: Attempt, state: StepState, next_at: datetime, now: datetime) -> AccessRecord:
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


def _summary(
    run: RunRecord,
    steps: list[StepRecord],
    last: StepRecord,
    last_state: StepState,
    moves: Mapping[StepKind, StepState],
) -> AccessRecord:
    outcome: dict[str, dict[str, str]] = {}
    for s in steps:
        state = s.state
        if s.channel == last.channel:
            state = last_state if s.step is last.step else moves.get(s.step, s.state)
        outcome.setdefault(s.channel, {})[s.step.value] = state.value
    return AccessRecord(
        time=run.finished_at or utcnow(),
        kind="deprovision_complete" if run.state is RunState.DONE else "deprovision_attention",
        agent_id=run.agent_id,
        agent_name=run.user_name,
        actor="pipeline",
        decision=run.state.value,
        reason=run.reason,
        detail={"run": run.id, "source": run.source, "steps": outcome},
    )
