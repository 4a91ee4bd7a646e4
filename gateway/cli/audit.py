"""``audit …``: reading the access log."""

from __future__ import annotations

import argparse
import asyncio
import contextlib

from gateway.cli import audit_chain, audit_search
from gateway.cli.common import Subparsers, settings_of

#: The tail keeps its columns: ``audit search``'s but the data subject, action and actor, which are read through the
#: search, itself recorded before it reads (``gateway/audit/search.py``).
_TAIL = tuple(name for name in audit_search.SHOWN if name not in {"subject", "action", "actor"})


def cmd_audit_tail(args: argparse.Namespace) -> int:
    from gateway.services import open_core

    async def run() -> None:
        services = open_core(settings_of(args))
        repository = services.audit._repository
        try:
            records = await repository.tail(args.n)
            last = 0
            for record in records:
                print(audit_search.record_line(record, _TAIL))
                last = record.seq or last
            while args.follow:
                await asyncio.sleep(0.5)
                for record in await repository.after(last, 1000):
                    print(audit_search.record_line(record, _TAIL), flush=True)
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
