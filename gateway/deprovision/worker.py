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
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from datetime import datetime, timedelta

from connectors.base import AgentRef, Connector, Outcome, StepContext, StepResult
from gateway.deprovision.people_reads import NOBODY, PeopleReads
from gateway.deprovision.plan import StepKind, StepState
from gateway.deprovision.results import Attempt, settle, spent_attempts
from gateway.errors import ChannelgateError
from gateway.metrics import Metrics
from gateway.settings import DeprovisionSettings
from gateway.storage.pipeline import Budget, Changes, PipelineRepository, RunPeople, RunRecord, Snapshot, StepRecord
from gateway.timeutil import utcnow

log = logging.getLogger("channelgate.deprovision")

#: Results committed per transaction at most (a bulk offboarding finishes thousands of steps a second).
COMMIT_BATCH = 200
#: After a failed commit, wait this long before trying the same batch again (nothing is dropped).
COMMIT_RETRY_SECONDS = 1.0
#: Runs whose agent is remembered (a run's steps all act for the same agent).
AGENT_CACHE = 4096


class PipelineWorker:
    def __init__(
        self,
        settings: DeprovisionSettings,
        runs: PipelineRepository,
        connectors: Mapping[str, Connector],
        metrics: Metrics,
        owner: str,
        *,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self._settings = settings
        self._runs = runs
        self._people = PeopleReads(runs.people_of)
        self._connectors = connectors
        self._metrics = metrics
        self.owner = owner
        self._clock = clock
        self._slots = asyncio.Semaphore(settings.concurrency)
        self._in_flight = 0
        self._wakeup = asyncio.Event()
        self._committing = False
        self._results: asyncio.Queue[Attempt] = asyncio.Queue()
        self._tasks: set[asyncio.Task[None]] = set()
        # run id → agent: read once per run, not once per step. Never the successor: who takes the tickets is
        # read at each hand-over attempt (``_hand_over``), so one disabled meanwhile is no successor.
        self._agents: OrderedDict[str, AgentRef] = OrderedDict()
        # Steps whose attempt found the run's agent active again (``_skip``): recorded as superseded.
        self._skipped: set[int] = set()

    def wake(self) -> None:
        """Work may be due here (a run was queued, a commit unlocked a step, a slot freed): look now rather than
        at the next poll."""
        self._wakeup.set()

    # -- the loop ---------------------------------------------------------------------------------------------

    async def run_forever(self) -> None:
        committer = asyncio.create_task(self._commit_forever(), name="channelgate-pipeline-commits")
        try:
            while True:
                await self._claim_or_wait(self._settings.poll_seconds)
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
                claimed = await self._claim_or_wait(min(0.05, max(0.0, deadline - loop.time())))
                if not claimed and not self._busy:
                    due = await self._runs.next_due()
                    if due is None or due > self._clock():
                        return True
            return False
        finally:
            while self._busy:
                if loop.time() > deadline + self._settings.lease_seconds:
                    break
                await asyncio.sleep(0.01)
            committer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await committer

    @property
    def _busy(self) -> bool:
        """Steps are running, or results wait to be (or are being) recorded."""
        return bool(self._in_flight or self._committing or not self._results.empty())

    async def _claim_or_wait(self, seconds: float) -> int:
        """Claim as many due steps as there are free slots; unless that filled every slot (more may be due at
        once), wait until woken (a new run, an unlocked step, a slot freed) or ``seconds`` passed. Returns how many
        were claimed."""
        self._wakeup.clear()  # before claiming: a wake-up during the claim is not lost
        free = self._settings.concurrency - self._in_flight
        claimed = await self._claim(free) if free > 0 else 0
        if free <= 0 or claimed < free:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), seconds)
        return claimed

    async def _claim(self, free: int) -> int:
        now = self._clock()
        buried: list[tuple[list[Attempt], Changes]] = []

        def bury(spent: Sequence[tuple[StepRecord, RunRecord]], snapshot: Snapshot, at: datetime) -> Changes:
            batch = spent_attempts(spent)
            buried.append((batch, settle(batch, snapshot, at, self._settings)))
            return buried[-1][1]

        try:
            claimed = await self._runs.claim(
                self.owner,
                now,
                now + timedelta(seconds=self._settings.lease_seconds),
                free,
                budget=Budget(self._settings.max_attempts, bury),
            )
        except ChannelgateError as exc:
            log.warning("deprovisioning worker cannot reach the database: %s", exc.message)
            await asyncio.sleep(self._settings.poll_seconds)
            return 0
        for batch, changes in buried:  # committed with the claim: dead letters, as recorded deaths are
            self._report(batch, changes)
        active = await self._learn_people({run.id: run for _, run in claimed})
        for step, run in claimed:
            self._in_flight += 1
            again = None if active is None else run.id in active
            task = asyncio.create_task(self._attempt(step, run, again), name=f"channelgate-step-{step.id}")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return len(claimed)

    # -- one attempt ------------------------------------------------------------------------------------------

    async def _attempt(self, step: StepRecord, run: RunRecord, active: bool | None) -> None:
        try:
            async with self._slots:
                result = await self._run_step(step, run, active)
            await self._results.put(Attempt(step, run, result, superseded=step.id in self._skipped))
        finally:
            self._skipped.discard(step.id)
            self._in_flight -= 1
            self.wake()

    async def _run_step(self, step: StepRecord, run: RunRecord, active: bool | None) -> StepResult:
        """One attempt at ``step``. ``active``: whether the run's agent was active again when the step was claimed
        (None: not known)."""
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
            if step.step is StepKind.HAND_OVER:
                return await self._hand_over(connector, step, run, ctx, limit)
            # Removal is irreversible: whether its agent is active again is read at the attempt itself.
            if step.step is StepKind.REMOVE or (step.step is StepKind.REVOKE and active is None):
                active = _active(await self._people.of(run.id))
            if active and step.step is not StepKind.VERIFY:
                return self._skip(step, run)
            agent = await self._agent_of(run)
            async with asyncio.timeout(limit):
                if step.step is StepKind.REVOKE:
                    return await connector.revoke(agent, ctx)
                if step.step is StepKind.VERIFY:
                    return await connector.verify_no_access(agent, ctx)
                return await connector.remove(agent, ctx)
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

    def _skip(self, step: StepRecord, run: RunRecord) -> StepResult:
        """The run's agent is active again (re-enabled after the disable this run carries out, by a path that did
        not supersede the run): a revocation, hand-over or removal now would act against an active agent, so the
        step is not taken and is recorded as superseded (with the later steps of its channel), and its receipt
        says why. The run then ends superseded, never done (``results.settle``)."""
        self._skipped.add(step.id)
        log.warning(
            "deprovisioning run %s: %s at channel %s skipped, %s is active again", run.id, step.step.value,
            step.channel, run.user_name,
        )  # fmt: skip
        detail = f"skipped: {run.user_name} is active again; this run's disable no longer holds"
        return StepResult(step.channel, step.step.value, Outcome.NOT_APPLICABLE, detail=detail)

    async def _hand_over(
        self, connector: Connector, step: StepRecord, run: RunRecord, ctx: StepContext, limit: float
    ) -> StepResult:
        """Hand the agent's open work over to the successor as the directory has them now: read at every attempt,
        so a successor disabled or deleted while the step was retrying gets nothing, and the receipt says why."""
        people = await self._people.of(run.id)
        if _active(people):
            return self._skip(step, run)
        agent = agent_ref(run, people)
        self._remember(run.id, agent)
        successor, passed_over = successor_ref(run, people)
        async with asyncio.timeout(limit):
            result = await connector.hand_over(agent, successor, ctx)
        if passed_over is None or result.outcome is Outcome.NOT_APPLICABLE:
            return result
        return replace(result, detail=f"{result.detail}; {passed_over}" if result.detail else passed_over)

    async def _learn_people(self, runs: Mapping[str, RunRecord]) -> set[str] | None:
        """Read the agents of claimed runs, all in one read: remember those not yet known here, and return the runs
        whose agent is active again (None when the read failed)."""
        if not runs:
            return set()
        try:
            found = await self._runs.people_of(list(runs))
        except ChannelgateError as exc:
            log.warning("deprovisioning worker cannot read the agents of %d runs: %s", len(runs), exc.message)
            return None  # each attempt reads its own run's agent (and retries if that fails too)
        for run_id, run in runs.items():
            if run_id not in self._agents:
                self._remember(run_id, agent_ref(run, found.get(run_id, NOBODY)))
        return {run_id for run_id in runs if _active(found.get(run_id, NOBODY))}

    def _remember(self, run_id: str, agent: AgentRef) -> None:
        self._agents[run_id] = agent
        while len(self._agents) > AGENT_CACHE:
            self._agents.popitem(last=False)

    async def _agent_of(self, run: RunRecord) -> AgentRef:
        agent = self._agents.get(run.id)
        if agent is None:
            agent = agent_ref(run, await self._people.of(run.id))
            self._remember(run.id, agent)
        return agent

    # -- committing results -----------------------------------------------------------------------------------

    async def _commit_forever(self) -> None:
        while True:
            batch = [await self._results.get()]
            while len(batch) < COMMIT_BATCH and not self._results.empty():
                batch.append(self._results.get_nowait())
            self._committing = True
            try:
                while True:
                    try:
                        await self._commit(batch)
                        break
                    except ChannelgateError as exc:
                        # Kept and retried: the vendor already acted, and its receipt must not be lost. If this
                        # process dies meanwhile, the leases lapse and the steps are redone under the same keys.
                        log.error("could not record %d deprovisioning results, retrying: %s", len(batch), exc.message)
                        await asyncio.sleep(COMMIT_RETRY_SECONDS)
            finally:
                self._committing = False

    async def _commit(self, batch: list[Attempt]) -> None:
        """Record the batch in one transaction: each step's new state, its receipt, the steps it unlocked and the
        run's state (``gateway.deprovision.results``), so a receipt exists exactly when the state it reports does."""
        now = self._clock()
        changes = await self._runs.record(
            self.owner,
            [a.step.id for a in batch],
            [a.run.id for a in batch],
            lambda snapshot: settle(batch, snapshot, now, self._settings),
        )
        self._report(batch, changes)

    def _report(self, batch: Sequence[Attempt], changes: Changes) -> None:
        """What a committed batch tells people: metrics per step, and for a dead letter an error log line."""
        if changes.unlocked:
            self.wake()  # the next step of a chain is due now, not at the next poll
        attempts = {a.step.id: a for a in batch}
        for step_id, state in changes.settled:
            attempt = attempts[step_id]
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


def _active(people: RunPeople) -> bool:
    """Whether a run's agent is active: made active again since the disable the run carries out."""
    return people.agent is not None and people.agent.active and not people.agent.deleted


def agent_ref(run: RunRecord, people: RunPeople) -> AgentRef:
    """Who a run acts for: the agent as stored (deleted or not), else as the run recorded them."""
    agent, manager = people.agent, people.manager
    if agent is None:
        return AgentRef(agent_id=run.agent_id, user_name=run.user_name)
    return AgentRef(
        agent_id=agent.id,
        user_name=agent.user_name,
        email=agent.email,
        manager_user_name=manager.user_name if manager is not None else None,
    )


def successor_ref(run: RunRecord, people: RunPeople) -> tuple[AgentRef | None, str | None]:
    """Who takes the agent's open work: the successor the trigger named, else the SCIM enterprise manager. One who
    is gone or disabled is no successor (the channel's fallback queue takes the work): then also the reason, for
    the receipt. ``people`` must be read at the hand-over attempt itself, never remembered from an earlier one."""
    chosen = people.named_successor if run.successor else people.manager
    role = "the named successor" if run.successor else "the manager"
    if run.successor and chosen is None:
        return None, f"{role} {run.successor} is deleted or unknown"
    if chosen is None:
        return None, None
    if chosen.id == run.agent_id:
        return None, f"{role} {chosen.user_name} is the departing agent"
    if not chosen.active:
        return None, f"{role} {chosen.user_name} is disabled"
    return AgentRef(agent_id=chosen.id, user_name=chosen.user_name, email=chosen.email), None
