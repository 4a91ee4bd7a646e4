"""``[audit]``: retention, the chain's sealer and signed checkpoints, SIEM forwarders (issue 5).

PIPA's safety-measure standard (art. 8) asks for the access records of personal-data handlers to be kept at
least one year (two for large handlers), and the history of access-right grants at least three (art. 5):
shorter settings are refused rather than silently accepted.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import Field, SecretStr, field_validator, model_validator

from gateway.settings_section import Section


def host_port(url: str) -> str:
    """``host[:port]`` of ``url`` for messages and logs: never its ``user:password@`` (RFC 3986 §3.2.1 userinfo)."""
    parts = urlsplit(url)
    host = parts.hostname or "?"
    host = f"[{host}]" if ":" in host else host
    try:
        port = parts.port
    except ValueError:
        port = None
    return host if port is None else f"{host}:{port}"


class CheckpointSettings(Section):
    """Signed checkpoints (Ed25519) of the chain's head, written outside the database so that a truncated tail
    or a rewritten chain is detectable (``channelgate audit verify``)."""

    #: How often a checkpoint is signed and written while records arrive.
    interval_seconds: Annotated[float, Field(gt=0)] = 300.0
    #: Where checkpoints go: ``file:///absolute/path.jsonl`` (appended, fsynced) or ``https://…`` (POSTed).
    sink: str | None = None
    #: Bearer token for an ``https`` sink.
    sink_token: SecretStr | None = None
    #: Key id → base64 of a 32-byte Ed25519 private key (``channelgate audit keygen``). Several during rotation.
    signing_keys: dict[str, SecretStr] = Field(default_factory=dict)
    active_key: str | None = None
    #: Key id → base64 public key of retired keys, still trusted when verifying older checkpoints.
    trusted_keys: dict[str, str] = Field(default_factory=dict)

    @field_validator("sink")
    @classmethod
    def _sink(cls, value: str | None) -> str | None:
        if value is None:
            return value
        parts = urlsplit(value)
        if parts.scheme == "file":
            if not parts.path.startswith("/") or parts.netloc not in ("", "localhost"):
                raise ValueError("a file sink must be an absolute path: file:///var/lib/channelgate/checkpoints.jsonl")
        elif parts.scheme not in ("https", "http") or not parts.netloc:
            raise ValueError("sink must be file:///absolute/path or https://host/path")
        return value

    @model_validator(mode="after")
    def _active_exists(self) -> CheckpointSettings:
        if self.signing_keys and (self.active_key or "") not in self.signing_keys:
            raise ValueError(f"active_key must name one of the signing_keys ({', '.join(sorted(self.signing_keys))})")
        if self.signing_keys and self.sink is None:
            raise ValueError("signing_keys are set but no sink: checkpoints must be written outside the database")
        # The bearer token would cross the network in clear text, as a forwarder's would.
        if self.sink_token is not None and not (self.sink or "").startswith("https://"):
            raise ValueError("a sink_token is only sent over https://: make the sink an https:// collector")
        if self.sink_token is not None and urlsplit(self.sink or "").password is not None:
            raise ValueError("give the collector a sink_token or user:password@ in the sink, not both")
        return self


ExportFormat = Literal["jsonl", "cef", "syslog", "ocsf"]


class ForwarderSettings(Section):
    """One continuous export to a SIEM: every sealed record, in chain order, at least once."""

    name: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$")]
    #: ``syslog+tcp://host:port``, ``syslog+tls://host:port`` (RFC 5425 framing) or ``https://host/path``.
    url: str
    format: ExportFormat = "syslog"
    #: CA bundle for TLS (default: the system's); verification cannot be turned off.
    ca_file: str | None = None
    #: Bearer token for ``https``.
    token: SecretStr | None = None
    batch_size: Annotated[int, Field(ge=1, le=10_000)] = 500

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("syslog+tcp", "syslog+tls", "https", "http") or not parts.hostname:
            raise ValueError("url must be syslog+tcp://host:port, syslog+tls://host:port or https://host/path")
        if parts.scheme.startswith("syslog") and parts.port is None:
            raise ValueError("a syslog url needs a port (RFC 5425's is 6514)")
        return value

    @model_validator(mode="after")
    def _token_over_tls(self) -> ForwarderSettings:
        # The token and the records (personal data) would cross the network in clear text.
        if self.token is not None and not self.url.startswith("https://"):
            raise ValueError("a forwarder token is only sent over https://")
        if self.token is not None and urlsplit(self.url).password is not None:
            raise ValueError("give the forwarder a token or user:password@ in its url, not both")
        return self


Weekday = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
_HOURS = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)-([01]\d|2[0-4]):([0-5]\d)$")


class ReviewSettings(Section):
    """``[audit.review]``: what the PIPA monthly review (safety-measure standard art. 8) counts as after-hours and
    as unusual volume (``channelgate report monthly``)."""

    #: IANA zone of the business hours, and of the month and days the review reports on.
    timezone: str = "Asia/Seoul"
    #: Local working hours, ``HH:MM-HH:MM`` (end exclusive; ``24:00`` for midnight).
    business_hours: str = "08:00-19:00"
    business_days: tuple[Weekday, ...] = ("mon", "tue", "wed", "thu", "fri")
    #: An agent's daily count is unusual above max(``volume_factor`` × the day's median over agents, the floor).
    volume_factor: Annotated[float, Field(gt=1)] = 3.0
    volume_floor_requests: Annotated[int, Field(ge=1)] = 200
    volume_floor_downloads: Annotated[int, Field(ge=1)] = 20

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r}; use an IANA name such as 'Asia/Seoul'") from None
        return value

    @field_validator("business_hours")
    @classmethod
    def _hours(cls, value: str) -> str:
        match = _HOURS.match(value)
        if match is None:
            raise ValueError("business_hours must be HH:MM-HH:MM, such as '08:00-19:00'")
        start, end = (int(match[1]) * 60 + int(match[2]), int(match[3]) * 60 + int(match[4]))
        if not start < end <= 24 * 60:
            raise ValueError("business_hours must end after they start, on the same day")
        return value

    @property
    def business_minutes(self) -> tuple[int, int]:
        """(first minute of the day inside business hours, first minute after them)."""
        start, end = self.business_hours.split("-")
        return int(start[:2]) * 60 + int(start[3:]), int(end[:2]) * 60 + int(end[3:])


class AuditSettings(Section):
    #: Days an access record keeps its content (PIPA: at least 1 year; 2 for large handlers).
    retention_days: Annotated[int, Field(ge=365)] = 730
    #: Days records of access-right grants and removals are kept (PIPA art. 5: at least 3 years).
    grant_retention_days: Annotated[int, Field(ge=1095)] = 1095
    #: How often the sealer chains newly committed records.
    seal_interval_seconds: Annotated[float, Field(gt=0, le=60)] = 0.5
    checkpoints: CheckpointSettings = Field(default_factory=CheckpointSettings)
    forwarders: tuple[ForwarderSettings, ...] = ()
    #: IANA Private Enterprise Number in the syslog export's SD-ID (``channelgate@PEN``, RFC 5424 §7.2.2); the
    #: default 32473 is the number reserved for documentation (RFC 5612): set your organisation's own.
    syslog_enterprise_number: Annotated[int, Field(ge=1)] = 32473
    review: ReviewSettings = Field(default_factory=ReviewSettings)

    @model_validator(mode="after")
    def _unique_forwarders(self) -> AuditSettings:
        names = [f.name for f in self.forwarders]
        if len(names) != len(set(names)):
            raise ValueError("two forwarders share a name")
        return self
