"""``[policies]``: where the Cedar policy files are and how a request's context is read for them; ``[forward_auth]``:
who may ask for decisions from another proxy."""

from __future__ import annotations

import ipaddress
import re
import zoneinfo
from pathlib import Path
from typing import Annotated

from pydantic import Field, SecretStr, field_validator, model_validator

from gateway.settings_section import Section
from policies.decision import DEFAULT_MFA_AMR

_HEADER = re.compile(r"[A-Za-z0-9-]{1,64}")


class PolicySettings(Section):
    #: Directories (their ``*.cedar`` files) and files of the policy set; empty: the packaged default set
    #: (policies/default: the route group rule).
    paths: tuple[Path, ...] = ()
    #: How often the files are checked for a change (a changed set is validated first; a bad one is refused and
    #: the set in force stays). 0 turns hot reload off.
    reload_interval_seconds: Annotated[float, Field(ge=0)] = 2.0
    #: The time zone of ``context.time`` (shifts are local time), an IANA name.
    timezone: str = "UTC"
    #: Named networks for ``context.network``, first match wins (e.g. office = ["10.20.0.0/16"]); a client
    #: address in none of them is "other". The address is the one ``[server] trusted_proxies`` establishes.
    networks: dict[str, tuple[str, ...]] = Field(default_factory=dict)
    #: ``amr`` values (RFC 8176) that make ``context.mfa`` true.
    mfa_amr_values: tuple[str, ...] = DEFAULT_MFA_AMR
    #: ``acr`` values that make ``context.mfa`` true (e.g. an IdP's "phr" / "urn:...:mfa").
    mfa_acr_values: tuple[str, ...] = ()
    #: A header a trusted front proxy sets to "managed" or "unmanaged" (device posture, e.g. from a client
    #: certificate check); read only from ``[server] trusted_proxies`` peers, else ``context.device`` is "unknown".
    device_header: str | None = None
    #: Decisions remembered per engine (a pure function of the query; a reload starts empty). 0: none, every
    #: request is evaluated by Cedar (for debugging; ~50-150 µs more per request, docs/benchmarks.md §7).
    decision_cache_size: Annotated[int, Field(ge=0)] = 65_536

    @field_validator("timezone")
    @classmethod
    def _timezone(cls, value: str) -> str:
        try:
            zoneinfo.ZoneInfo(value)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"{value!r} is not an IANA time zone (for example 'Asia/Seoul')") from exc
        return value

    @field_validator("networks")
    @classmethod
    def _networks(cls, value: dict[str, tuple[str, ...]]) -> dict[str, tuple[str, ...]]:
        for name, cidrs in value.items():
            if name == "other":
                raise ValueError('"other" is the name of every address outside the named networks')
            for cidr in cidrs:
                try:
                    ipaddress.ip_network(cidr, strict=False)
                except ValueError as exc:
                    raise ValueError(f"networks.{name}: {cidr!r} is not an IP address or CIDR network") from exc
        return value

    @field_validator("device_header")
    @classmethod
    def _device_header(cls, value: str | None) -> str | None:
        if value is not None and not _HEADER.fullmatch(value):
            raise ValueError(f"{value!r} is not a header name")
        return value.lower() if value else value


class ForwardAuthSettings(Section):
    """``[forward_auth]``: the decision endpoint ``/.channelgate/auth`` for nginx ``auth_request``, Traefik
    ForwardAuth and Envoy ``ext_authz`` (docs/forward-auth.md)."""

    enabled: bool = False
    #: Peers allowed to ask (the proxies' addresses); anyone else gets 404.
    trusted_callers: tuple[str, ...] = ("127.0.0.1/32", "::1/128")
    #: Sent by the proxy with every check (header ``X-Channelgate-Auth-Secret``). A 200 answer carries the
    #: channel credential for the proxy to set upstream: without this secret, an agent whose request the proxy
    #: passes to /.channelgate/auth could read it.
    secret: SecretStr | None = None

    @field_validator("trusted_callers")
    @classmethod
    def _callers(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for cidr in value:
            try:
                ipaddress.ip_network(cidr, strict=False)
            except ValueError as exc:
                raise ValueError(f"{cidr!r} is not an IP address or CIDR network") from exc
        return value

    @field_validator("secret")
    @classmethod
    def _not_the_samples_placeholder(cls, value: SecretStr | None) -> SecretStr | None:
        """No default credentials (ASVS V13): the nginx, Envoy and Traefik samples ship a ``CHANGE-ME…`` secret
        long enough to pass, and whoever reads the samples could ask for every channel's credential with it."""
        if value is not None and value.get_secret_value().upper().startswith("CHANGE-ME"):
            raise ValueError(
                "the secret is the samples' placeholder: generate one (python -c 'import secrets; "
                "print(secrets.token_urlsafe(32))'), set it here or in CHANNELGATE_FORWARD_AUTH__SECRET, and put the "
                "same value in the proxy's configuration"
            )
        return value

    @model_validator(mode="after")
    def _secret_when_enabled(self) -> ForwardAuthSettings:
        if self.enabled and (self.secret is None or len(self.secret.get_secret_value()) < 32):
            raise ValueError(
                "[forward_auth] enabled needs a secret of at least 32 characters (or CHANNELGATE_FORWARD_AUTH__SECRET):"
                " the proxy sends it with every check so that nobody else can read the channel credentials it answers"
            )
        return self
