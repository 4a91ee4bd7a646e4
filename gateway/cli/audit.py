"""``audit …``: reading the access log."""

from __future__ import annotations

import argparse
import asyncio
import contextlib

from gateway.cli import audit_chain, audit_search
from gateway.cli.common import Subparsers, settings_of


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
        services = open_core(settings_of(args))
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


def register(sub: Subparsers) -> None:
    audit = sub.add_parser("audit", help="access log").add_subparsers(dest="audit_command", required=True)
    p = audit.add_parser("tail", help="show the newest access-log records")
    p.add_argument("-n", type=int, default=20)
    p.add_argument("--follow", "-f", action="store_true")
    p.set_defaults(func=cmd_audit_tail)
    audit_chain.register(audit)
    audit_search.register(audit)
