"""``serve``, ``check-config``, ``migrate``: running the gateway and checking what it runs on."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from gateway.cli.common import Subparsers, settings_of
from gateway.errors import ConfigError
from gateway.settings import Settings, load_settings


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

    settings = settings_of(args)
    asyncio.run(upgrade_to_head(settings.database))
    print("database schema is up to date")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from gateway.app import create_app
    from gateway.forward_auth_protocol import forward_auth_protocol
    from gateway.storage.migrate import upgrade_to_head

    settings = settings_of(args)
    problems = _deep_check(settings)
    if problems:
        raise ConfigError("; ".join(problems))
    if not args.no_migrate:
        asyncio.run(upgrade_to_head(settings.database))
    host = args.host or settings.server.host
    port = args.port or settings.server.port
    # The event loop shares the GIL with the access log's writer and sealer threads. Each time the loop releases
    # the GIL for a socket write it can wait up to the switch interval to get it back from a busy writer thread (a
    # convoy): at CPython's 5 ms forward-auth answered ~2,400 req/s (p99 ~290 ms) here, at 0.5 ms ~4,800 (p99
    # ~110 ms), while the inline proxy, which does more Python work per request, lost ~15 %. A setting, then.
    sys.setswitchinterval(settings.server.gil_switch_interval_ms / 1000)
    app = create_app(settings, freeze_heap=True)
    uvicorn.run(
        app,
        # uvicorn's HTTP protocol; kept forward-auth answers are written from its parser (forward_auth_protocol.py)
        http=forward_auth_protocol(app),
        host=host,
        port=port,
        log_level=args.log_level,
        proxy_headers=False,  # X-Forwarded-* are judged by our own trusted_proxies rule (ASVS 4.1.3)
        server_header=False,
        # uvicorn's own line per request would repeat the access log, with query strings (an OpenID callback's
        # code and state among them) that the access log leaves out on purpose; and it costs ~1 % of a request.
        access_log=False,
        ws="websockets-sansio",
        h11_max_incomplete_event_size=settings.server.max_header_bytes,
        ws_max_size=16 * 1024 * 1024,
    )
    return 0


def register(sub: Subparsers) -> None:
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
