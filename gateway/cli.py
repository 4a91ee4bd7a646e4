"""``channelgate`` — the command line for operators.

    channelgate serve                        run the gateway (migrates the database first)
    channelgate check-config FILE            validate a configuration, naming every bad field
    channelgate migrate                      bring the database schema up to date
    channelgate agents deprovision AGENT --reason TEXT [--successor USER] [--wait [S]]
    channelgate agents status AGENT          the agent, its sessions and every pipeline step per channel
    channelgate deprovision list [--state held|attention|running|done]
    channelgate deprovision approve RUN... | --all    release runs held by the mass-deletion guard
    channelgate deprovision retry RUN        fresh budget for a run's dead/failed/blocked steps
    channelgate deprovision work [--within S]        run due steps here until none is due
    channelgate channels set-credential CHANNEL   (reads the credential from standard input)
    channelgate channels set-agent-password CHANNEL AGENT   (a cookie_jar console's own password, from stdin)
    channelgate vault generate-key
    channelgate vault rotate
    channelgate audit tail [-n N] [--follow]
    channelgate scim-tokens create NAME | list | revoke NAME   (one bearer token per IdP client)

The configuration file comes from ``--config`` or ``CHANNELGATE_CONFIG`` (default ``channelgate.toml``).
Exit codes: 0 ok, 1 the action failed, 2 bad usage or configuration, 3 ``deprovision work`` stopped with
steps still due.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from gateway.errors import ChannelgateError, ConfigError
from gateway.settings import Settings, load_settings


def _settings(args: argparse.Namespace) -> Settings:
    return load_settings(Path(args.config) if args.config else None)


def _print_json(value: object) -> None:
    print(json.dumps(value, indent=2, default=str))


def _deep_check(settings: Settings) -> list[str]:
    """What the settings model cannot see alone: vault keys that decode, assertion keys that load."""
    from connectors.vault import Vault
    from gateway.proxy.assertion import AssertionSigner

    problems = []
    if settings.vault.keys:
        try:
            Vault.from_settings(settings.vault)
        except ConfigError as exc:
            problems.append(exc.message)
    try:
        AssertionSigner(settings.assertion, str(settings.server.public_url))
    except ConfigError as exc:
        problems.append(exc.message)
    return problems


def cmd_check_config(args: argparse.Namespace) -> int:
    settings = load_settings(Path(args.file))
    problems = _deep_check(settings)
    if problems:
        raise ConfigError(f"{args.file}: " + "; ".join(problems))
    print(f"{args.file}: valid")
    print(f"  sessions: {settings.sessions.store}; database: {settings.database.url.get_secret_value().split(':')[0]}")
    for route in settings.routes:
        print(
            f"  route {route.prefix} -> channel {route.channel} (groups: {', '.join(route.allowed_groups) or 'none'})"
        )
    return 0


def cmd_migrate(args: argparse.Namespace) -> int:
    from gateway.storage.migrate import upgrade_to_head

    settings = _settings(args)
    asyncio.run(upgrade_to_head(settings.database.url.get_secret_value()))
    print("database schema is up to date")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from gateway.app import create_app
    from gateway.storage.migrate import upgrade_to_head

    settings = _settings(args)
    problems = _deep_check(settings)
    if problems:
        raise ConfigError("; ".join(problems))
    if not args.no_migrate:
        asyncio.run(upgrade_to_head(settings.database.url.get_secret_value()))
    host = args.host or settings.server.host
    port = args.port or settings.server.port
    uvicorn.run(
        create_app(settings, freeze_heap=True),
        host=host,
        port=port,
        log_level=args.log_level,
        proxy_headers=False,  # X-Forwarded-* are judged by our own trusted_proxies rule (ASVS 4.1.3)
        server_header=False,
        ws="websockets-sansio",
        h11_max_incomplete_event_size=settings.server.max_header_bytes,
        ws_max_size=16 * 1024 * 1024,
    )
    return 0


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
    url = f"http://{settings.server.host}:{settings.server.port}/.channelgate/admin/agents/{agent}/deprovision"
    async with aiohttp.ClientSession() as http:
        try:
            async with http.post(
                url, json={"reason": reason, "successor": successor}, headers={"Authorization": f"Bearer {token}"}
            ) as response:
                body = await response.json(content_type=None)
                if response.status != 200:
                    raise ChannelgateError(f"the gateway refused: {body.get('message', response.status)}")
                return dict(body)
        except aiohttp.ClientConnectionError:
            # No gateway runs, so no in-process session exists: disabling the agent in the database is all.
            result = await _deprovision_direct(settings, agent, reason, successor)
            result["note"] = (
                "no gateway was running; the agent is disabled and cannot log in; the channel steps run when a "
                "gateway starts (or: channelgate deprovision work)"
            )
            return result


def cmd_agents_deprovision(args: argparse.Namespace) -> int:
    settings = _settings(args)
    started = time.perf_counter()
    if settings.sessions.store == "redis":
        result = asyncio.run(_deprovision_direct(settings, args.agent, args.reason, args.successor))
    else:
        result = asyncio.run(_deprovision_via_api(settings, args.agent, args.reason, args.successor))
    result["elapsed_ms"] = round((time.perf_counter() - started) * 1000, 1)
    _print_json(result)
    missing = result.get("replicas_missing")
    if missing:
        print(f"warning: replicas did not confirm in time: {missing}", file=sys.stderr)
    pipeline = result.get("pipeline")
    if args.wait and isinstance(pipeline, dict):
        return asyncio.run(_wait_for_run(settings, str(pipeline["run_id"]), args.wait))
    return 0


async def _wait_for_run(settings: Settings, run_id: str, seconds: float) -> int:
    """Follow a run until it finishes (or ``seconds`` pass), printing each step as it changes; 0 only if done."""
    from gateway.deprovision.plan import RunState
    from gateway.deprovision.status import render_run, runs_with_steps
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
            if run.state is RunState.DONE:
                return 0
            if run.state is RunState.ATTENTION:
                print(
                    "some steps did not complete; see the lines above (channelgate deprovision retry RUN)",
                    file=sys.stderr,
                )
                return 1
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
        services = open_core(_settings(args))
        try:
            agent = await services.agents.find(args.agent)
            if agent is None:
                print(f"no agent has the id or userName {args.agent!r}", file=sys.stderr)
                return 1
            sessions = await services.sessions.sessions_of(agent.id, time.time())
            _print_json(
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
        services = open_core(_settings(args))
        try:
            pipeline = services.pipeline
            if args.dp_command == "list":
                states = [RunState(s) for s in args.state] if args.state else list(RunState)
                _print_json(await runs_with_steps(pipeline, await pipeline.runs_in_state(states, args.limit)))
            elif args.dp_command == "approve":
                if not args.all and not args.runs:
                    raise ConfigError(
                        "name the runs to approve, or --all (see: channelgate deprovision list --state held)"
                    )
                chosen = None if args.all else args.runs
                approved = await approve_runs(services.database, pipeline, services.audit, chosen, f"cli:{args.actor}")
                _print_json({"approved": approved})
                if not approved:
                    print("no held run matched", file=sys.stderr)
                    return 1
            elif args.dp_command == "retry":
                count = await retry_run(services.database, pipeline, services.audit, args.run, "cli")
                _print_json({"run_id": args.run, "steps_requeued": count})
                if not count:
                    print("that run has no dead, failed or blocked step", file=sys.stderr)
                    return 1
            else:
                services.audit.start()
                idle = await start_worker(services).drain(args.within)
                _print_json({"idle": idle, "counts": {k.value: v for k, v in (await pipeline.count_steps()).items()}})
                return 0 if idle else 3
            return 0
        finally:
            await services.close()

    return asyncio.run(run())


def cmd_channels_set_credential(args: argparse.Namespace) -> int:
    from connectors.vault import store_credential
    from gateway.services import open_core
    from gateway.timeutil import utcnow

    settings = _settings(args)
    if args.channel not in settings.channels:
        raise ConfigError(f"channel {args.channel!r} is not configured (known: {', '.join(settings.channels)})")
    value = sys.stdin.readline().rstrip("\r\n")
    if not value:
        raise ConfigError('no credential on standard input (pipe it in: echo "$TOKEN" | channelgate channels ...)')

    async def run() -> None:
        services = open_core(settings)
        try:
            if services.vault is None:
                raise ConfigError("[vault] has no keys: add one (channelgate vault generate-key) first")
            await store_credential(services.credentials, services.vault, args.channel, value.encode(), utcnow())
        finally:
            await services.close()

    asyncio.run(run())
    print(f"credential for channel {args.channel!r} stored (encrypted)")
    return 0


def cmd_channels_set_agent_password(args: argparse.Namespace) -> int:
    """Store an agent's own password at a ``cookie_jar`` channel's console, sealed by the vault; every replica
    signs in with it from the next login on (a password the console refused is tried again at once)."""
    from connectors.cookie_jar import PASSWORD
    from connectors.secret import Secret
    from gateway.errors import NotFound
    from gateway.services import open_core
    from gateway.settings import CookieJarChannelSettings

    settings = _settings(args)
    channel = settings.channels.get(args.channel)
    if channel is None:
        raise ConfigError(f"channel {args.channel!r} is not configured (known: {', '.join(settings.channels)})")
    if not isinstance(channel, CookieJarChannelSettings):
        raise ConfigError(
            f'channel {args.channel!r} is kind {channel.kind!r}: only kind = "cookie_jar" channels sign in with '
            "an agent's own password"
        )
    value = sys.stdin.readline().rstrip("\r\n")
    if not value:
        raise ConfigError(
            "no password on standard input (pipe it in: channelgate channels set-agent-password ... < FILE)"
        )

    async def run() -> str:
        services = open_core(settings)
        try:
            if services.vault is None:
                raise ConfigError("[vault] has no keys: add one (channelgate vault generate-key) first")
            agent = await services.agents.find(args.agent)
            if agent is None:
                raise NotFound(f"no agent has the id or userName {args.agent!r}")
            await services.connector_contexts[args.channel].secrets.put(agent.id, PASSWORD, Secret(value))
            return agent.user_name
        finally:
            await services.close()

    user_name = asyncio.run(run())
    print(f"console password of {user_name} for channel {args.channel!r} stored (encrypted)")
    return 0


def cmd_vault_generate_key(args: argparse.Namespace) -> int:
    from connectors.vault import generate_key

    print(generate_key())
    return 0


def cmd_vault_rotate(args: argparse.Namespace) -> int:
    from connectors.vault import rotate_all
    from gateway.services import open_core
    from gateway.timeutil import utcnow

    async def run() -> int:
        services = open_core(_settings(args))
        try:
            if services.vault is None:
                raise ConfigError("[vault] has no keys")
            return await rotate_all(services.credentials, services.vault, utcnow())
        finally:
            await services.close()

    print(f"re-encrypted {asyncio.run(run())} credential(s) under the active key")
    return 0


def cmd_scim_tokens(args: argparse.Namespace) -> int:
    """Create (printed once, stored as SHA-256), list or revoke the bearer token of a SCIM client."""
    from gateway.storage.database import Database
    from gateway.storage.scim_tokens import ScimTokenRepository
    from gateway.timeutil import utcnow

    async def run() -> int:
        database = Database.from_settings(_settings(args).database)
        tokens = ScimTokenRepository(database.engine)
        try:
            if args.scim_command == "create":
                given = sys.stdin.readline().strip() if args.token_stdin else None
                if args.token_stdin and not given:
                    raise ConfigError("--token-stdin: no token on standard input")
                print(await tokens.create(args.name, utcnow(), given))
                print(f"token of SCIM client {args.name!r}: shown once, stored hashed", file=sys.stderr)
            elif args.scim_command == "revoke":
                await tokens.revoke(args.name, utcnow())
                print(f"token of SCIM client {args.name!r} revoked")
            else:
                _print_json(
                    [
                        {"name": t.name, "active": t.active, "created_at": t.created_at, "last_used_at": t.last_used_at}
                        for t in await tokens.list()
                    ]
                )
            return 0
        finally:
            await database.dispose()

    return asyncio.run(run())


def _format_record(record: object) -> str:
    fields = (
        "seq",
        "time",
        "kind",
        "agent_name",
        "source_ip",
        "channel",
        "method",
        "path",
        "status",
        "decision",
        "reason",
    )
    parts = []
    for name in fields:
        value = getattr(record, name, None)
        if value is not None:
            text = str(value).encode("unicode_escape").decode("ascii")  # no terminal injection (ASVS 16.4.1)
            parts.append(f"{name}={text}")
    return " ".join(parts)


def cmd_audit_tail(args: argparse.Namespace) -> int:
    from gateway.services import open_core

    async def run() -> None:
        services = open_core(_settings(args))
        repository = services.audit._repository
        try:
            records = await repository.tail(args.n)
            last = 0
            for record in records:
                print(_format_record(record))
                last = record.seq or last
            while args.follow:
                await asyncio.sleep(0.5)
                for record in await repository.after(last, 1000):
                    print(_format_record(record), flush=True)
                    last = record.seq or last
        finally:
            await services.close()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run())
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="channelgate", description="identity and access gateway for channel consoles")
    parser.add_argument("--config", help="configuration file (default: $CHANNELGATE_CONFIG or channelgate.toml)")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("serve", help="run the gateway")
    p.add_argument("--host")
    p.add_argument("--port", type=int)
    p.add_argument("--no-migrate", action="store_true", help="do not upgrade the database schema at start")
    p.add_argument("--log-level", default="info")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("check-config", help="validate a configuration file")
    p.add_argument("file")
    p.set_defaults(func=cmd_check_config)

    sub.add_parser("migrate", help="upgrade the database schema").set_defaults(func=cmd_migrate)

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
    p.add_argument("--state", action="append", choices=["running", "held", "done", "attention"])
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

    channels = sub.add_parser("channels", help="channel credentials").add_subparsers(dest="ch_command", required=True)
    p = channels.add_parser("set-credential", help="store a channel's credential (read from stdin), encrypted")
    p.add_argument("channel")
    p.set_defaults(func=cmd_channels_set_credential)
    p = channels.add_parser(
        "set-agent-password", help="store an agent's own console password (read from stdin) for a cookie_jar channel"
    )
    p.add_argument("channel")
    p.add_argument("agent", help="agent id or userName")
    p.set_defaults(func=cmd_channels_set_agent_password)

    vault = sub.add_parser("vault", help="vault keys").add_subparsers(dest="vault_command", required=True)
    vault.add_parser("generate-key", help="print a new random AES-256 key").set_defaults(func=cmd_vault_generate_key)
    vault.add_parser("rotate", help="re-encrypt every credential under the active key").set_defaults(
        func=cmd_vault_rotate
    )

    audit = sub.add_parser("audit", help="access log").add_subparsers(dest="audit_command", required=True)
    p = audit.add_parser("tail", help="show the newest access-log records")
    p.add_argument("-n", type=int, default=20)
    p.add_argument("--follow", "-f", action="store_true")
    p.set_defaults(func=cmd_audit_tail)

    scim = sub.add_parser("scim-tokens", help="SCIM client tokens").add_subparsers(dest="scim_command", required=True)
    p = scim.add_parser("create", help="create a SCIM client's bearer token and print it once")
    p.add_argument("name")
    p.add_argument("--token-stdin", action="store_true", help="use the token read from stdin (pre-shared)")
    p.set_defaults(func=cmd_scim_tokens)
    p = scim.add_parser("revoke", help="revoke a SCIM client's token")
    p.add_argument("name")
    p.set_defaults(func=cmd_scim_tokens)
    scim.add_parser("list", help="list SCIM clients (never the tokens)").set_defaults(func=cmd_scim_tokens)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code: int = args.func(args)
        return code
    except ConfigError as exc:
        print(f"channelgate: configuration error: {exc.message}", file=sys.stderr)
        return 2
    except ChannelgateError as exc:
        print(f"channelgate: {exc.message}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
