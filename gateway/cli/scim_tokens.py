"""``scim-tokens create|list|revoke``: one bearer token per IdP client, stored hashed."""

from __future__ import annotations

import argparse
import asyncio
import sys

from gateway.cli.common import Subparsers, print_json, settings_of
from gateway.errors import ConfigError


def cmd_scim_tokens(args: argparse.Namespace) -> int:
    """Create (printed once, stored as SHA-256), list or revoke the bearer token of a SCIM client."""
    from gateway.storage.database import Database
    from gateway.storage.scim_tokens import ScimTokenRepository
    from gateway.timeutil import utcnow

    async def run() -> int:
        database = Database.from_settings(settings_of(args).database)
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
                print_json(
                    [
                        {"name": t.name, "active": t.active, "created_at": t.created_at, "last_used_at": t.last_used_at}
                        for t in await tokens.list()
                    ]
                )
            return 0
        finally:
            await database.dispose()

    return asyncio.run(run())


def register(sub: Subparsers) -> None:
    scim = sub.add_parser("scim-tokens", help="SCIM client tokens").add_subparsers(dest="scim_command", required=True)
    p = scim.add_parser("create", help="create a SCIM client's bearer token and print it once")
    p.add_argument("name")
    p.add_argument("--token-stdin", action="store_true", help="use the token read from stdin (pre-shared)")
    p.set_defaults(func=cmd_scim_tokens)
    p = scim.add_parser("revoke", help="revoke a SCIM client's token")
    p.add_argument("name")
    p.set_defaults(func=cmd_scim_tokens)
    scim.add_parser("list", help="list SCIM clients (never the tokens)").set_defaults(func=cmd_scim_tokens)
