"""``audit search|export``: find access records by agent, channel, data subject, action, decision, kind and time,
and export them as JSON Lines, CEF, RFC 5424 syslog or OCSF. Registered under ``channelgate audit`` by
``gateway.cli.audit``. Each search and export is itself recorded first (``gateway/audit/search.py``)."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import TextIO

from gateway.audit.formats import FORMATS, formatter
from gateway.audit.formats._common import visible
from gateway.audit.formats.jsonl import dumps, record_dict
from gateway.audit.search import (
    TEXT_FILTERS,
    Search,
    encode_cursor,
    export_lines,
    parse_search,
    record_reading,
    to_query,
)
from gateway.cli.common import Subparsers, settings_of
from gateway.cli.reports import cli_actor, private_output
from gateway.errors import BadRequest
from gateway.storage.access_log import AccessRecord

BACKSLASH = "\\"
#: The columns of a record as the CLI lists it, in this order.
SHOWN = (
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
    "subject",
    "action",
    "actor",
    "reason",
)


def record_line(record: AccessRecord, columns: tuple[str, ...] = SHOWN) -> str:
    """One record on one line; values with their controls made visible (no terminal injection, ASVS 16.4.1)."""
    parts = []
    for name in columns:
        value = getattr(record, name)
        if value is not None:
            parts.append(f"{name}={visible(str(value).replace(BACKSLASH, BACKSLASH * 2))}")
    return " ".join(parts)


def _search_of(args: argparse.Namespace, *, export: bool) -> Search:
    values = {name: getattr(args, name) for name in (*TEXT_FILTERS, "since", "until")}
    if not export:
        values["limit"] = str(args.limit)
        values["before"] = args.before
    return parse_search(values, max_limit=10_000)


def _usage_error(exc: BadRequest) -> int:
    print(f"channelgate: {exc.message}", file=sys.stderr)
    return 2


def cmd_audit_search(args: argparse.Namespace) -> int:
    from gateway.services import open_core

    try:
        search = _search_of(args, export=False)
    except BadRequest as exc:
        return _usage_error(exc)

    async def run() -> int:
        services = open_core(settings_of(args))
        try:
            query = await to_query(search, services.agents)
            await record_reading(services.audit, search, actor=cli_actor())
            found = await services.access_log.search(query)
        finally:
            await services.close()
        following = encode_cursor(found[-1]) if len(found) == search.limit else None
        if args.json:
            print(dumps({"records": [record_dict(record) for record in found], "next": following}))
        else:
            for record in found:
                print(record_line(record))
            if following is not None:
                print(f"(more: --before {following})", file=sys.stderr)
        return 0

    return asyncio.run(run())


def cmd_audit_export(args: argparse.Namespace) -> int:
    from gateway.services import open_core

    try:
        search = _search_of(args, export=True)
    except BadRequest as exc:
        return _usage_error(exc)
    settings = settings_of(args)
    chosen = formatter(args.format, syslog_enterprise_number=settings.audit.syslog_enterprise_number)

    async def write(out: TextIO) -> int:
        services = open_core(settings)
        count = 0
        try:
            query = await to_query(search, services.agents)
            await record_reading(services.audit, search, actor=cli_actor(), export_format=args.format)
            async for line in export_lines(services.access_log, query, chosen):
                out.write(line)
                count += 1
        finally:
            await services.close()
        return count

    if args.output is None:
        asyncio.run(write(sys.stdout))
        return 0
    target = Path(args.output)
    # Private, and renamed into place at the end: a file named FILE is always a complete export.
    with private_output(target) as out:
        count = asyncio.run(write(out))
    print(f"{count} records written to {target}", file=sys.stderr)
    return 0


def _filters(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--agent", help="agent id or userName (a deleted agent's recorded userName works too)")
    parser.add_argument("--channel")
    parser.add_argument("--subject", help="data subject (e.g. a customer id)")
    parser.add_argument("--action", choices=("view", "change", "download", "export"))
    parser.add_argument("--decision", help="allow, deny, disabled, revoked ...")
    parser.add_argument("--kind", help="request, login, login_failed, logout, deprovision, scim ...")
    parser.add_argument("--since", help="ISO 8601, inclusive (UTC without an offset)")
    parser.add_argument("--until", help="ISO 8601, exclusive (UTC without an offset)")


def register(audit: Subparsers) -> None:
    p = audit.add_parser("search", help="search the access log (newest first)")
    _filters(p)
    p.add_argument("--limit", type=int, default=50)
    p.add_argument("--before", help="the cursor printed after a full page, for the next one")
    p.add_argument("--json", action="store_true", help="records and the next cursor as JSON")
    p.set_defaults(func=cmd_audit_search)
    p = audit.add_parser("export", help="export matching access records (newest first)")
    p.add_argument("--format", required=True, choices=tuple(FORMATS))
    _filters(p)
    p.add_argument("--output", "-o", help="file to write (default: standard output)")
    p.set_defaults(func=cmd_audit_export)
