"""The directory sync's Prometheus series, on the gateway's registry."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge


class DirectoryMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.syncs = Counter(
            "channelgate_ldap_syncs", "Directory syncs by kind and outcome", ["kind", "outcome"], registry=registry
        )
        self.changes = Counter("channelgate_ldap_changes", "Changes a sync made, by kind", ["kind"], registry=registry)
        self.quarantined = Counter(
            "channelgate_ldap_quarantined",
            "Syncs held because they would disable too many agents (alert on any increase)",
            registry=registry,
        )
        self.feed_up = Gauge("channelgate_ldap_feed_up", "1 while the RFC 4533 change feed is live", registry=registry)
