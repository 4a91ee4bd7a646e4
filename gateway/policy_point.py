"""The policy decision point of a running gateway: the engine in force and the request context it is given.

Both the inline proxy and the forward-auth endpoint ask ``PolicyPoint.decide``, so a rule is enforced
identically whichever proxy carries the request. The engine is replaced as a whole when the policy files change
(``reload_if_changed``, validated first): a request sees either the old set or the new one, never a mixture, and
its decision names the engine that made it (``Decision.engine_id``).
"""

from __future__ import annotations

import ipaddress
import logging
import zoneinfo
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from gateway.addresses import parse_address, within
from gateway.settings_policies import PolicySettings
from policies.decision import Clock, Context, Decision, Query, Subject, Target, has_mfa
from policies.engine import PolicyEngine
from policies.loader import Fingerprint, PolicySource, default_policy_dir, fingerprint, load, read_sources

log = logging.getLogger("channelgate.policies")

_Network = ipaddress.IPv4Network | ipaddress.IPv6Network
_DEVICE_STATES = frozenset({"managed", "unmanaged"})


def device_value(values: Sequence[str]) -> str | None:
    """The device header's value when the request carries it once; None (read as "unknown") otherwise.

    A trusted front proxy must replace the client's copy; one that appends its own instead (``add_header``-style
    configurations, Envoy's ``append_action`` default) forwards the client's line first. Taking either line would
    let a client claim a managed device, so a repeated header decides nothing (fail closed).
    """
    return values[0] if len(values) == 1 else None


@dataclass(frozen=True, slots=True)
class Reloaded:
    """The outcome of a reload attempt: the new digest, or the error that kept the old set."""

    digest: str | None
    previous: str
    error: str | None = None
    files: tuple[str, ...] = ()


class PolicyPoint:
    def __init__(self, settings: PolicySettings, trusted_proxies: Sequence[str] = ()) -> None:
        self.settings = settings
        self.paths: list[Path] = list(settings.paths) or [default_policy_dir()]
        before = fingerprint(self.paths)
        #: Raises PolicySetError: a gateway never starts without a valid policy set.
        sources = read_sources(self.paths)
        #: The files' state in force; () when they changed while being read, so the first settled poll reloads.
        self._fingerprint: Fingerprint = before if fingerprint(self.paths) == before else ()
        #: The files' state the last poll saw (``reload_if_changed``).
        self._seen = self._fingerprint
        self.engine = self._engine(sources)
        self._zone = zoneinfo.ZoneInfo(settings.timezone)
        self._networks = [
            (name, tuple(ipaddress.ip_network(c, strict=False) for c in cidrs))
            for name, cidrs in settings.networks.items()
        ]
        self._network_of: dict[str, str] = {}
        self._trusted = tuple(ipaddress.ip_network(c, strict=False) for c in trusted_proxies)
        self._mfa_amr = frozenset(settings.mfa_amr_values)
        self._mfa_acr = frozenset(settings.mfa_acr_values)
        self._minute = -1
        self._clock = Clock(1, 0, 0)

    def _engine(self, sources: Sequence[PolicySource]) -> PolicyEngine:
        return PolicyEngine(load(sources), cache_size=self.settings.decision_cache_size)

    # -- deciding -----------------------------------------------------------------------------------------

    def decide(self, subject: Subject, target: Target, action: str, context: Context) -> Decision:
        return self.engine.decide(Query(subject, target, action, context))

    def context(
        self,
        *,
        client_ip: str,
        peer: str | None,
        acr: str | None,
        amr: Sequence[str],
        device_header: str | None,
        via: str,
        now: float,
    ) -> Context:
        """The request's circumstances for ``context`` in the policies (schema type RequestContext)."""
        amr_values, acr = tuple(amr), acr or ""
        return Context(
            time=self.clock(now),
            network=self.network(client_ip),
            mfa=has_mfa(amr_values, acr, self._mfa_amr, self._mfa_acr),
            acr=acr,
            amr=amr_values,
            device=self._device(peer, device_header),
            via=via,
        )

    def clock(self, now: float) -> Clock:
        minute = int(now // 60)
        if minute != self._minute:
            local = datetime.fromtimestamp(minute * 60, self._zone)
            self._clock = Clock(local.isoweekday(), local.hour, local.hour * 60 + local.minute)
            self._minute = minute
        return self._clock

    def network(self, client_ip: str) -> str:
        name = self._network_of.get(client_ip)
        if name is None:
            name = "other"
            address = parse_address(client_ip)
            if address is not None:
                name = next((n for n, nets in self._networks if within(address, nets)), "other")
            if len(self._network_of) >= 65_536:
                self._network_of.clear()
            self._network_of[client_ip] = name
        return name

    def _device(self, peer: str | None, value: str | None) -> str:
        """Device posture is believed only from a trusted front proxy, which must overwrite the client's copy."""
        if value is None or peer is None or not self._trusted:
            return "unknown"
        address = parse_address(peer)
        if address is None or not within(address, self._trusted):
            return "unknown"
        state = value.strip().lower()
        return state if state in _DEVICE_STATES else "unknown"

    # -- reloading ----------------------------------------------------------------------------------------

    def reload_if_changed(self) -> Reloaded | None:
        """Load the files again once a change has settled; None when there is nothing to load (yet).

        A writer that does not rename into place (cp, scp, an editor saving in place) leaves a half-written file
        for a moment, and the part before the cut may well be a valid set without the policies after it: a
        vanished forbid is a bypass. So a state of the files is loaded only when two consecutive polls saw the
        same names, sizes and mtimes, and only if they are still the same after reading; otherwise the next
        polls try again. A change is in force one poll later than it would be otherwise (docs/policies.md).
        """
        current = fingerprint(self.paths)
        settled, self._seen = current == self._seen, current
        if current == self._fingerprint or not settled:
            return None
        error: Exception | None = None
        try:
            sources = read_sources(self.paths)
        except Exception as exc:  # a refused set must never stop the gateway: the old one stays in force
            sources, error = [], exc
        if fingerprint(self.paths) != current:
            log.info("policy files changed while being read; loading them once they settle")
            return None
        self._fingerprint = current
        return self._refused(error) if error is not None else self.reload(sources)

    def reload(self, sources: Sequence[PolicySource] | None = None) -> Reloaded:
        """Validate the files (or ``sources`` read from them) and, only if the whole set is valid, put it in force."""
        previous = self.engine.digest
        try:
            engine = self._engine(read_sources(self.paths) if sources is None else sources)
        except Exception as exc:  # a refused set must never stop the gateway: the old one stays in force
            return self._refused(exc)
        self.engine = engine
        log.info("policy set %s in force (was %s)", engine.digest[:12], previous[:12])
        return Reloaded(engine.digest, previous, files=engine.bundle.sources)

    def _refused(self, exc: Exception) -> Reloaded:
        previous = self.engine.digest
        message = getattr(exc, "message", str(exc))
        log.error("policy reload refused, the set in force (%s) stays: %s", previous[:12], message)
        return Reloaded(None, previous, error=message)
