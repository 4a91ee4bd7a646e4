"""Session lookups that arrive in the same event-loop turn share one pipelined round trip to Redis.

Every request reads its session from Redis (unless ``[sessions] local_cache_seconds`` keeps it in process). One
lookup on its own costs the event loop more than the script's work: a socket write and read, a timeout task, a
connection taken from the pool and given back, and the task's extra wake-ups; with fifty connections in flight
through nginx that was most of the forward-auth endpoint's CPU per request (docs/benchmarks.md §8, setting (c)).
Lookups made while the loop runs one turn's callbacks are sent together in the next turn as one pipeline (no
MULTI: each script is atomic on its own, exactly as when it is sent alone), and each caller gets its own reply
or its own error. Nothing waits for a batch to fill: the first lookup of a turn goes out one turn later.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from redis.asyncio import Redis
from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError

_Item = tuple[Sequence[str], Sequence[Any], "asyncio.Future[Any]"]


class ScriptBatches:
    """Runs one Lua script for many callers, one pipelined round trip per event-loop turn."""

    def __init__(self, redis: Redis, script: AsyncScript) -> None:
        self._redis = redis
        self._script = script
        self._pending: list[_Item] = []
        #: Round trips in flight (a task must be referenced until it ends).
        self._sending: set[asyncio.Task[None]] = set()

    async def run(self, keys: Sequence[str], args: Sequence[Any]) -> Any:
        """The script's reply for ``keys`` and ``args``; raises what Redis or the connection raised."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._pending.append((keys, args, future))
        if len(self._pending) == 1:
            loop.call_soon(self._send)  # after the callbacks of this turn, which may add more
        return await future

    def _send(self) -> None:
        batch, self._pending = self._pending, []
        task = asyncio.get_running_loop().create_task(self._round_trip(batch))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def _round_trip(self, batch: list[_Item]) -> None:
        try:
            if len(batch) == 1:
                keys, args, _ = batch[0]
                replies: list[Any] = [await self._script(keys=keys, args=args)]
            else:
                replies = await self._pipelined(batch)
        except BaseException as exc:  # each caller gets the error (SessionStore turns it into fail-closed)
            for _, _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            if isinstance(exc, asyncio.CancelledError):
                raise
            return
        for (_, _, future), reply in zip(batch, replies, strict=True):
            if future.done():
                continue  # its caller was cancelled
            if isinstance(reply, Exception):
                future.set_exception(reply)
            else:
                future.set_result(reply)

    async def _pipelined(self, batch: list[_Item]) -> list[Any]:
        # EVALSHA directly: a pipeline given the Script object checks SCRIPT EXISTS first, a round trip more.
        async with self._redis.pipeline(transaction=False) as pipe:
            for keys, args, _ in batch:
                pipe.evalsha(self._script.sha, len(keys), *keys, *args)
            replies: list[Any] = await pipe.execute(raise_on_error=False)
        for index, reply in enumerate(replies):
            if isinstance(reply, NoScriptError):  # Redis restarted or flushed its scripts: load and run it alone
                keys, args, _ = batch[index]
                replies[index] = await self._script(keys=keys, args=args)
        return replies
