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
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from gateway.errors import SessionStoreUnavailable
from gateway.proxy.streams import LiveConnections
from gateway.sessions.base import Revocation, SessionStore
from gateway.storage.agents import Agent, AgentRepository


@dataclass(frozen=True, slots=True)
class FirstKill:
    """The agent an identifier named (None: no live agent), and what ending its sessions first ended."""

    agent: Agent | None
    sessions: int = 0
    closed_here: int = 0
    #: The revocation broadcast for the agent (None when the store was unreachable).
    revocation: Revocation | None = None


class FirstKills:
    def __init__(self, agents: AgentRepository, sessions: SessionStore, live: LiveConnections | None) -> None:
        self._agents = agents
        self._sessions = sessions
        self._live = live
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
        return FirstKill(ended.agent, ended.sessions, closed, ended.revocation)

    def _flush(self) -> None:
        self._flush_scheduled = False
        batch, self._waiting = self._waiting, []
        if batch:
            task = asyncio.create_task(self._run(batch), name="channelgate-first-kills")
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    async def _run(self, batch: list[tuple[str, asyncio.Future[_Ended]]]) -> None:
        try:
            results = await self._kill([identifier for identifier, _ in batch])
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

    async def _kill(self, identifiers: list[str]) -> dict[str, _Ended]:
        found = await self._agents.find_many(identifiers)
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
        live = self._live
        closing = {a: asyncio.ensure_future(live.close_agent(a)) for a in counts} if live is not None else {}
        results: dict[str, _Ended] = {}
        for identifier, agent in found.items():
            # Two calls naming one agent: the first counts what ended, so the records do not count it twice.
            results[identifier] = _Ended(
                agent, counts.pop(agent.id, 0), closing.pop(agent.id, None), revocations.pop(agent.id, None)
            )
        return results


@dataclass(frozen=True, slots=True)
class _Ended:
    """A batch's answer to one caller: its agent, the sessions ended, its sockets' closing (awaited by it)."""

    agent: Agent | None
    sessions: int = 0
    closing: asyncio.Future[int] | None = None
    revocation: Revocation | None = None
