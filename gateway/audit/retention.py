"""Retention: access records keep their content for ``[audit] retention_days`` (PIPA: 1-2 years), records of
access-right grants and removals for ``grant_retention_days`` (PIPA art. 5: 3 years); the chain stays verifiable.

A purge never rewrites the chain. Records past retention become stubs: their content columns are emptied and
``purged`` set, while ``seq``, ``time``, ``kind`` and the chain columns stay, so every link still verifies (the
link hashes ``content_hash``, not the content). Only records past the longest retention are deleted, and only as
a prefix of the chain: the position and hash of the last one deleted become the anchor verification starts
from, and an ``audit_purge`` record written in the same transaction — itself chained and checkpointed — names
that anchor, so an anchor moved by hand is detected (``gateway.audit.verify``).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from functools import partial

from gateway.audit.canonical import GENESIS, canonical_time
from gateway.audit.kinds import GRANT_KINDS, PURGE_KIND
from gateway.audit.settings import AuditSettings
from gateway.storage.access_log import AccessRecord
from gateway.storage.audit_chain import Anchor, ChainPurger, PurgeCounts
from gateway.timeutil import utcnow

#: Rows handled per transaction (the chain lock is held meanwhile); a purge loops until nothing is left.
PURGE_BATCH = 20_000


class Retention:
    def __init__(self, purger: ChainPurger, settings: AuditSettings, clock: Callable[[], datetime] = utcnow) -> None:
        self._purger = purger
        self._settings = settings
        self._clock = clock

    async def purge(self, *, limit: int = PURGE_BATCH) -> PurgeCounts:
        """Apply retention until nothing is due; return the totals (and the final anchor)."""
        stubbed = deleted = 0
        anchor: Anchor | None = None
        while True:
            now = self._clock()
            content_before = now - timedelta(days=self._settings.retention_days)
            delete_before = now - timedelta(days=self._settings.grant_retention_days)
            counts = await self._purger.purge(
                content_before=content_before,
                delete_before=delete_before,
                keep_content_kinds=GRANT_KINDS,
                limit=limit,
                record=partial(self._record, now=now, content_before=content_before, delete_before=delete_before),
                at=now,
            )
            stubbed, deleted, anchor = stubbed + counts.stubbed, deleted + counts.deleted, counts.anchor or anchor
            if counts.stubbed < limit and counts.deleted < limit:
                return PurgeCounts(stubbed, deleted, anchor)

    def _record(
        self, anchor: Anchor | None, stubbed: int, deleted: int, *, now: datetime, content_before: datetime,
        delete_before: datetime,
    ) -> AccessRecord:  # fmt: skip
        """The ``audit_purge`` record: what was purged, and the anchor verification now starts from."""
        return AccessRecord(
            time=now,
            kind=PURGE_KIND,
            actor="retention",
            decision="purged",
            reason=f"retention {self._settings.retention_days} days, grants {self._settings.grant_retention_days} days",
            detail={
                "anchor_pos": anchor.chain_pos if anchor is not None else 0,
                "anchor_hash": anchor.hash if anchor is not None else GENESIS,
                "stubbed": stubbed,
                "deleted": deleted,
                "content_before": canonical_time(content_before),
                "delete_before": canonical_time(delete_before),
            },
        )
