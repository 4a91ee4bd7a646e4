"""``[audit]``: retention, the chain's sealer and signed checkpoints, SIEM forwarders (issue 5).

PIPA's safety-measure standard (art. 8) asks for the access records of personal-data handlers to be kept at
least one year (two for large handlers), and the history of access-right grants at least three (art. 5):
shorter settings are refused rather than silently accepted.
"""

from __future__ import annotations

from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator, model_validator

from gateway.settings_section import Section


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


class AuditSettings(Section):
    #: Days an access record keeps its content (PIPA: at least 1 year; 2 for large handlers).
    retention_days: Annotated[int, Field(ge=365)] = 730
    #: Days records of access-right grants and removals are kept (PIPA art. 5: at least 3 years).
    grant_retention_days: Annotated[int, Field(ge=1095)] = 1095
    #: How often the sealer chains newly committed records.
    seal_interval_seconds: Annotated[float, Field(gt=0, le=60)] = 0.5
    checkpoints: CheckpointSettings = Field(default_factory=CheckpointSettings)
    forwarders: tuple[ForwarderSettings, ...] = ()

    @model_validator(mode="after")
    def _unique_forwarders(self) -> AuditSettings:
        names = [f.name for f in self.forwarders]
        if len(names) != len(set(names)):
            raise ValueError("two forwarders share a name")
        return self
