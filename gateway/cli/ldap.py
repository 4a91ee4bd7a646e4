"""``ldap sync|status|approve|set-bind-password``: the directory sync of ``[ldap]`` from the command line."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from gateway.cli.common import Subparsers, print_json, settings_of
from gateway.errors import ChannelgateError, ConfigError

if TYPE_CHECKING:
    from gateway.directory.sync import DirectorySync
    from gateway.services import Services


def _with_sync(args: argparse.Namespace, action: Callable[[Services, DirectorySync], Awaitable[int]]) -> int:
    from gateway.directory.wiring import open_directory_sync
    from gateway.services import open_core

    settings = settings_of(args)
    if settings.ldap is None:
        raise ConfigError("no [ldap] section is configured")
    ldap = settings.ldap

    async def run() -> int:
        services = open_core(settings)
        services.audit.start()
        try:
            return await action(services, open_directory_sync(services, ldap, metrics=False))
        finally:
            await services.close()

    return asyncio.run(run())


def cmd_ldap_sync(args: argparse.Namespace) -> int:
    """A full reconciliation now; ``--dry-run`` prints what it would change and changes nothing."""
    from gateway.directory.runner import sync_lease

    async def action(_: Services, sync: DirectorySync) -> int:
        if args.dry_run:
            report = await sync.full(dry_run=True)
        else:
            lease = sync_lease(sync)
            if not await lease.hold():
                raise ChannelgateError(
                    "A gateway replica is running this directory's sync (it holds the sync lease); it reconciles on "
                    "its own schedule. Use --dry-run to see the planned changes."
                )
            try:
                report = await sync.full()
            finally:
                await lease.release()
        _print_report(report.as_dict(), as_json=args.json)
        return 1 if report.failed else 0

    return _with_sync(args, action)


def _print_report(report: dict[str, Any], *, as_json: bool) -> None:
    if as_json:
        print_json(report)
        return
    mode = "planned (dry run, nothing changed)" if report["dry_run"] else "applied"
    print(f"{report['kind']} sync: {report['users_read']} users read, {report['active_agents']} active agents")
    for line in report["planned"]:
        print(f"  {line}")
    if not report["planned"]:
        print("  no change")
    print(f"{mode}: {report['applied'] or len(report['planned'])}")
    for line in report.get("failed") or ():
        print(f"FAILED: {line} (the other changes were applied; see the log)")
    if report["held_disables"]:
        held = report["quarantine_id"] or "(would be held)"
        print(f"QUARANTINED: {report['held_disables']} disables held, quarantine {held}; see 'channelgate ldap status'")


def cmd_ldap_status(args: argparse.Namespace) -> int:
    """The last syncs, the change feed's state and any quarantine."""

    async def action(_: Services, sync: DirectorySync) -> int:
        state = await sync.store.state()
        quarantines = await sync.store.quarantines()
        status = {
            "directory": sync.store.directory,
            "url": sync.settings.url,
            "last_full_at": state.last_full_at,
            "last_incremental_at": state.last_incremental_at,
            "high_water": state.high_water,
            "feed": state.feed_state or "off",
            "last_feed_event_at": state.feed_event_at,
            "last_error": state.last_error,
            "last_result": state.last_result,
            "quarantines": [
                {
                    "id": q.id,
                    "state": q.state,
                    "created_at": q.created_at,
                    "disabling": q.disabling,
                    "active_agents": q.active_agents,
                    "agents": q.agents,
                    "approved_by": q.approved_by,
                }
                for q in quarantines
            ],
        }
        print_json(status)
        return 3 if any(q.state == "held" for q in quarantines) else 0

    return _with_sync(args, action)


def cmd_ldap_approve(args: argparse.Namespace) -> int:
    """Release a quarantined sync: its disables are carried out by the next full sync (now, here, when no
    gateway replica holds the sync lease)."""
    from gateway.directory.runner import sync_lease

    async def action(_: Services, sync: DirectorySync) -> int:
        if not await sync.approve(args.quarantine, args.actor):
            raise ChannelgateError(
                f"No held quarantine {args.quarantine!r} for directory {sync.store.directory!r}; "
                "see 'channelgate ldap status'."
            )
        lease = sync_lease(sync)
        if not await lease.hold():
            print(f"quarantine {args.quarantine} approved; the gateway's sync carries it out within seconds")
            return 0
        try:
            report = await sync.full()
        finally:
            await lease.release()
        print(f"quarantine {args.quarantine} approved and applied")
        _print_report(report.as_dict(), as_json=False)
        return 0

    return _with_sync(args, action)


def cmd_ldap_set_bind_password(args: argparse.Namespace) -> int:
    """Seal the bind password (read from standard input) with the vault."""
    from gateway.directory.credentials import store_bind_password
    from gateway.timeutil import utcnow

    value = sys.stdin.readline().rstrip("\r\n")
    if not value:
        raise ConfigError("no password on standard input (pipe it in: channelgate ldap set-bind-password < file)")

    async def action(services: Services, sync: DirectorySync) -> int:
        if services.vault is None:
            raise ConfigError("[vault] has no keys: add one (channelgate vault generate-key) first")
        await store_bind_password(sync.settings, services.credentials, services.vault, value, utcnow())
        print(f"bind password of directory {sync.store.directory!r} stored (encrypted)")
        return 0

    return _with_sync(args, action)


def register(sub: Subparsers) -> None:
    ldap = sub.add_parser("ldap", help="directory sync (LDAP, Active Directory)").add_subparsers(
        dest="ldap_command", required=True
    )
    p = ldap.add_parser("sync", help="reconcile with the directory now")
    p.add_argument("--dry-run", action="store_true", help="print the planned changes, change nothing")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_ldap_sync)
    ldap.add_parser("status", help="last syncs, change feed, quarantine (exit 3 while one is held)").set_defaults(
        func=cmd_ldap_status
    )
    p = ldap.add_parser("approve", help="release a sync held for disabling too many agents")
    p.add_argument("quarantine", help="the quarantine id (channelgate ldap status)")
    p.add_argument("--actor", default="cli", help="who approves, for the access log")
    p.set_defaults(func=cmd_ldap_approve)
    ldap.add_parser("set-bind-password", help="store the bind password (read from stdin), encrypted").set_defaults(
        func=cmd_ldap_set_bind_password
    )
