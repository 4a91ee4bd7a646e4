"""Run every benchmark and write docs/benchmarks.md.

python -m bench.run                 # the full run (make bench), about 30 minutes
python -m bench.run --quick         # a smoke run of a few minutes
python -m bench.run --duration 30 --rounds 5 --trials 200
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shlex
import shutil
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from bench.audit import AuditBenchResult, run_audit
from bench.forward_auth import ForwardAuthBench, ForwardAuthResult
from bench.ldap import LdapBenchResult, run_ldap
from bench.load import LoadPlan, LoadResult, run_load_test
from bench.load_stack import LoadStack
from bench.machine import describe
from bench.nginx import Nginx
from bench.offboarding import OffboardingResult, run_offboarding
from bench.policies import PolicyBenchResult, run_policy_decisions
from bench.report import previous_sections, render
from bench.revocation import RevocationResult, run_revocation
from bench.scaling import ScalingResult, run_scaling
from bench.scim import ScimDisableResult, ScimResult, run_scim_disable, run_scim_lookups
from bench.stack import Gateway, bench_accounts
from bench.throughput import ThroughputResult, run_throughput
from tests.components.oidc_provider import STANDARD_ACCOUNTS, OidcProvider, provider_config
from tests.components.postgres_server import PostgresServer
from tests.components.redis_server import RedisServer

ROOT = Path(__file__).resolve().parents[1]

OUTPUT = ROOT / "docs" / "benchmarks.md"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description="channelgate benchmarks")
    parser.add_argument("--quick", action="store_true", help="short smoke run (2 s loads, 1 round, 10+2 trials)")
    parser.add_argument("--duration", type=float, help="seconds of each wrk run (default 8; quick 2)")
    parser.add_argument("--warmup", type=float, help="seconds of the warm-up before each wrk run (default 2)")
    parser.add_argument("--rounds", type=int, help="wrk rounds over all targets (default 6; quick 1)")
    parser.add_argument("--trials", type=int, help="admin-API revocation trials (default 100; quick 10)")
    parser.add_argument("--scim-trials", type=int, help="SCIM disable trials (default 50; quick 5)")
    parser.add_argument("--cli-trials", type=int, help="CLI revocation trials (default 5; quick 2)")
    parser.add_argument(
        "--database", choices=("postgres", "sqlite"), default="postgres", help="revocation database (default postgres)"
    )
    parser.add_argument("--offboard-agents", type=int, help="agents of the bulk offboarding (default 10000; quick 300)")
    parser.add_argument("--forward-auth-trials", type=int, help="revocations per forward-auth setting (default 30)")
    parser.add_argument("--load-agents", type=int, help="agents of the load test (default 1000; quick 200)")
    parser.add_argument("--load-storm", type=int, help="agents deprovisioned at once in it (default 100; quick 20)")
    parser.add_argument("--load-duration", type=float, help="seconds of its load (default 60; quick 20)")
    parser.add_argument("--load-rate", type=float, default=0.5, help="HTTP requests per agent per second (0.5)")
    parser.add_argument("--memory-sessions", type=int, help="sessions of the memory measurement (default 10000)")
    parser.add_argument(
        "--skip",
        choices=(
            "throughput", "revocation", "scim", "offboarding", "audit", "ldap", "policies", "forward-auth", "load",
            "scaling",
        ),
        action="append",
        default=[],
    )  # fmt: skip
    parser.add_argument("--output", type=Path, default=OUTPUT)
    args = parser.parse_args(argv)
    quick = args.quick
    args.duration = args.duration or (2.0 if quick else 8.0)
    args.warmup = args.warmup if args.warmup is not None else (1.0 if quick else 2.0)
    args.rounds = args.rounds or (1 if quick else 6)
    args.trials = args.trials if args.trials is not None else (10 if quick else 100)
    args.scim_trials = args.scim_trials if args.scim_trials is not None else (5 if quick else 50)
    args.cli_trials = args.cli_trials if args.cli_trials is not None else (2 if quick else 5)
    args.offboard_agents = args.offboard_agents or (300 if quick else 10_000)
    args.forward_auth_trials = args.forward_auth_trials or (5 if quick else 30)
    args.load_agents = args.load_agents or (200 if quick else 1000)
    args.load_storm = args.load_storm or (20 if quick else 100)
    args.load_duration = args.load_duration or (20.0 if quick else 60.0)
    args.memory_sessions = args.memory_sessions or (2_000 if quick else 10_000)
    return args


def load_plan(args: argparse.Namespace) -> LoadPlan:
    single, logins = (4, 6) if args.quick else (50, 20)
    return LoadPlan(
        agents=args.load_agents, storm=args.load_storm, single=single, logins=logins, duration=args.load_duration,
        rate=args.load_rate, storms=1 if args.quick else 3,
    )  # fmt: skip


def postmaster_pid(server: PostgresServer) -> int:
    return int((server.data_dir / "postmaster.pid").read_text().split()[0])


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.monotonic()
    load_before = os.getloadavg()
    date = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    work = Path(tempfile.mkdtemp(prefix="channelgate-bench-"))
    cleanups = []
    throughput: ThroughputResult | None = None
    revocation: RevocationResult | None = None
    scim: ScimResult | None = None
    scim_disable: ScimDisableResult | None = None
    offboarding: OffboardingResult | None = None
    audit: AuditBenchResult | None = None
    ldap: LdapBenchResult | None = None
    policies: PolicyBenchResult | None = None
    forward_auth: ForwardAuthResult | None = None
    load: LoadResult | None = None
    scaling: ScalingResult | None = None
    plan = load_plan(args)
    try:
        nginx = Nginx()
        cleanups.append(nginx.close)
        nginx.start()
        redis_throughput, redis_revocation = RedisServer(), RedisServer()
        for server in (redis_throughput, redis_revocation):
            cleanups.append(server.close)
            server.start()

        memory_gw = Gateway("memory", f"sqlite+aiosqlite:///{work}/memory.db", nginx.upstream_port)
        redis_gw = Gateway("redis", f"sqlite+aiosqlite:///{work}/redis.db", nginx.upstream_port, redis_throughput.url)
        postgres: PostgresServer | None = None
        run_load = "load" not in args.skip or "scaling" not in args.skip
        if args.database == "postgres" or "scim" not in args.skip or run_load:
            # Its own mkdtemp directory: the postgres user must traverse every parent (see PostgresServer).
            postgres_dir = Path(tempfile.mkdtemp(prefix="channelgate-bench-pg-"))
            postgres = PostgresServer(postgres_dir)
            cleanups.append(lambda: shutil.rmtree(postgres_dir, ignore_errors=True))
            cleanups.append(postgres.stop)
            postgres.start()
        if args.database == "postgres":
            assert postgres is not None
            revocation_db = postgres.create_database("bench_revocation")
            database_label = "PostgreSQL 15 (asyncpg)"
        else:
            revocation_db = f"sqlite+aiosqlite:///{work}/revocation.db"
            database_label = "SQLite (shared file)"
        replicas = Gateway("revocation", revocation_db, nginx.upstream_port, redis_revocation.url, replicas=2)
        cleanups.append(replicas.stop)
        scim_replicas = Gateway("scim-disable", revocation_db, nginx.upstream_port, redis_revocation.url, replicas=2)
        cleanups.append(scim_replicas.stop)
        # The SCIM disable trials log in their own agents, after those of the revocation trials.
        first_scim_agent = args.trials + args.cli_trials
        forward_auth_bench = ForwardAuthBench(redis_throughput.url, redis_throughput.process.pid)
        load_stack: LoadStack | None = None
        if run_load:
            assert postgres is not None
            redis_load = RedisServer()
            cleanups.append(redis_load.close)
            redis_load.start()
            load_stack = LoadStack(postgres.create_database("bench_load"), redis_load.url)
            cleanups.append(load_stack.stop)

        provider = OidcProvider(
            provider_config(
                [
                    *memory_gw.redirect_uris,
                    *redis_gw.redirect_uris,
                    *replicas.redirect_uris,
                    *scim_replicas.redirect_uris,
                    *forward_auth_bench.redirect_uris,
                    *(load_stack.redirect_uris if load_stack is not None else []),
                ],
                accounts=(
                    *STANDARD_ACCOUNTS,
                    *bench_accounts(max(first_scim_agent + args.scim_trials, args.forward_auth_trials, plan.logins)),
                ),
            )
        )
        cleanups.append(provider.close)
        provider.start()

        if "throughput" not in args.skip:
            throughput = run_throughput(
                nginx=nginx,
                issuer=provider.issuer,
                memory_gateway=memory_gw,
                redis_gateway=redis_gw,
                duration=args.duration,
                warmup=args.warmup,
                rounds=args.rounds,
            )
        if "revocation" not in args.skip:
            replicas.start(provider.issuer)
            revocation = asyncio.run(
                run_revocation(replicas, api_trials=args.trials, cli_trials=args.cli_trials, database=database_label)
            )
            replicas.stop()
        if "scim" not in args.skip:
            assert postgres is not None
            scim = run_scim_lookups(
                {
                    "SQLite (file, WAL)": f"sqlite+aiosqlite:///{work}/scim.db",
                    "PostgreSQL 15 (asyncpg)": postgres.create_database("bench_scim"),
                },
                issuer=provider.issuer,
                upstream_port=nginx.upstream_port,
                duration=args.duration,
                warmup=args.warmup,
            )
            if args.scim_trials:
                scim_replicas.start(provider.issuer)
                names = [f"agent{index:03d}" for index in range(first_scim_agent, first_scim_agent + args.scim_trials)]
                scim_disable = asyncio.run(run_scim_disable(scim_replicas, names, database=database_label))
                scim_replicas.stop()
        if "offboarding" not in args.skip:
            offboarding = run_offboarding(args.offboard_agents, max(100, args.offboard_agents // 10))
        if "audit" not in args.skip:
            audit = (
                run_audit(write_records=5_000, strict_seconds=1.0, verify_records=20_000, search_records=200_000,
                          search_queries=100)
                if args.quick
                else run_audit()
            )  # fmt: skip
        if "ldap" not in args.skip:
            ldap = run_ldap(trials=12 if args.quick else 60, agents=1_000 if args.quick else 10_000)
        if "policies" not in args.skip:
            policies = run_policy_decisions(requests=20_000 if args.quick else 200_000, work=work / "policies")
        if "forward-auth" not in args.skip:
            # Each gateway variant has its own database: the same agents are deprovisioned in each.
            forward_auth = forward_auth_bench.run(
                issuer=provider.issuer,
                duration=args.duration,
                warmup=args.warmup,
                rounds=max(1, args.rounds // 2),
                trials=args.forward_auth_trials,
            )
        if load_stack is not None:
            assert postgres is not None
            load_stack.start(provider.issuer)
            load_work = work / "load"
            load_work.mkdir()
            pg_pid = postmaster_pid(postgres)
            if "load" not in args.skip:
                load = asyncio.run(run_load_test(load_stack, plan, load_work, postgres_pid=pg_pid))
                live = load.live
            else:
                agents = asyncio.run(load_stack.provision(plan.agents))
                asyncio.run(load_stack.open_sessions(agents, plan.logins))
                live = {agent.name: agent.cookie for agent in agents}
            if "scaling" not in args.skip:
                roots = {f"replica {i}": pid for i, pid in enumerate(load_stack.gateway.pids)}
                roots |= {"postgresql": pg_pid, "nginx": load_stack.nginx.process.pid or 0}
                scaling = asyncio.run(
                    run_scaling(
                        load_stack, live, load_work, duration=args.duration, warmup=args.warmup,
                        rounds=max(1, args.rounds // 2), roots=roots, memory_sessions=args.memory_sessions,
                        cached_database_url=postgres.create_database("bench_load_cached"),
                    )
                )  # fmt: skip
    finally:
        for cleanup in reversed(cleanups):
            try:
                cleanup()
            except Exception as exc:
                print(f"cleanup failed: {exc}", file=sys.stderr)
        shutil.rmtree(work, ignore_errors=True)

    command = "python -m bench.run" + ("" if argv is None and len(sys.argv) == 1 else " " + shlex.join(sys.argv[1:]))
    machine = describe()
    # Everything shares the CPUs: other work on the machine during the run moves every figure.
    machine["Load average (1/5/15 min) before → after"] = (
        f"{' / '.join(f'{v:.2f}' for v in load_before)} → {' / '.join(f'{v:.2f}' for v in os.getloadavg())}"
    )
    previous = args.output.read_text(encoding="utf-8") if args.output.exists() else ""
    text = render(
        machine=machine,
        date=date,
        command=command,
        elapsed=time.monotonic() - started,
        throughput=throughput,
        revocation=revocation,
        quick=args.quick,
        scim=scim,
        scim_disable=scim_disable,
        offboarding=offboarding,
        audit=audit,
        ldap=ldap,
        policies=policies,
        forward_auth=forward_auth,
        load=load,
        scaling=scaling,
        kept=previous_sections(previous),
    )
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text, encoding="utf-8")
    print(f"wrote {args.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
