"""``report …``: the offboarding evidence pack of an agent and the PIPA monthly review, as HTML or JSON."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import getpass
import json
import os
import secrets
import sys
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import TextIO

from gateway.cli.common import Subparsers, settings_of
from gateway.errors import BadRequest
from gateway.services import Services


@contextlib.contextmanager
def private_output(target: Path) -> Iterator[TextIO]:
    """A file of mode 0600 (reports and exports hold personal data, PIPA art. 29) that becomes ``target`` once
    complete. It is written under a fresh name beside ``target``, created with ``O_EXCL | O_NOFOLLOW``: neither a
    file already there (with its own mode) nor a planted symlink (pointing elsewhere) is written through, and the
    rename replaces whatever ``target`` was, a link included, without following it. Removed if writing fails."""
    partial = target.with_name(f"{target.name}.{secrets.token_hex(6)}.partial")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    descriptor = os.open(partial, flags, 0o600)
    try:
        os.fchmod(descriptor, 0o600)  # exactly 0600, whatever the umask took away
        with os.fdopen(descriptor, "w", encoding="utf-8", newline="") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(partial, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            partial.unlink()
        raise


def cli_actor() -> str:
    """Who runs the command, for the access log's records of reading it."""
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):  # no login name (a container without a passwd entry)
        return f"cli:uid-{os.getuid()}"


def _write(text: str, output: str | None) -> None:
    """To ``output`` (:func:`private_output`), else to standard output."""
    if output is None:
        sys.stdout.write(text if text.endswith("\n") else text + "\n")
        return
    path = Path(output)
    with private_output(path) as handle:
        handle.write(text)
    print(f"channelgate: report written to {path}", file=sys.stderr)


def _run(args: argparse.Namespace, make: Callable[[Services], Awaitable[str]]) -> int:
    from gateway.services import open_core

    async def run() -> str:
        services = open_core(settings_of(args))
        try:
            return await make(services)
        finally:
            await services.close()

    try:
        text = asyncio.run(run())
    except BadRequest as exc:
        print(f"channelgate: {exc.message}", file=sys.stderr)
        return 2  # bad usage, as the CLI's exit codes say
    _write(text, args.output)
    return 0


def _json(value: dict[str, object]) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False, sort_keys=False)


def cmd_report_agent(args: argparse.Namespace) -> int:
    from gateway.reports.agent import build_agent_report
    from gateway.reports.reading import Reader, record_report_view
    from gateway.reports.render import render_agent_html

    async def make(services: Services) -> str:
        await record_report_view(services.audit, Reader(cli_actor()), "agent", args.agent)
        report = await build_agent_report(services, args.agent)
        return render_agent_html(report) if args.format == "html" else _json(report.as_dict())

    return _run(args, make)


def cmd_report_monthly(args: argparse.Namespace) -> int:
    from gateway.reports.monthly import build_monthly_report
    from gateway.reports.reading import Reader, record_report_view
    from gateway.reports.render import render_monthly_html

    async def make(services: Services) -> str:
        await record_report_view(services.audit, Reader(cli_actor()), "monthly", args.month)
        report = await build_monthly_report(services, args.month)
        return render_monthly_html(report) if args.format == "html" else _json(report.as_dict())

    return _run(args, make)


def register(sub: Subparsers) -> None:
    report = sub.add_parser("report", help="security reports").add_subparsers(dest="report_command", required=True)
    p = report.add_parser("agent", help="an agent's offboarding evidence: activity, hand-overs, receipts, final check")
    p.add_argument("agent", help="the agent's id or userName (deleted agents too)")
    p.set_defaults(func=cmd_report_agent)
    m = report.add_parser("monthly", help="the PIPA monthly review of the access records")
    m.add_argument("month", help="YYYY-MM, in [audit.review] timezone")
    m.set_defaults(func=cmd_report_monthly)
    for parser in (p, m):
        parser.add_argument("--format", choices=("html", "json"), default="html")
        parser.add_argument("--output", "-o", help="write to this file (mode 0600) instead of standard output")
