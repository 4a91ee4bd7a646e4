"""Prometheus metrics, one registry per app instance (so tests can build several apps in one process)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


@dataclass
class Metrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)
    _children: dict[tuple[Any, ...], Any] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        r = self.registry
        self.requests = Counter(
            "channelgate_requests", "Proxied requests by channel and status class", ["channel", "status"], registry=r
        )
        self.decisions = Counter(
            "channelgate_decisions", "Authorization decisions", ["channel", "decision"], registry=r
        )
        self.upstream_latency = Histogram(
            "channelgate_upstream_latency_seconds",
            "Time to the upstream's response headers",
            ["channel"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=r,
        )
        self.revocations = Counter(
            "channelgate_revocations", "Agent deprovisionings completed on this replica", registry=r
        )
        self.sessions_revoked = Counter("channelgate_sessions_revoked", "Sessions revoked", registry=r)
        self.logins = Counter("channelgate_logins", "Login attempts by outcome", ["outcome"], registry=r)
        self.websockets = Gauge("channelgate_websockets_open", "Open proxied WebSockets", registry=r)
        self.audit_queue = Gauge("channelgate_audit_queue", "Access-log records waiting to be written", registry=r)
        self.event_loop_tasks = Gauge(
            "channelgate_event_loop_tasks",
            "asyncio tasks alive in this replica (one per request in flight plus a few fixed ones: a count that "
            "keeps growing under a steady load is a leak)",
            registry=r,
        )
        self.pipeline_steps = Counter(
            "channelgate_deprovision_steps",
            "Deprovisioning step attempts recorded, by the state they left the step in",
            ["channel", "step", "state"],
            registry=r,
        )
        self.dead_letters = Counter(
            "channelgate_deprovision_dead_letters",
            "Deprovisioning steps that spent their retry budget (alert on any increase)",
            ["channel", "step"],
            registry=r,
        )
        self.guard_holds = Counter(
            "channelgate_deprovision_guard_holds",
            "Deprovisionings whose irreversible steps the mass-deletion guard held for approval (alert)",
            registry=r,
        )
        self.pipeline_backlog = Gauge(
            "channelgate_deprovision_backlog",
            "Deprovisioning steps by state, read from the database at each scrape (the same on every replica: "
            "aggregate with max, not sum; NaN when the database did not answer)",
            ["state"],
            registry=r,
        )
        self.pipeline_runs = Gauge(
            "channelgate_deprovision_runs",
            "Deprovisioning runs by state, read from the database at each scrape (alert on attention or held "
            "above 0; the same on every replica: aggregate with max; NaN when the database did not answer)",
            ["state"],
            registry=r,
        )
        self.upstream_refusals = Counter(
            "channelgate_upstream_refusals",
            "Upstream 401s (and cookie-jar login redirects) by what followed: resent once with a refreshed "
            "credential, passed on (the connector had nothing fresher), or passed on because the body was streamed",
            ["channel", "outcome"],
            registry=r,
        )
        self.session_store_eviction_unsafe = Counter(
            "channelgate_session_store_eviction_unsafe",
            "Times this replica found the session store's Redis set to evict keys (maxmemory-policy other than "
            "noeviction): a deprovisioning may miss sessions whose index was evicted (alert on any increase)",
            registry=r,
        )
        self.fail_closed = Counter(
            "channelgate_fail_closed", "Requests refused because a dependency was down", ["dependency"], registry=r
        )
        self.audit_chain_head = Gauge(
            "channelgate_audit_chain_head", "Chain position of the newest sealed access-log record", registry=r
        )
        self.audit_checkpoints = Counter(
            "channelgate_audit_checkpoints", "Signed checkpoints of the access log, by outcome", ["outcome"], registry=r
        )
        self.audit_seal_failures = Counter(
            "channelgate_audit_seal_failures", "Sealing passes of the access-log chain that failed", registry=r
        )

    # The per-request series, looked up once per label set: ``labels()`` validates and locks on every call, which
    # the profile of the inline proxy showed at ~2 % of a request. Label values are bounded (channels from the
    # config, status classes, allow/deny), so the caches are too.

    def request(self, channel: str, status: int) -> Any:
        return self._child(self.requests, channel, f"{status // 100}xx")

    def decision(self, channel: str, allowed: bool) -> Any:
        return self._child(self.decisions, channel, "allow" if allowed else "deny")

    def latency(self, channel: str) -> Any:
        return self._child(self.upstream_latency, channel)

    def upstream_refusal(self, channel: str, outcome: str) -> Any:
        return self._child(self.upstream_refusals, channel, outcome)

    def _child(self, metric: Counter | Histogram, *labels: str) -> Any:
        key = (id(metric), *labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child
