"""SCIM lookups at scale: ``GET /scim/v2/Users?filter=userName eq "agent-NNNNN"`` with 100,000 agents stored.

The lookup is what every IdP sends before a create and on every matching pass (Okta's look-up-before-create,
Entra's matching query), so it is the SCIM request that grows with the directory. The agents are written
straight into the database, in batches through SQLAlchemy Core, with the same columns and ``attributes`` the
SCIM storage writes (``scim.mapping.user_columns``), then one gateway process (``python -m gateway serve``) is
loaded by wrk: a Lua script picks a random existing agent per request and spells its userName in varied case.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from uuid import uuid4

import aiohttp
import httpx
from scim2_models import Name
from sqlalchemy import insert
from sqlalchemy.ext.asyncio import create_async_engine

from bench.revocation import TRIAL_TIMEOUT, _poll
from bench.stack import Gateway, session_cookie
from bench.wrk import WrkResult, parse
from gateway.storage.schema import agents
from scim.mapping import UserModel, user_columns
from scim.provider import ScimEmail
from tests.components.process import require_executable

AGENTS = 100_000
BATCH = 5_000
THREADS = 2
CONNECTIONS = 10
GOAL_RPS = 1_000.0
GOAL_P99_MS = 20.0
SCIM_JSON = "application/scim+json"

#: Three spellings of agent-NNNNN; userName is case-insensitive (RFC 7643 §4.1.1), so all must find the agent.
_LUA = """
local n = {agents}
local spellings = {{"agent-%05d", "AGENT-%05d", "Agent-%05d"}}
math.randomseed(os.time())
wrk.headers["Authorization"] = "Bearer {token}"
wrk.headers["Accept"] = "{accept}"
request = function()
  local name = string.format(spellings[math.random(1, 3)], math.random(0, n - 1))
  return wrk.format("GET", "/scim/v2/Users?filter=userName%20eq%20%22" .. name .. "%22")
end
"""


@dataclass
class ScimLookup:
    database: str
    load_seconds: float
    wrk: WrkResult


@dataclass
class ScimResult:
    agents: int
    threads: int
    connections: int
    duration: float
    lookups: list[ScimLookup] = field(default_factory=list)


def _log(message: str) -> None:
    print(f"[scim] {message}", file=sys.stderr, flush=True)


def user_name(index: int) -> str:
    return f"agent-{index:05d}"


def _template() -> str:
    """The columns of one SCIM-created agent as JSON, for ``agent-00000``; others differ only in the name."""
    user = UserModel(
        user_name=user_name(0),
        display_name=f"Agent {user_name(0)}",
        external_id=f"ext-{user_name(0)}",
        name=Name(given_name=user_name(0), family_name="Bench"),
        emails=[ScimEmail(value=f"{user_name(0)}@example.org", type="work", primary=True)],
        active=True,
    )
    return json.dumps(user_columns(user))


async def load_agents(database_url: str, count: int = AGENTS) -> float:
    """Insert ``count`` agents in batches; return the seconds it took."""
    template, started = _template(), time.perf_counter()
    now = datetime.now(UTC)
    engine = create_async_engine(database_url)
    try:
        for first in range(0, count, BATCH):
            rows: list[dict[str, Any]] = []
            for index in range(first, min(first + BATCH, count)):
                columns = json.loads(template.replace(user_name(0), user_name(index)))
                rows.append(
                    columns
                    | {"id": str(uuid4()), "active": True, "source": "scim", "version": 1}
                    | {"created_at": now, "updated_at": now}
                )
            async with engine.begin() as conn:
                await conn.execute(insert(agents), rows)
        # Settle the table as a production database is settled: after a bulk load PostgreSQL's autovacuum
        # would vacuum and analyze it, and a checkpoint write it out, in the middle of the measurement.
        postgres = engine.dialect.name == "postgresql"
        async with engine.connect() as conn:
            conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
            for statement in ("VACUUM ANALYZE agents", "CHECKPOINT") if postgres else ("ANALYZE",):
                await conn.exec_driver_sql(statement)
    finally:
        await engine.dispose()
    return time.perf_counter() - started


def _check_lookups(url: str, token: str) -> None:
    """A few lookups by hand before the load: wrk only counts statuses, not whether the agent was found."""
    headers = {"Authorization": f"Bearer {token}", "Accept": SCIM_JSON}
    for name in ("agent-00000", "AGENT-54321", f"Agent-{AGENTS - 1:05d}"):
        response = httpx.get(f"{url}/scim/v2/Users", params={"filter": f'userName eq "{name}"'}, headers=headers)
        found = response.json() if response.status_code == 200 else {}
        if found.get("totalResults") != 1 or found["Resources"][0]["userName"] != name.lower():
            raise RuntimeError(f"lookup of {name} answered {response.status_code}: {response.text[:300]}")


def _wrk(target: str, url: str, script: Path, duration: float) -> WrkResult:
    argv = [
        require_executable("wrk", "wrk"),
        f"-t{THREADS}", f"-c{CONNECTIONS}", f"-d{max(1, round(duration))}s",
        "--timeout", "10s", "--latency", "-s", str(script), url,
    ]  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 60, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"wrk failed for {target} ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return parse(target, done.stdout)


def run_scim_lookups(
    databases: dict[str, str], *, issuer: str, upstream_port: int, duration: float, warmup: float
) -> ScimResult:
    """For each (label → database URL): start a gateway, load the agents, then a warm-up and a measured wrk run."""
    result = ScimResult(agents=AGENTS, threads=THREADS, connections=CONNECTIONS, duration=duration)
    for label, database_url in databases.items():
        gateway = Gateway(f"scim-{label}", database_url, upstream_port)
        try:
            gateway.start(issuer)
            _log(f"{label}: loading {AGENTS:,} agents")
            load_seconds = asyncio.run(load_agents(database_url))
            token = gateway.cli("scim-tokens", "create", "bench").stdout.strip()
            _check_lookups(gateway.url(), token)
            with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
                script.write(_LUA.format(agents=AGENTS, token=token, accept=SCIM_JSON))
            path = Path(script.name)
            try:
                target = f"{gateway.url()}/scim/v2/Users"  # the Lua script sets every request's path
                if warmup > 0:
                    _wrk(f"{label} warm-up", target, path, warmup)
                measured = _wrk(label, target, path, duration)
            finally:
                path.unlink(missing_ok=True)
            _log(
                f"{label}: {measured.requests_per_second:,.0f} req/s, p99 {measured.p99_ms:.1f} ms "
                f"(loaded in {load_seconds:.1f} s)"
            )
            result.lookups.append(ScimLookup(label, load_seconds, measured))
        finally:
            gateway.stop()
    return result


@dataclass
class ScimDisableResult:
    database: str
    #: Per trial: seconds from the start of the SCIM PATCH until the last replica's first 401 arrived.
    last_refusal: list[float] = field(default_factory=list)
    #: Per trial: seconds the PATCH itself took (start → answer).
    call_seconds: list[float] = field(default_factory=list)
    late_allows: int = 0


async def _scim_disable_trial(gateway: Gateway, token: str, username: str) -> tuple[float, float, int]:
    """Entra's disable (``"op": "Replace"``, ``"value": "False"``) on replica ``0`` of a logged-in agent; the
    pollers of ``bench.revocation`` time each replica's first refusal."""
    cookie = await session_cookie(gateway, username)
    headers = {"Authorization": f"Bearer {token}", "Content-Type": SCIM_JSON, "Accept": SCIM_JSON}
    state: dict[str, float | None] = {"t0": None, "returned": None}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=4)) as http:
        async with http.get(
            f"{gateway.url(0)}/scim/v2/Users", params={"filter": f'userName eq "{username}"'}, headers=headers
        ) as response:
            found = await response.json(content_type=None)
        if found.get("totalResults") != 1:
            raise RuntimeError(f"SCIM lookup of {username} after login found {found}")
        agent_id = found["Resources"][0]["id"]
        ready = [asyncio.Event() for _ in gateway.ports]
        pollers = [
            asyncio.create_task(_poll(http, gateway.url(i) + "/chat/", cookie, ready[i], state))
            for i in range(len(gateway.ports))
        ]
        await asyncio.wait_for(asyncio.gather(*(event.wait() for event in ready)), TRIAL_TIMEOUT)
        body = {
            "schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
            "Operations": [{"op": "Replace", "path": "active", "value": "False"}],
        }
        t0 = time.perf_counter()
        state["t0"] = t0
        async with http.patch(f"{gateway.url(0)}/scim/v2/Users/{agent_id}", json=body, headers=headers) as response:
            if response.status not in (200, 204):
                raise RuntimeError(f"SCIM disable answered {response.status}: {await response.text()}")
        returned = time.perf_counter()
        state["returned"] = returned
        results = await asyncio.wait_for(asyncio.gather(*pollers), TRIAL_TIMEOUT)
    return max(arrived for arrived, _, _, _ in results) - t0, returned - t0, sum(late for _, late, _, _ in results)


async def run_scim_disable(gateway: Gateway, usernames: list[str], *, database: str) -> ScimDisableResult:
    """One trial per (fresh, logged-in) agent in ``usernames``, on ``gateway``'s replicas (already started)."""
    result = ScimDisableResult(database=database)
    token = gateway.cli("scim-tokens", "create", "bench-disable").stdout.strip()
    for number, username in enumerate(usernames):
        last, call, late = await _scim_disable_trial(gateway, token, username)
        result.last_refusal.append(last)
        result.call_seconds.append(call)
        result.late_allows += late
        if (number + 1) % 10 == 0:
            _log(f"disable trial {number + 1}/{len(usernames)}: last replica refusing after {last * 1000:.1f} ms")
    return result
