"""Whether the session store's Redis may evict keys, which would let access outlive a deprovisioning.

With ``maxmemory`` set and a ``maxmemory-policy`` other than ``noeviction``, a full Redis deletes keys to make
room: ``allkeys-*`` any key, ``volatile-*`` any key with a TTL, which is every key of this store (Redis
documentation, "Key eviction", https://redis.io/docs/reference/eviction). An evicted agent index (or IdP-session
index) leaves its sessions valid but unlisted, and the revocation that reads the index misses them. With
``noeviction`` a full Redis refuses writes instead, which the gateway answers with 503 (fail closed); with
``maxmemory 0`` there is no limit to reach. The server says which (``INFO memory``, fields ``maxmemory`` and
``maxmemory_policy``; INFO answers on managed services that disable CONFIG): the gateway refuses to start on such
a Redis, and a running one, whose Redis can change by ``CONFIG SET`` or by a failover to a replica configured
otherwise, compares at each heartbeat and readiness probe, logs an error once per change and is not ready
meanwhile. A Redis user not allowed INFO turns only this check off, with a warning, as it does the replication
check (gateway/sessions/redis_replication.py): refusing to start would make INFO a requirement of its own.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

log = logging.getLogger("channelgate.sessions")

SAFE_POLICY = "noeviction"


def eviction_problem(info: Mapping[str, Any]) -> str | None:
    """What is unsafe in ``INFO memory``'s answer ``info`` (which reports ``maxmemory``), or None."""
    limit = int(info["maxmemory"])
    policy = str(info.get("maxmemory_policy", "(not reported)"))
    if limit == 0 or policy == SAFE_POLICY:
        return None
    return (
        f"the session store's Redis may evict keys when full (maxmemory {limit} bytes, maxmemory-policy {policy}): "
        "an evicted index of an agent's sessions leaves them valid, and deprovisioning that agent would not end "
        "them; set maxmemory-policy noeviction on the Redis server (a full Redis then refuses writes and the "
        "gateway fails closed, 503), or maxmemory 0"
    )


class EvictionWatch:
    """Logs an unsafe eviction setting when it appears or changes (and counts it), and once when it is gone."""

    def __init__(self, on_unsafe: Callable[[], None] | None = None) -> None:
        self._on_unsafe = on_unsafe
        #: The problem last seen; None while the setting is safe or unknown.
        self.problem: str | None = None
        #: False once Redis refused INFO (an ACL user without it): nothing more to compare.
        self.active = True

    def observe(self, info: Mapping[str, Any]) -> None:
        if "maxmemory" not in info:
            self.refused("the answer has no maxmemory field")
            return
        problem = eviction_problem(info)
        if problem == self.problem:
            return
        if problem is not None:
            log.error("%s", problem)
            if self._on_unsafe is not None:
                self._on_unsafe()
        else:
            log.info("the session store's Redis evicts no keys again (maxmemory-policy noeviction or maxmemory 0)")
        self.problem = problem

    def unreachable_at_start(self) -> None:
        log.warning(
            "cannot check the session store's Redis for key eviction at start (it does not answer); it is checked "
            "at each heartbeat once it does"
        )

    def refused(self, reason: str) -> None:
        """Redis refused ``INFO memory``: say so once and stop asking."""
        log.warning(
            "cannot read the session store's Redis eviction setting (INFO memory: %s); allow its Redis user INFO "
            "so that a maxmemory-policy that may evict the sessions' indexes is detected",
            reason,
        )
        self.problem = None
        self.active = False
