"""The load test's correctness, short (issue 8, item 4): two replicas, 100 agents on the three consoles over HTTP
(wrk) and WebSocket, agents deprovisioned one at a time and then ten at once in the middle of the load.

The full run (1,000 agents, a storm of 100, with its latency and memory figures) is section 9 of
docs/benchmarks.md, by ``make bench``; this runs the same code (bench/load.py) small enough for ``make test``.
What must hold: no request sent after its agent's deprovisioning returned is served (the upstream's own log),
no live agent is refused, every call answers with every replica's acknowledgement, every revoked agent's
WebSocket is closed with 1008 and no other, no echo is lost or names another agent.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.load import LoadPlan, run_load_test
from bench.load_stack import LoadStack
from bench.stack import bench_accounts
from tests.components.oidc_provider import STANDARD_ACCOUNTS, OidcProviderFactory
from tests.components.postgres_server import PostgresServer
from tests.components.redis_server import RedisServer

pytestmark = [pytest.mark.redis, pytest.mark.postgres, pytest.mark.oidc, pytest.mark.timeout(240)]

PLAN = LoadPlan(agents=100, storm=10, single=4, logins=6, duration=20.0, rate=2.0, connections=10)
#: Far above what the figures show (tens to a few hundred ms), so a slow shared machine cannot fail the test;
#: a revocation that hangs or never completes does.
COMPLETED_WITHIN_SECONDS = 5.0


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    """A Redis of its own: the test turns keyspace notifications on to see each agent's sessions go."""
    with RedisServer() as server:
        yield server


@pytest.fixture
def work() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="channelgate-load-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


async def test_a_deprovisioning_storm_under_load_leaves_no_request_served_after_revocation(
    postgres_server: PostgresServer,
    own_redis: RedisServer,
    oidc_provider_factory: OidcProviderFactory,
    work: Path,
) -> None:
    stack = LoadStack(postgres_server.create_database("load_storm"), own_redis.url)
    provider = oidc_provider_factory(stack.redirect_uris, accounts=(*STANDARD_ACCOUNTS, *bench_accounts(PLAN.logins)))
    try:
        stack.start(provider.issuer)
        result = await run_load_test(stack, PLAN, work)
    finally:
        stack.stop()
        shutil.rmtree(stack.gateway.base_dir, ignore_errors=True)

    assert result.failures == []
    assert len(result.revoked) == PLAN.single + PLAN.storm
    assert all(r.completed is not None and r.completed < COMPLETED_WITHIN_SECONDS for r in result.revoked)
    assert result.sockets.opened == PLAN.agents
    assert result.requests.expected_refusals > 0
    assert result.requests.served > PLAN.agents * PLAN.rate * PLAN.duration / 2
