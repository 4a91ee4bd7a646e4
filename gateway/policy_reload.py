"""Hot reload of the policy files: looked at every ``[policies] reload_interval_seconds``, validated before use.

A changed set that does not validate is refused and the set in force stays; either outcome is logged and
written to the access log (kind ``policy_reload``: the new set's SHA-256, or the refusal with its reason), so a
reviewer can tell which rules were in force when a request was decided. Every replica watches its own copy of the
files (a Kubernetes ConfigMap updates them all within a minute or so).
"""

from __future__ import annotations

import asyncio
import logging

from gateway.audit.writer import AuditLog
from gateway.errors import ChannelgateError
from gateway.policy_point import PolicyPoint, Reloaded
from gateway.storage.access_log import AccessRecord
from gateway.timeutil import utcnow

log = logging.getLogger("channelgate.policies")


def reload_record(outcome: Reloaded, replica_id: str) -> AccessRecord:
    return AccessRecord(
        time=utcnow(),
        kind="policy_reload",
        actor=f"replica:{replica_id}",
        decision="allow" if outcome.error is None else "deny",
        reason=outcome.digest if outcome.error is None else "policy_set_refused",
        detail={
            "previous": outcome.previous,
            **({"files": list(outcome.files)} if outcome.error is None else {"error": outcome.error[:2000]}),
        },
    )


async def watch_policies(point: PolicyPoint, audit: AuditLog, replica_id: str, interval: float) -> None:
    """Until cancelled: reload when the files changed and settled (``PolicyPoint.reload_if_changed``: the same on
    two polls and while read) and record the outcome."""
    while True:
        await asyncio.sleep(interval)
        outcome = await asyncio.to_thread(point.reload_if_changed)
        if outcome is None:
            continue
        try:
            await audit.write(reload_record(outcome, replica_id))
        except ChannelgateError as exc:
            log.error("could not record the policy reload in the access log: %s", exc.message)
