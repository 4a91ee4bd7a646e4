"""``agents deprovision|status`` and ``deprovision list|approve|retry|work``: offboarding and its pipeline."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from urllib.parse import quote

import yarl

from gateway.cli.common import Subparsers, print_json, settings_of
from gateway.errors import ChannelgateError, ConfigError
from gateway.settings import Settings


async def _deprovision_direct(
    settings: Settings, agent: str, reason: str, successor: str | None = None
) -> dict[str, object]:
    from gateway.services import open_core

    services = open_core(settings)
    try:
        result = await services.killer.deprovision(agent, reason=reason, actor="cli", source="cli", successor=successor)
        return result.as_dict()
    finally:
        await services.close()


async def _deprovision_via_api(
    settings: Settings, agent: str, reason: str, successor: str | None = None
) -> dict[str, object]:
    """In-process sessions live in the running gateway, so ask it to do the kill through its admin API."""
    import aiohttp

    if not settings.admin.tokens:
        raise ConfigError("[admin] tokens is empty: the CLI needs an admin token to reach the running gateway.")
    token = settings.admin.tokens[0].get_secret_value()
    # Every character of the name encoded, dots too: "x/../alice" or ".." must not become another agent's path.
    name = quote(agent, safe="").replace(".", "%2E")
    url = yarl.URL(f"{_admin_origin(settings)}/.channelgate/admin/agents/{name}/deprovision", encoded=True)
    async with aiohttp.ClientSession() as http:
        try:
            async with http.post(
                url, json={"reason": reason, "successor": successor}, headers={"Authorization": f"Bearer {token}"}
            ) as response:
                body = await response.json(content_type=None)
                if response.status != 200:
                    raise ChannelgateError(f"the gateway refused: {body.get('message', response.status)}")
                return dict(body)
        except aiohttp.ClientConnectorError as exc:
            if not isinstance(exc.os_error, ConnectionRefusedError):
                raise ChannelgateError(
                    f"the running gateway at {_admin_origin(settings)} could not be reached ({exc.os_error}); nothing "
                    "was changed: its in-process sessions can only be ended through it. Try again once it answers."
                ) from None
            # Nothing listens at the gateway's own address, so no in-process session exists: disabling the agent in
            # the database is all. (Any other failure may be a running gateway: that is no reason to skip the kill.)
            result = await _deprovision_direct(settings, agent, reason, successor)
            result["note"] = (
                "no gateway was running; the agent is disabled and cannot log in; the channel steps run when a "
                "gateway starts (or: channelgate deprovision work)"
            )
            return result
        except aiohttp.ClientError as exc:
            raise ChannelgateError(
                f"the connection to the running gateway at {_admin_origin(settings)} failed ({type(exc).__name__}): "
                "the deprovisioning may or may not have taken place; run the command again once the gateway answers "
                "(a repeated deprovisioning joins the first)"
            ) from None


def _admin_origin(settings: Settings) -> str:
    """Where the CLI reaches the gateway it shares a configuration with: its listen address, loopback for a
    wildcard one."""
    host = settings.server.host
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)  # noqa: S104 - mapped away
    return f"http://[{host}]:{settings.server.port}" if ":" in host else f"http://{host}:{settings.server.port}"


def cmd_agents_deprovision(args: argparse.Namespace) -> int:
    settings = settings_of(args)
    started = time.perf_counter()
    if settings.sessions.store == "redis":
        result = asyncio.run(_deprovision_direct(settings, args.agent, args.reason, args.successor))
    else:
        result = asyncio.run(_deprovision_via_api(settings, args.agent, args.reason, args.successor))
    result["elapsed_ms"] = round((time.perf_counter() - started) * 1000, 1)
    print_json(result)
    missing = result.get("replicas_missing")
    if missing:
        print(f"warning: replicas did not confirm in time: {missing}", file=sys.stderr)
    pipeline = result.get("pipeline")
    if args.wait and isinstance(pipeline, dict):
        return asyncio.run(_wait_for_run(settings, str(pipeline["run_id"]), args.wait))
    return 0


async def _wait_for_run(settings: Settings, run_id: str, seconds: float) -> int:
    """Follow a run until it finishes (or ``seconds`` pass), printing each step as it changes; 0 only if done."""
    from gateway.deprovision.status import WAIT_ENDINGS, render_run, runs_with_steps
    from gateway.services import open_core

    services = open_core(settings)
    try:
        deadline = time.monotonic() + seconds
        shown = ""
        while True:
            run = await services.pipeline.get_run(run_id)
            if run is None:
                raise ChannelgateError(f"deprovisioning run {run_id} is not in the database")
            [entry] = await runs_with_steps(services.pipeline, [run])
            table = render_run(entry)
            if table != shown:
                print(table, flush=True)
                shown = table
            ending = WAIT_ENDINGS.get(run.state)
            if ending is not None:
                code, message = ending
                if message is not None:
                    print(message, file=sys.stderr)
                return code
            if time.monotonic() > deadline:
                print(f"still {run.state.value} after {seconds:g} s; the pipeline keeps going", file=sys.stderr)
                return 3
            await asyncio.sleep(0.5)
    finally:
        await services.close()


def cmd_agents_status(args: argparse.Namespace) -> int:
    from gateway.deprovision.status import agent_pipeline
    from gateway.services import open_core

    async def run() -> int:
        services = open_core(settings_of(args))
        try:
            agent = await services.agents.find(args.agent)
            if agent is None:
                print(f"no agent has the id or userName {args.agent!r}", file=sys.stderr)
                return 1
            sessions = await services.sessions.sessions_of(agent.id, time.time())
            print_json(
                {
                    "agent_id": agent.id,
                    "user_name": agent.user_name,
                    "active": agent.active,
                    "disabled_reason": agent.disabled_reason,
                    "live_sessions_in_shared_store": len(sessions)
                    if services.settings.sessions.store == "redis"
                    else "in-process (ask the running gateway)",
                    "deprovisioning": await agent_pipeline(services.pipeline, agent.id),
                }
            )
            return 0
        finally:
            await services.close()

    return asyncio.run(run())


def cmd_deprovision(args: argparse.Namespace) -> int:
    """``channelgate deprovision list|approve|retry|work``: the pipeline's runs, for operators."""
    from gateway.deprovision.operator import approve_runs, retry_run
    from gateway.deprovision.plan import RunState
    from gateway.deprovision.status import runs_with_steps
    from gateway.services import open_core, start_worker

    async def run() -> int:
        services = open_core(settings_of(args))
        try:
            pipeline = services.pipeline
            if args.dp_command == "list":
                states = [RunState(s) for s in args.state] if args.state else list(RunState)
                print_json(await runs_with_steps(pipeline, await pipeline.runs_in_state(states, args.limit)))
            elif args.dp_command == "approve":
                if not args.all and not args.runs:
                    raise ConfigError(
                        "name the runs to approve, or --all (see: channelgate deprovision list --state held)"
                    )
                chosen = None if args.all else args.runs
                approved = await approve_runs(services.database, pipeline, services.audit, chosen, f"cli:{args.actor}")
                print_json({"approved": approved})
                if not approved:
                    print("no held run matched", file=sys.stderr)
                    return 1
            elif args.dp_command == "retry":
                count = await retry_run(services.database, pipeline, services.audit, args.run, "cli")
                print_json({"run_id": args.run, "steps_requeued": count})
                if not count:
                    print("that run has no dead, failed or blocked step", file=sys.stderr)
                    return 1
            else:
                services.audit.start()
                idle = await start_worker(services).drain(args.within)
                print_json({"idle": idle, "counts": {k.value: v for k, v in (await pipeline.count_steps()).items()}})
                return 0 if idle else 3
            return 0
        finally:
            await services.close()

    return asyncio.run(run())


def register(sub: Subparsers) -> None:
    agents = sub.add_parser("agents", help="agents").add_subparsers(dest="agents_command", required=True)
    p = agents.add_parser("deprovision", help="end an agent's access everywhere, now")
    p.add_argument("agent", help="agent id or userName")
    p.add_argument("--reason", required=True)
    p.add_argument("--successor", help="userName who takes the agent's open tickets (default: the agent's manager)")
    p.add_argument(
        "--wait", type=float, nargs="?", const=120.0, default=None, metavar="SECONDS",
        help="follow the channel steps until the pipeline finishes (default 120 s), printing each receipt",
    )  # fmt: skip
    p.set_defaults(func=cmd_agents_deprovision)
    p = agents.add_parser("status", help="show an agent")
    p.add_argument("agent")
    p.set_defaults(func=cmd_agents_status)

    dp = sub.add_parser("deprovision", help="the deprovisioning pipeline's runs").add_subparsers(
        dest="dp_command", required=True
    )
    p = dp.add_parser("list", help="runs with every step per channel")
    p.add_argument("--state", action="append", choices=["running", "held", "done", "attention", "superseded"])
    p.add_argument("--limit", type=int, default=100)
    p.set_defaults(func=cmd_deprovision)
    p = dp.add_parser("approve", help="release runs held by the mass-deletion guard")
    p.add_argument("runs", nargs="*", help="run ids")
    p.add_argument("--all", action="store_true", help="every held run")
    p.add_argument("--actor", default=os.environ.get("USER", "operator"), help="who approves (recorded)")
    p.set_defaults(func=cmd_deprovision)
    p = dp.add_parser("retry", help="give a run's dead, failed and blocked steps a fresh retry budget")
    p.add_argument("run")
    p.set_defaults(func=cmd_deprovision)
    p = dp.add_parser("work", help="run due steps in this process until none is due (no gateway needed)")
    p.add_argument("--within", type=float, default=300.0, help="give up after this many seconds")
    p.set_defaults(func=cmd_deprovision)
