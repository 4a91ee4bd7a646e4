"""The people of runs (agent, manager, named successor), read at each step's attempt and coalesced across attempts.

A removal is irreversible and a hand-over gives an agent's open work away, so whether the run's agent is active
again, and who the successor is now, are read at the attempt itself, after its slot was taken, not when the step
was claimed. In a bulk offboarding that is one read for most attempts; made one by one they were a database round
trip (a reader-thread hop on SQLite) each, and took 10-20 % of the pipeline's time. Here the reads that attempts
ask for while another read is in flight wait for it to end and then go together in one query: every answer still
comes from a read started after its attempt asked, and none is kept for a later attempt.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Collection

from gateway.storage.pipeline import RunPeople

#: What the storage answers for a run it has no people for (a run deleted meanwhile).
NOBODY = RunPeople(None, None, None)
#: Runs read in one query at most (well inside SQLite's and PostgreSQL's bound-parameter limits).
MOST_PER_READ = 500

ReadPeople = Callable[[Collection[str]], Awaitable[dict[str, RunPeople]]]


class PeopleReads:
    def __init__(self, read: ReadPeople) -> None:
        self._read = read
        self._asked: dict[str, list[asyncio.Future[RunPeople]]] = {}
        self._reading: asyncio.Task[None] | None = None

    async def of(self, run_id: str) -> RunPeople:
        """``run_id``'s people as the database has them now; raises what the read raised (a ``ChannelgateError``
        when the database cannot be reached)."""
        answer: asyncio.Future[RunPeople] = asyncio.get_running_loop().create_future()
        self._asked.setdefault(run_id, []).append(answer)
        if self._reading is None:
            # Started on the loop's next turn, so attempts asking in this turn share its first query.
            self._reading = asyncio.create_task(self._read_all(), name="channelgate-pipeline-people")
        return await answer

    async def _read_all(self) -> None:
        batch: dict[str, list[asyncio.Future[RunPeople]]] = {}
        try:
            while self._asked:
                batch = dict(list(self._asked.items())[:MOST_PER_READ])
                for run_id in batch:
                    del self._asked[run_id]
                try:
                    found = await self._read(list(batch))
                except Exception as exc:
                    for answer in _waiting(batch):
                        answer.set_exception(exc)
                else:
                    for run_id, answers in batch.items():
                        for answer in _waiting({run_id: answers}):
                            answer.set_result(found.get(run_id, NOBODY))
                batch = {}
        finally:
            # Cancelled (the worker stops): nobody may be left waiting on an answer that will not come.
            for answer in [*_waiting(batch), *_waiting(self._asked)]:
                answer.cancel()
            self._asked = {}
            self._reading = None


def _waiting(batch: dict[str, list[asyncio.Future[RunPeople]]]) -> list[asyncio.Future[RunPeople]]:
    """The answers in ``batch`` still awaited (an attempt cancelled meanwhile has none)."""
    return [answer for answers in batch.values() for answer in answers if not answer.done()]
