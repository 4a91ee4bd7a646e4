"""The chain's state for operators and reviewers (``channelgate audit status``, the web console)."""

from __future__ import annotations

from typing import TYPE_CHECKING
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from gateway.services import Services


async def chain_status(services: Services) -> dict[str, object]:
    """Head, records waiting for the sealer, the newest checkpoint and whether the sink has it, the anchor."""
    store = services.sealer.store
    settings = services.settings.audit
    head = await store.head()
    unsealed, oldest = await store.unsealed()
    last = await store.last_checkpoint()
    anchor = await store.anchor()
    sink = settings.checkpoints.sink
    shown = None
    if sink is not None:
        # A file's path, or a collector's scheme and host only: its URL may carry credentials in the query.
        parts = urlsplit(sink)
        shown = sink if parts.scheme == "file" else f"{parts.scheme}://{parts.hostname}"
    return {
        "head": {"chain_pos": head.chain_pos, "seq": head.seq, "hash": head.hash},
        "unsealed": unsealed,
        "oldest_unsealed": oldest,
        "checkpoints": {
            "signing": services.sealer.signer.enabled,
            "active_key": settings.checkpoints.active_key,
            "sink": shown,
            "last": None
            if last is None
            else {
                "number": last.number,
                "chain_pos": last.chain_pos,
                "seq": last.seq,
                "time": last.time,
                "key_id": last.key_id,
                "delivered_at": last.delivered_at,
                "behind_head": head.chain_pos - last.chain_pos,
            },
        },
        "anchor": None if anchor is None else {"chain_pos": anchor.chain_pos, "purged_at": anchor.purged_at},
        "retention_days": settings.retention_days,
        "grant_retention_days": settings.grant_retention_days,
    }
