"""``audit verify|checkpoint|keygen|status|purge``: the access log's tamper-evident chain, for reviewers and
operators. Registered under ``channelgate audit`` by ``gateway.cli.audit``."""

from __future__ import annotations

import argparse
import asyncio
import sys
from datetime import timedelta
from pathlib import Path

from gateway.cli.common import Subparsers, print_json, settings_of
from gateway.errors import ConfigError


def cmd_audit_verify(args: argparse.Namespace) -> int:
    """Exit 0 when the chain verifies, 1 naming the first bad record, 2 when it cannot be checked as asked."""
    from gateway.audit.checkpoints import CheckpointSigner, file_sink_path
    from gateway.audit.verify import verify_chain
    from gateway.storage.audit_chain import ChainStore
    from gateway.storage.database import Database
    from gateway.timeutil import utcnow

    settings = settings_of(args)
    signer = CheckpointSigner(settings.audit.checkpoints)
    source = Path(args.checkpoints) if args.checkpoints else file_sink_path(settings.audit.checkpoints)
    lines: list[str] | None = None
    if source is not None:
        try:
            lines = source.read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            if signer.enabled:
                raise ConfigError(f"the checkpoint file {source} does not exist") from None
    elif signer.enabled:
        raise ConfigError(
            "checkpoints go to an HTTPS collector: download them to a file and pass it with --checkpoints FILE"
        )
    now = utcnow()
    cutoff = now - timedelta(days=settings.audit.retention_days)
    grant_cutoff = now - timedelta(days=settings.audit.grant_retention_days)

    async def run() -> int:
        database = Database.from_settings(settings.database)
        store = ChainStore(database.engine)
        try:
            report = await verify_chain(
                store,
                lines,
                signer.trusted,
                from_seq=args.from_seq,
                to_seq=args.to_seq,
                retention_cutoff=cutoff,
                grant_retention_cutoff=grant_cutoff,
                workers=args.workers,
            )
        finally:
            store.close()
            await database.dispose()
        if args.json:
            print_json(report.as_dict())
        for warning in report.warnings:
            print(f"warning: {warning}", file=sys.stderr)
        if report.problem is not None:
            print(f"FAILED at {report.problem}", file=sys.stderr)
            return 1
        if not args.json:
            last = report.last_checkpoint
            signed = (
                f"; {report.checkpoints} signed checkpoint(s), the newest #{last.number} at {last.time} by key "
                f"{last.key_id!r}"
                if last is not None
                else ""
            )
            print(
                f"OK: {report.checked} record(s) verified, seq {report.first_seq} to {report.last_seq} (chain "
                f"positions {report.first_pos}-{report.last_pos}, {report.purged} purged stub(s)){signed}; "
                f"{report.unsealed} record(s) not sealed yet"
            )
        return 0

    return asyncio.run(run())


def cmd_audit_checkpoint(args: argparse.Namespace) -> int:
    """Seal what has committed and sign a checkpoint now (before a backup, or at the end of a review)."""
    from gateway.services import open_core

    async def run() -> int:
        services = open_core(settings_of(args))
        try:
            if not services.sealer.signer.enabled:
                raise ConfigError("[audit.checkpoints] has no signing key (channelgate audit keygen)")
            head = await services.sealer.seal_all()
            row = await services.sealer.checkpoint(force=True)
            print_json({"chain_pos": head.chain_pos, "hash": head.hash, "checkpoint": row.number if row else None})
            return 0
        finally:
            await services.close()

    return asyncio.run(run())


def cmd_audit_status(args: argparse.Namespace) -> int:
    from gateway.audit.status import chain_status
    from gateway.services import open_core

    async def run() -> int:
        services = open_core(settings_of(args))
        try:
            print_json(await chain_status(services))
            return 0
        finally:
            await services.close()

    return asyncio.run(run())


def cmd_audit_purge(args: argparse.Namespace) -> int:
    """Apply retention now (the gateway does it hourly): stub expired records, delete the expired prefix."""
    from gateway.services import open_core

    async def run() -> int:
        services = open_core(settings_of(args))
        try:
            assert services.sealer.retention is not None
            await services.sealer.seal_all()
            counts = await services.sealer.retention.purge()
            head = await services.sealer.seal_all()
            anchor = counts.anchor
            print_json(
                {
                    "emptied": counts.stubbed,
                    "deleted": counts.deleted,
                    "anchor_chain_pos": None if anchor is None else anchor.chain_pos,
                    "head_chain_pos": head.chain_pos,
                }
            )
            return 0
        finally:
            await services.close()

    return asyncio.run(run())


def cmd_audit_keygen(args: argparse.Namespace) -> int:
    """Print a new Ed25519 checkpoint key: the private half for ``signing_keys``, the public for verifiers."""
    from gateway.audit.checkpoints import generate_key

    private, public = generate_key()
    print(f'signing_keys = {{ "{args.key_id}" = "{private}" }}   # secret: keep it in the secret store')
    print(f'trusted_keys = {{ "{args.key_id}" = "{public}" }}   # public: give it to every verifier')
    return 0


def register(audit: Subparsers) -> None:
    p = audit.add_parser("verify", help="check the access log's chain and signed checkpoints")
    p.add_argument("--from-seq", type=int, help="start at this record (default: the start of the log)")
    p.add_argument("--to-seq", type=int, help="stop at this record (default: the newest sealed one)")
    p.add_argument("--checkpoints", help="file of checkpoint lines (default: the file sink of the configuration)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument(
        "--workers", type=int, help="processes sharing the work (default: one per CPU for 200,000 records or more)"
    )
    p.set_defaults(func=cmd_audit_verify)
    p = audit.add_parser("checkpoint", help="seal and sign a checkpoint now")
    p.set_defaults(func=cmd_audit_checkpoint)
    audit.add_parser("status", help="the chain's head, unsealed records, checkpoints").set_defaults(
        func=cmd_audit_status
    )
    audit.add_parser("purge", help="apply retention now (the gateway does it hourly)").set_defaults(
        func=cmd_audit_purge
    )
    p = audit.add_parser("keygen", help="print a new Ed25519 checkpoint signing key")
    p.add_argument("--key-id", default="ck1", help="the key's id (rotate: a new id, the old one stays trusted)")
    p.set_defaults(func=cmd_audit_keygen)
