"""The load test's WebSockets: one chat console socket per agent, held open and used, in a process of its own.

Each agent opens ``/chat/ws`` through the gateway with its session cookie (the gateway relays it to the demo chat
console, which echoes every message prefixed with the agent's name from the gateway's assertion) and sends a
message every ``interval`` seconds on average. Recorded per socket: when it opened, every echo's round trip, an
echo naming another agent (never expected), and when the gateway closed it and with which code (a revocation
closes with 1008). The fleet runs in a process of its own (``python -m bench.load_ws``) so that its event loop
and the test's deprovisioning calls do not delay each other's clocks; both read CLOCK_MONOTONIC.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import json
import random
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from bench.stack import SESSION_COOKIE
from tests.components.gateway import ROOT


@dataclass
class SocketRecord:
    agent: str
    replica: int
    opened: float | None = None
    #: When the server's close arrived (None: still open when the fleet stopped, or never opened).
    closed: float | None = None
    close_code: int | None = None
    sent: int = 0
    rtts: list[float] = field(default_factory=list)
    wrong_agent: int = 0
    error: str | None = None


@dataclass(frozen=True)
class Target:
    agent: str
    replica: int
    url: str
    cookie: str


async def _socket(
    http: aiohttp.ClientSession, target: Target, interval: float, stop: asyncio.Event, record: SocketRecord
) -> None:
    pending: dict[str, float] = {}
    stopping = False

    async def sender(ws: aiohttp.ClientWebSocketResponse) -> None:
        nonlocal stopping
        number = 0
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), random.uniform(0, interval))
        while not stop.is_set() and not ws.closed:
            number += 1
            text = f"m{number}"
            pending[text] = time.monotonic()
            await ws.send_str(text)
            record.sent += 1
            try:
                await asyncio.wait_for(stop.wait(), interval * random.uniform(0.5, 1.5))
            except TimeoutError:
                continue
        stopping = True
        await ws.close()

    try:
        headers = {"Cookie": f"{SESSION_COOKIE}={target.cookie}"}
        async with http.ws_connect(
            target.url, headers=headers, heartbeat=None, timeout=aiohttp.ClientWSTimeout(ws_close=2)
        ) as ws:
            record.opened = time.monotonic()
            task = asyncio.create_task(sender(ws))
            async for message in ws:
                if message.type is aiohttp.WSMsgType.TEXT:
                    name, _, text = str(message.data).partition(": ")
                    sent = pending.pop(text, None)
                    if name != target.agent:
                        record.wrong_agent += 1
                    elif sent is not None:
                        record.rtts.append(time.monotonic() - sent)
            if not stopping:
                record.closed = time.monotonic()
                record.close_code = ws.close_code
            task.cancel()
    except Exception as exc:  # recorded and reported by the checks: a socket that failed is an error
        record.error = f"{type(exc).__name__}: {exc}"


async def _fleet(targets: list[Target], interval: float, ramp: float) -> list[SocketRecord]:
    records = [SocketRecord(t.agent, t.replica) for t in targets]
    stop = asyncio.Event()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
        tasks = []
        for index, (target, record) in enumerate(zip(targets, records, strict=True)):
            tasks.append(asyncio.create_task(_socket(http, target, interval, stop, record)))
            await asyncio.sleep(ramp / len(targets) * 10 if index % 10 == 9 else 0)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and any(r.opened is None and r.error is None for r in records):
            await asyncio.sleep(0.05)
        # This process's own full garbage collections would walk every socket's objects (~100 ms for a thousand)
        # and hold back the close it records: what is alive now stays, so it is left out of them.
        gc.collect()
        gc.freeze()
        print("ready", sum(r.opened is not None for r in records), flush=True)
        await asyncio.to_thread(sys.stdin.readline)
        stop.set()
        await asyncio.wait(tasks, timeout=10)
    return records


def main() -> None:
    """``python -m bench.load_ws TARGETS.json INTERVAL RAMP RESULTS.json``: prints ``ready N`` once the sockets
    are open, ends them at a line on stdin, writes the records and prints ``done``."""
    import uvloop

    source, interval, ramp, output = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), Path(sys.argv[4])
    targets = [Target(**item) for item in json.loads(Path(source).read_text())]
    records = uvloop.run(_fleet(targets, interval, ramp))
    output.write_text(json.dumps([dataclasses.asdict(record) for record in records]))
    print("done", flush=True)


class WebSocketFleet:
    """``open()`` starts the process and returns once every socket opened (or failed); ``close()`` ends them."""

    def __init__(self, targets: list[Target], work: Path, *, interval: float = 5.0, ramp: float = 5.0) -> None:
        self._targets = work / "ws-targets.json"
        self._targets.write_text(json.dumps([dataclasses.asdict(target) for target in targets]))
        self._results = work / "ws-results.json"
        self._argv = [sys.executable, "-m", "bench.load_ws", str(self._targets), str(interval), str(ramp),
                      str(self._results)]  # fmt: skip
        self._log = work / "ws-fleet.log"
        self._process: subprocess.Popen[str] | None = None
        self.opened = 0

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    async def _line(self, expected: str, timeout: float) -> str:
        assert self._process is not None and self._process.stdout is not None
        line = await asyncio.wait_for(asyncio.to_thread(self._process.stdout.readline), timeout)
        if not line.startswith(expected):
            tail = self._log.read_text()[-2000:] if self._log.exists() else ""
            raise RuntimeError(f"the WebSocket fleet said {line!r}, not {expected!r}:\n{tail}")
        return line

    async def open(self) -> int:
        with self._log.open("w") as log:
            self._process = subprocess.Popen(
                self._argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True, cwd=ROOT
            )
        self.opened = int((await self._line("ready", 120)).split()[1])
        return self.opened

    async def close(self) -> list[SocketRecord]:
        assert self._process is not None and self._process.stdin is not None
        self._process.stdin.write("stop\n")
        self._process.stdin.flush()
        await self._line("done", 60)
        await asyncio.to_thread(self._process.wait, 10)
        return [SocketRecord(**item) for item in json.loads(self._results.read_text())]

    def kill(self) -> None:
        """End the process if it still runs, and close its pipes (always called, after ``close()`` too)."""
        if self._process is None:
            return
        if self._process.poll() is None:
            self._process.kill()
            self._process.wait()
        for pipe in (self._process.stdin, self._process.stdout):
            if pipe is not None:
                pipe.close()


if __name__ == "__main__":
    main()
