"""The first kill of concurrent deprovisionings, done together: one lookup and one session-store round trip a batch.

Each deprovisioning ends the agent's sessions before its disable transaction (``gateway/deprovision/kill.py``).
When a hundred arrive at once (an offboarding wave, an IdP pushing a department's deactivations), a hundred
lookups and a hundred Redis scripts, each awaited on its own, take turns on a busy event loop with everything
else the process does: measured under load, the last agent of such a storm was shut out ~600 ms after its call
started (docs/benchmarks.md §9). Here the calls that arrive before the event loop comes round to them are taken
together (a batch never waits for another), and each batch is one read of every agent named
(``AgentRepository.find_many``, through the quick reader) and one pipelined round trip of revocation scripts
(``SessionStore.revoke_agents``), each still atomic and broadcast on its own. A lone call is a batch of one: it
costs what the two awaits it replaces did.

An unreachable session store is not an error here: the kill after the disable commits fails the call and retries
until it lands (``SessionsNotEnded``). A failed lookup fails every call of its batch, as it would have alone.

What a batch ended is saved to ``session_ends`` as one agent-wide end per agent, in one insert, timed before the
kill (``remember``; gateway/deprovision/logouts.py): the agent may be enabled again (a password reset) before a
restarted Redis brings its stolen sessions back, and the sweep that ends them then knows only what this saved.
The insert runs once the callers have their answer, so it never delays their disable; each caller waits for it
(``FirstKill.saved``) before reporting the deprovisioning done.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime

from gateway.errors import SessionStoreUnavailable
from gateway.proxy.streams import LiveConnections
from gateway.sessions.base import Revocation, SessionStore
from gateway.storage.agents import Agent, AgentRepository
from gateway.storage.session_ends import EndKind, SessionEnd
from gateway.timeutil import utcnow

#: Saves what a batch ended (``SessionKiller``: kept in process when the database fails, never raises for that).
Remember = Callable[[list[SessionEnd]], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class FirstKill:
    """The agent an identifier named (None: no live agent), and what ending its sessions first ended."""

    agent: Agent | None
    sessions: int = 0
    closed_here: int = 0
    #: The revocation broadcast for the agent (None when the store was unreachable).
    revocation: Revocation | None = None
    #: Done once what the batch ended is saved (or kept to be saved): awaited before the call reports success.
    saved: asyncio.Future[None] | None = None


class FirstKills:
    def __init__(
        self,
        agents: AgentRepository,
        sessions: SessionStore,
        live: LiveConnections | None,
        remember: Remember | None = None,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        """``clock`` stamps the ends ``remember`` saves (gateway/deprovision/endings.py ``EndClock``)."""
        self._clock = clock
        self._agents = agents
        self._sessions = sessions
        self._live = live
        self._remember = remember
        self._waiting: list[tuple[str, asyncio.Future[_Ended]]] = []
        self._flush_scheduled = False
        #: Batches in flight (kept referenced until done).
        self._running: set[asyncio.Task[None]] = set()

    async def end(self, identifier: str) -> FirstKill:
        """Find the live agent whose id, else userName, is ``identifier`` and end its sessions everywhere (the
        revocation broadcast; acknowledgements are the later kill's to wait for)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[_Ended] = loop.create_future()
        self._waiting.append((identifier, future))
        if not self._flush_scheduled:
            # The batch is what arrives before the loop comes round to it: nothing on a quiet loop, more the
            # busier it is. A batch never waits for another one to finish.
            self._flush_scheduled = True
            loop.call_soon(self._flush)
        ended = await future
        # Each caller waits for its own sockets' close handshakes, not the batch's.
        closed = await ended.closing if ended.closing is not None else 0
        return FirstKill(ended.agent, ended.sessions, closed, ended.revocation, ended.saved)

    def _flush(self) -> None:
        self._flush_scheduled = False
        batch, self._waiting = self._waiting, []
        if batch:
            task = asyncio.create_task(self._run(batch), name="channelgate-first-kills")
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    async def _run(self, batch: list[tuple[str, asyncio.Future[_Ended]]]) -> None:
        saved: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        try:
            results, ends = await self._kill([identifier for identifier, _ in batch], saved)
        except BaseException as exc:  # handed to every caller of the batch, who raises it
            for _, future in batch:
                if not future.done():
                    if isinstance(exc, Exception):
                        future.set_exception(exc)
                    else:
                        future.cancel()
            if not isinstance(exc, Exception):
                raise  # cancelled (shutting down): its callers are cancelled with it
            return
        for identifier, future in batch:
            if not future.done():  # a caller cancelled meanwhile
                future.set_result(results.get(identifier, _Ended(None)))
        try:
            if ends and self._remember is not None:
                await self._remember(ends)
        finally:
            saved.set_result(None)

    async def _kill(
        self, identifiers: list[str], saved: asyncio.Future[None]
    ) -> tuple[dict[str, _Ended], list[SessionEnd]]:
        """Each identifier's answer, and the agent-wide ends to save (agents with a session ended)."""
        found = await self._agents.find_many(identifiers)
        ended_at = self._clock()  # before the kill: a session created after this is not one it ended
        agent_ids = sorted({agent.id for agent in found.values()})
        counts: dict[str, int] = {}
        revocations: dict[str, Revocation] = {}
        if agent_ids:
            try:
                revoked = await self._sessions.revoke_agents(agent_ids)
            except SessionStoreUnavailable:
                revoked = []
            counts = {revocation.agent_id: count for count, revocation in revoked}
            revocations = {revocation.agent_id: revocation for _, revocation in revoked}
        ends = [SessionEnd(ended_at, EndKind.AGENT, agent_id) for agent_id, count in counts.items() if count]
        live = self._live
        closing = {a: asyncio.ensure_future(live.close_agent(a)) for a in counts} if live is not None else {}
        results: dict[str, _Ended] = {}
        for identifier, agent in found.items():
            # Two calls naming one agent: the first counts what ended, so the records do not count it twice.
            results[identifier] = _Ended(
                agent, counts.pop(agent.id, 0), closing.pop(agent.id, None), revocations.pop(agent.id, None), saved
            )
        return results, ends


@dataclass(frozen=True, slots=True)
class _Ended:
    """A batch's answer to one caller: its agent, the sessions ended, its sockets' closing (awaited by it)."""

    agent: Agent | None
    sessions: int = 0
    closing: asyncio.Future[int] | None = None
    revocation: Revocation | None = None
    saved: asyncio.Future[None] | None = None
