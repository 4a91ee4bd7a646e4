"""Bulk offboarding (issue 4): deprovision N agents (10,000 by default), each with access at three channels,
against the demo consoles; the clock stops when every run is done and every receipt is written.

Setup (not timed): the three demo consoles as their own processes (chat: OAuth 2.0 + tickets, phone: seats,
mail: legacy form login + tickets), one ``channelgate serve`` process, N directory agents, and for each agent
what its first requests through the gateway would leave behind: an OAuth token pair at chat, a seat at phone, a
console session at mail, and one open ticket at chat and at mail. Then the N deprovisionings arrive through the
admin API, 32 at a time (an IdP's provisioning engine pushes in parallel), and the gateway's pipeline worker
revokes, hands over, verifies and removes.

Baseline, same run: the same connector calls for B other agents made directly, in one process with the same
concurrency, with no pipeline (no outbox, leases, receipts or retries): the ratio says what the durability costs
per agent. The mass-deletion guard is off in this run, as for an offboarding an admin approved in advance.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from contextlib import closing
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import aiohttp

from connectors.base import AgentRef, StepContext, UpstreamRequest
from connectors.secret import Secret
from gateway.services import Services, open_gateway
from gateway.settings import load_settings
from tests.components.gateway import _url_ok
from tests.components.offboarding import PASSWORD, gateway_config
from tests.components.ports import LOOPBACK, free_port
from tests.components.process import ChildProcess

ROOT = Path(__file__).resolve().parents[1]
CONSOLES = {"chat": ("oauth2", True), "phone": ("seats", False), "mail": ("form", True)}
TRIGGER_CONCURRENCY = 32
#: The worker's steps at once (``[deprovision] concurrency``), and the baseline's. Each step waits on a console
#: and on a group commit, so more steps in flight hide those waits: 1,000 agents took 9.3-10.7 s at 64, 7.1 s
#: at 128 and 7.1 s at 256 on this machine.
WORKER_CONCURRENCY = 128


@dataclass(frozen=True)
class OffboardingResult:
    agents: int
    steps: int
    receipts: int
    runs_done: int
    setup_seconds: float
    trigger_seconds: float
    total_seconds: float
    baseline_agents: int
    baseline_seconds: float
    worker_concurrency: int

    @property
    def agents_per_second(self) -> float:
        return self.agents / self.total_seconds

    @property
    def baseline_agents_per_second(self) -> float:
        return self.baseline_agents / self.baseline_seconds


async def _bounded(items: Sequence[str], work: Callable[[str], Awaitable[None]], concurrency: int) -> None:
    queue = list(items)

    async def worker() -> None:
        while queue:
            await work(queue.pop())

    await asyncio.gather(*(worker() for _ in range(concurrency)))


class Bench:
    def __init__(self, base: Path, agents: int, baseline: int, concurrency: int) -> None:
        self.base = base
        self.count = agents
        self.baseline = baseline
        self.concurrency = concurrency
        self.gateway_port = free_port()
        self.admin_token = secrets.token_urlsafe(24)
        self.users = [f"off{n:05d}" for n in range(agents)]
        self.baseline_users = [f"base{n:05d}" for n in range(baseline)]
        self.children: list[ChildProcess] = []
        self.credentials = {c: f"{c}-{secrets.token_urlsafe(16)}" for c in CONSOLES}
        self.ports = {c: free_port() for c in CONSOLES}

    @property
    def gateway_url(self) -> str:
        return f"http://{LOOPBACK}:{self.gateway_port}"

    @property
    def config(self) -> Path:
        return self.base / "channelgate.toml"

    def cli(self, *args: str, stdin: str | None = None) -> None:
        subprocess.run(
            [sys.executable, "-m", "gateway", "--config", str(self.config), *args],
            input=stdin, capture_output=True, text=True, cwd=ROOT, timeout=120, check=True,
        )  # fmt: skip

    def start_consoles(self) -> None:
        everyone = [*self.users, *self.baseline_users]
        tickets = [{"id": f"T-{u}", "subject": "customer case", "assignee": u} for u in everyone]
        (self.base / "tickets.json").write_text(json.dumps(tickets), encoding="utf-8")
        (self.base / "accounts.json").write_text(json.dumps(dict.fromkeys(everyone, PASSWORD)), encoding="utf-8")
        for channel, (mode, has_tickets) in CONSOLES.items():
            argv = [
                sys.executable, "-m", "deploy.demo.consoles", "--channel", channel, "--port", str(self.ports[channel]),
                "--credential", self.credentials[channel], "--auth", mode, "--log-level", "warning",
                "--gateway-jwks", f"{self.gateway_url}/.channelgate/jwks.json", "--gateway-issuer", self.gateway_url,
            ]  # fmt: skip
            if has_tickets:
                argv += ["--tickets-file", str(self.base / "tickets.json")]
            if mode == "form":
                argv += ["--accounts", str(self.base / "accounts.json")]
            child = ChildProcess(argv, self.base / f"{channel}.log", name=f"{channel} console", cwd=ROOT)
            self.children.append(child)
            child.start()
            url = f"http://{LOOPBACK}:{self.ports[channel]}/"
            child.wait_until(partial(_url_ok, url), timeout=30, what="its first answer")

    def start_gateway(self) -> None:
        urls = {c: f"http://{LOOPBACK}:{p}" for c, p in self.ports.items()}
        text = gateway_config(self.base, self.gateway_port, self.admin_token, urls)
        text += f"\n[deprovision]\nconcurrency = {self.concurrency}\n[deprovision.guard]\nenabled = false\n"
        self.config.write_text(text, encoding="utf-8")
        self.cli("migrate")
        for channel, credential in self.credentials.items():
            self.cli("channels", "set-credential", channel, stdin=credential + "\n")
        self.seed_agents()
        child = ChildProcess(
            [sys.executable, "-m", "gateway", "--config", str(self.config), "serve", "--no-migrate",
             "--log-level", "warning"],
            self.base / "gateway.log", name="gateway", cwd=ROOT,
        )  # fmt: skip
        self.children.append(child)
        child.start()
        child.wait_until(lambda: _url_ok(f"{self.gateway_url}/.channelgate/readyz"), timeout=60, what="readiness")

    def seed_agents(self) -> None:
        now = "2026-12-04 12:00:00.000000"
        lead = str(uuid.uuid4())
        rows: list[tuple[str, str, str, str | None]] = [(lead, "lead", "lead", None)]
        rows += [(str(uuid.uuid4()), u, u, lead) for u in [*self.users, *self.baseline_users]]
        with closing(sqlite3.connect(self.base / "channelgate.db")) as db, db:
            db.executemany(
                "INSERT INTO agents (id, user_name, user_name_key, email, manager_id, active, source, attributes,"
                " version, created_at, updated_at) VALUES (?, ?, ?, NULL, ?, 1, 'scim', '{}', 1, ?, ?)",
                [(*row, now, now) for row in rows],
            )

    def stop(self) -> None:
        for child in reversed(self.children):
            child.stop()


async def _agent(services: Services, user: str) -> AgentRef:
    agent = await services.agents.find(user)
    assert agent is not None
    return AgentRef(agent_id=agent.id, user_name=agent.user_name, manager_user_name="lead")


async def _give_access(services: Services, users: Sequence[str]) -> None:
    async def one(user: str) -> None:
        ref = await _agent(services, user)
        await services.connector_contexts["mail"].secrets.put(ref.agent_id, "password", Secret(PASSWORD))
        for channel in CONSOLES:
            await services.connectors[channel].prepare(ref, UpstreamRequest("GET", f"http://c/{channel}", []))

    await _bounded(users, one, 16)


async def _direct(services: Services, users: Sequence[str], concurrency: int) -> float:
    """The baseline: every connector call of the pipeline, made directly (no outbox, lease, receipt, retry)."""
    lead = await services.agents.find("lead")
    assert lead is not None
    successor = AgentRef(agent_id=lead.id, user_name="lead")

    async def one(user: str) -> None:
        ref = await _agent(services, user)
        for channel, connector in services.connectors.items():
            ctx = StepContext(f"baseline:{user}:{channel}")
            await connector.revoke(ref, ctx)
            if CONSOLES[channel][1]:
                await connector.hand_over(ref, successor, ctx)
            await connector.verify_no_access(ref, ctx)
            await connector.remove(ref, ctx)

    started = time.perf_counter()
    await _bounded(users, one, concurrency)
    return time.perf_counter() - started


async def _trigger(bench: Bench) -> float:
    headers = {"Authorization": f"Bearer {bench.admin_token}"}
    connector = aiohttp.TCPConnector(limit=TRIGGER_CONCURRENCY)
    async with aiohttp.ClientSession(connector=connector) as http:

        async def one(user: str) -> None:
            url = f"{bench.gateway_url}/.channelgate/admin/agents/{user}/deprovision"
            async with http.post(url, json={"reason": "bulk offboarding"}, headers=headers) as response:
                if response.status != 200:
                    raise RuntimeError(f"deprovision {user}: {response.status} {await response.text()}")

        started = time.perf_counter()
        await _bounded(bench.users, one, TRIGGER_CONCURRENCY)
        return time.perf_counter() - started


def _finished(database: Path) -> int:
    """Runs finished (done or attention), read straight from the database. Only the runs are polled: a scan of
    the access log four times a second took a tenth of a core from the gateway on this 2-core machine. A run is
    done only when every step is, and each step's receipt commits with its state, so the receipts are counted
    once, at the end."""
    with closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True)) as db:
        finished = db.execute("SELECT count(*) FROM deprovision_runs WHERE state IN ('done', 'attention')")
        return int(finished.fetchone()[0])


def _outcome(database: Path) -> tuple[int, int, int]:
    """(runs done, steps of the offboarded agents, done receipts)."""
    with closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True)) as db:
        done = db.execute("SELECT count(*) FROM deprovision_runs WHERE state = 'done'").fetchone()[0]
        steps = db.execute(
            "SELECT count(*) FROM deprovision_steps s JOIN deprovision_runs r ON r.id = s.run_id "
            "WHERE r.user_name LIKE 'off%'"
        ).fetchone()[0]
        receipts = db.execute(
            "SELECT count(*) FROM access_log WHERE kind = 'deprovision_step' AND decision = 'done'"
        ).fetchone()[0]
    return int(done), int(steps), int(receipts)


def run_offboarding(
    agents: int = 10_000, baseline: int = 1_000, concurrency: int = WORKER_CONCURRENCY, limit: float = 900.0
) -> OffboardingResult:
    base = Path(tempfile.mkdtemp(prefix="channelgate-bench-offboarding-"))
    bench = Bench(base, agents, baseline, concurrency)
    try:
        setup_started = time.perf_counter()
        bench.start_consoles()
        bench.start_gateway()

        async def prepare_and_baseline() -> float:
            services = open_gateway(load_settings(bench.config, environ={}))
            try:
                await _give_access(services, [*bench.users, *bench.baseline_users])
                return await _direct(services, bench.baseline_users, concurrency)
            finally:
                await services.close()

        baseline_seconds = asyncio.run(prepare_and_baseline())
        setup_seconds = time.perf_counter() - setup_started - baseline_seconds
        print(f"offboarding: setup {setup_seconds:.0f} s, baseline {baseline_seconds:.1f} s", file=sys.stderr)
        started = time.perf_counter()
        trigger_seconds = asyncio.run(_trigger(bench))
        database = base / "channelgate.db"
        while _finished(database) < agents and time.perf_counter() - started <= limit:
            time.sleep(0.25)
        total = time.perf_counter() - started
        done, steps, receipts = _outcome(database)
        print(f"offboarding: {done}/{agents} done in {total:.1f} s ({receipts} receipts)", file=sys.stderr)
        return OffboardingResult(
            agents=agents,
            steps=steps,
            receipts=receipts,
            runs_done=done,
            setup_seconds=setup_seconds,
            trigger_seconds=trigger_seconds,
            total_seconds=total,
            baseline_agents=baseline,
            baseline_seconds=baseline_seconds,
            worker_concurrency=concurrency,
        )
    finally:
        bench.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m bench.offboarding", description=__doc__.split("\n\n")[0])
    parser.add_argument("agents", type=int, nargs="?", default=1000)
    parser.add_argument("--baseline", type=int, help="agents offboarded directly for the baseline (default N/10)")
    parser.add_argument(
        "--concurrency", type=int, default=WORKER_CONCURRENCY, help="the worker's (and the baseline's) concurrency"
    )
    args = parser.parse_args()
    print(run_offboarding(args.agents, args.baseline or max(100, args.agents // 10), args.concurrency))
