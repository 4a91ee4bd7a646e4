"""Whether the Redis primary's replicas match ``[sessions.redis] wait_for_replicas``, told to the operator.

``WAIT N`` makes a write that ends access count as done once N replicas hold it, any N of them. With more
replicas connected than N, Sentinel (or a managed service's failover) may promote one that had not confirmed: a
revocation acknowledged just before the failover can be missing there, and the sessions it ended are valid again.
With fewer connected than N, every write that ends access is refused (503, fail closed) until enough are back.
Either is a setting or an outage the operator must hear of, and the primary says how many replicas it has
(``INFO replication``, field ``connected_slaves``): the session store compares at each heartbeat and the log says
so once per change, not every five seconds.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

log = logging.getLogger("channelgate.sessions")


def replication_problem(info: Mapping[str, Any], wait_for: int) -> str | None:
    """What is wrong with ``INFO replication``'s answer ``info`` for ``wait_for_replicas = wait_for``, or None."""
    if info.get("role") != "master":
        return None  # a demoted primary or a replica, during a failover: the heartbeat follows Sentinel first
    connected = int(info.get("connected_slaves", 0))
    if connected < wait_for:
        return (
            f"the Redis primary has {connected} connected replica(s) and [sessions.redis] wait_for_replicas is "
            f"{wait_for}: every logout and revocation is refused (503) until {wait_for} are connected again; "
            "check the replicas' links to the primary (INFO replication)"
        )
    if connected > wait_for:
        confirmed = f"confirmed by {wait_for} of them" if wait_for else "not waited for (wait_for_replicas is 0)"
        return (
            f"the Redis primary has {connected} connected replica(s) and a revocation is {confirmed}: one "
            "acknowledged just before a failover may be missing on the replica promoted, and the sessions it "
            f"ended valid again; set [sessions.redis] wait_for_replicas = {connected}"
        )
    return None


class ReplicationWatch:
    """Logs a replication problem when it appears or changes, and once when it is gone."""

    def __init__(self, wait_for: int) -> None:
        self.wait_for = wait_for
        #: The problem last logged; None when there was none.
        self.problem: str | None = None
        #: False once Redis refused INFO (an ACL user without it): nothing more to compare.
        self.active = True

    def observe(self, info: Mapping[str, Any]) -> None:
        problem = replication_problem(info, self.wait_for)
        if problem == self.problem:
            return
        if problem is not None:
            log.warning("%s", problem)
        else:
            log.info("the Redis primary's connected replicas match wait_for_replicas (%d) again", self.wait_for)
        self.problem = problem

    def refused(self, reason: str) -> None:
        """Redis refused ``INFO replication``: say so once and stop asking."""
        log.warning(
            "cannot read the Redis primary's replicas (INFO replication: %s); allow the session store's Redis user "
            "INFO so that wait_for_replicas can be compared with them",
            reason,
        )
        self.active = False
