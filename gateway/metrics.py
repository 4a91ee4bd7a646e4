"""Prometheus metrics, one registry per app instance (so tests can build several apps in one process)."""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


@dataclass
class Metrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

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
        self.fail_closed = Counter(
            "channelgate_fail_closed", "Requests refused because a dependency was down", ["dependency"], registry=r
        )
