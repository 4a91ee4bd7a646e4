"""Settings: one TOML file plus ``CHANNELGATE_*`` environment overrides, validated once at start.

``CHANNELGATE_OIDC__CLIENT_SECRET=...`` overrides ``[oidc] client_secret``: sections and keys are joined by a
double underscore. Values are parsed as TOML literals when they parse (``true``, ``30``, ``["a"]``) and taken as
plain strings otherwise; a string setting always gets a string (a numeric client secret stays ``"12345"``).
Secrets are ``SecretStr`` so they print as ``**********`` in any repr or log line.
A bad file fails with one ``ConfigError`` naming every bad field.
"""

from __future__ import annotations

import ipaddress
import os
import tomllib
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    AnyHttpUrl,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from gateway.audit.settings import AuditSettings
from gateway.console.settings import ConsoleSettings
from gateway.directory.settings import LdapSettings
from gateway.errors import ConfigError
from gateway.settings_channels import (
    ChannelSettings as ChannelSettings,
)
from gateway.settings_channels import (
    CookieJarChannelSettings as CookieJarChannelSettings,
)
from gateway.settings_channels import (
    DataAction as DataAction,
)
from gateway.settings_channels import (
    DataRuleSettings as DataRuleSettings,
)
from gateway.settings_channels import (
    OAuth2ChannelSettings as OAuth2ChannelSettings,
)
from gateway.settings_channels import (
    RouteSettings as RouteSettings,
)
from gateway.settings_channels import (
    SeatsChannelSettings as SeatsChannelSettings,
)
from gateway.settings_channels import (
    StaticChannelSettings as StaticChannelSettings,
)
from gateway.settings_channels import (
    TicketSettings as TicketSettings,
)
from gateway.settings_channels import check_cookie_jar_routes
from gateway.settings_policies import ForwardAuthSettings as ForwardAuthSettings
from gateway.settings_policies import PolicySettings as PolicySettings
from gateway.settings_section import HeaderName
from gateway.settings_section import Section as _Section
from gateway.settings_stores import (
    DatabaseSettings as DatabaseSettings,
)
from gateway.settings_stores import (
    RedisSentinelSettings as RedisSentinelSettings,
)
from gateway.settings_stores import (
    RedisSettings as RedisSettings,
)
from gateway.settings_stores import (
    SessionSettings as SessionSettings,
)
from gateway.signals.events import DEFAULT_MAX_AGE_SECONDS

ENV_PREFIX = "CHANNELGATE_"


class ServerSettings(_Section):
    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=1, le=65535)] = 8000
    #: The origin agents use (scheme://host[:port]); builds the OIDC redirect URI and same-origin checks.
    public_url: AnyHttpUrl = AnyHttpUrl("http://127.0.0.1:8000")
    #: Peers whose X-Forwarded-For/-Proto are believed (ASVS 4.1.3). Default: none.
    trusted_proxies: tuple[str, ...] = ()
    #: Development switch for plain-HTTP loopback only: cookie ``channelgate`` without ``Secure``/``__Host-``.
    insecure_dev_cookies: bool = False
    max_header_bytes: Annotated[int, Field(ge=1024)] = 16384
    #: CPython's GIL switch interval in a serving process: how long the event loop may wait for the GIL after a
    #: socket write while a worker thread (the sealer's hashing, aiosqlite's) runs Python. 5 (CPython's default)
    #: suits the inline proxy and forward-auth alike since the access log's batch writer runs in a process of its
    #: own (gateway/storage/sqlite_batch_process.py); at 0.5 forward-auth answered ~10 % fewer checks.
    gil_switch_interval_ms: Annotated[float, Field(ge=0.1, le=50)] = 5.0
    #: Seconds between full garbage collections of a serving process, which then never starts one by itself
    #: after a burst of allocations such as a storm of deprovisionings (gateway/collector.py); 0: CPython's own.
    full_gc_interval_seconds: Annotated[float, Field(ge=0, le=3600)] = 30.0

    @field_validator("trusted_proxies")
    @classmethod
    def _cidrs(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for cidr in value:
            try:
                ipaddress.ip_network(cidr, strict=False)
            except ValueError as exc:
                raise ValueError(f"{cidr!r} is not an IP address or CIDR network") from exc
        return value

    @model_validator(mode="after")
    def _dev_cookies_only_on_loopback(self) -> ServerSettings:
        url = urlsplit(str(self.public_url))
        if url.scheme == "http" and not self.insecure_dev_cookies:
            raise ValueError(
                "public_url is plain http: set insecure_dev_cookies = true (loopback development only) "
                "or serve channelgate over https"
            )
        if self.insecure_dev_cookies and url.hostname not in {"127.0.0.1", "localhost", "::1"}:
            raise ValueError("insecure_dev_cookies is allowed only when public_url is a loopback address")
        return self


def _issuer_url_problem(value: str) -> str | None:
    """Why ``value`` is not an issuer identifier (OIDC Discovery 1.0 §3), or None when it is one."""
    url = urlsplit(value)
    if url.scheme not in {"http", "https"} or not url.hostname or url.query or url.fragment:
        return "the issuer must be an https URL without query or fragment"
    if url.scheme != "https" and url.hostname not in {"127.0.0.1", "localhost", "::1"}:
        return "the issuer must use https (plain http only on loopback for development)"
    return None


class OidcSettings(_Section):
    #: Kept exactly as written: the provider's metadata must name this very string (no normalisation).
    issuer: str
    client_id: str
    client_secret: SecretStr
    scopes: tuple[str, ...] = ("openid", "profile", "email")
    groups_claim: str = "groups"
    #: Asymmetric algorithms only: ``none`` and HMAC are refused (ASVS 9.1.2, CVE-2024-33663).
    allowed_algorithms: tuple[str, ...] = ("RS256", "ES256", "PS256", "EdDSA")
    #: Which ID-token claim becomes the agent's userName at first login.
    username_claim: str = "preferred_username"
    http_timeout_seconds: Annotated[float, Field(gt=0)] = 10.0

    @field_validator("issuer")
    @classmethod
    def _issuer_https(cls, value: str) -> str:
        problem = _issuer_url_problem(value)
        if problem:
            raise ValueError(problem)
        return value

    @field_validator("allowed_algorithms")
    @classmethod
    def _asymmetric(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        allowed = {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
        bad = [alg for alg in value if alg not in allowed]
        if bad or not value:
            raise ValueError(f"only asymmetric algorithms are allowed, got {bad or 'none'}")
        return value

    @field_validator("scopes")
    @classmethod
    def _openid(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if "openid" not in value:
            raise ValueError("scopes must include 'openid'")
        return value


class AssertionSettings(_Section):
    """The signed identity assertion sent upstream (JWT, ES256 or RS256, JWKS at /.channelgate/jwks.json)."""

    algorithm: Literal["ES256", "RS256"] = "ES256"
    #: PEM private keys; the first signs, the rest stay published in the JWKS during rotation.
    private_keys: tuple[SecretStr, ...] = ()
    private_key_files: tuple[Path, ...] = ()
    header: HeaderName = "X-Channelgate-Assertion"
    lifetime_seconds: Annotated[int, Field(ge=5, le=600)] = 60


class VaultSettings(_Section):
    """AES-256-GCM keys for channel credentials at rest: ``{key_id = "base64 of 32 bytes"}``."""

    keys: dict[str, SecretStr] = Field(default_factory=dict)
    active_key: str | None = None

    @model_validator(mode="after")
    def _active_exists(self) -> VaultSettings:
        if self.keys and (self.active_key or "") not in self.keys:
            raise ValueError(f"active_key must name one of the keys ({', '.join(sorted(self.keys))})")
        return self


class AdminSettings(_Section):
    #: Bearer tokens for the admin API and the CLI. Compared in constant time.
    tokens: tuple[SecretStr, ...] = ()

    @field_validator("tokens")
    @classmethod
    def _strong_tokens(cls, value: tuple[SecretStr, ...]) -> tuple[SecretStr, ...]:
        """No default credentials (ASVS V13, docs/operations/hardening.md): a token opens deprovisioning, approvals
        and the whole access log, so the example's placeholder and short tokens are refused (and never echoed)."""
        for index, token in enumerate(value):
            text = token.get_secret_value()
            if text.upper().startswith("CHANGE-ME"):
                raise ValueError(
                    f"token {index} is the example's placeholder: generate one "
                    "(python -c 'import secrets; print(secrets.token_urlsafe(32))') or set CHANNELGATE_ADMIN__TOKENS"
                )
            if len(text) < 32:
                raise ValueError(
                    f"token {index} is shorter than 32 characters "
                    "(e.g. python -c 'import secrets; print(secrets.token_urlsafe(32))')"
                )
        return value


#: How a login finds the directory-provisioned agent (SCIM or LDAP, not yet linked) it belongs to.
LinkRule = Literal["external_id_is_sub", "user_name_is_preferred_username", "user_name_is_email"]


class ScimSettings(_Section):
    """How SCIM-provisioned agents meet their first OIDC login (docs/architecture.md, "Linking")."""

    #: ``external_id_is_sub``: the IdP sends the OIDC ``sub`` as SCIM externalId (strongest: ``sub`` is stable,
    #: OIDC Core §5.7). ``user_name_is_preferred_username``: SCIM userName equals the ``[oidc] username_claim``
    #: claim, case-insensitively. ``user_name_is_email``: SCIM userName equals the ID token's *verified* email.
    link_by: LinkRule = "user_name_is_preferred_username"


class SsfTransmitterSettings(_Section):
    """One Shared Signals transmitter allowed to push Security Event Tokens (RFC 8935) to the gateway."""

    #: The SETs' ``iss``, compared exactly.
    issuer: Annotated[str, Field(min_length=1)]
    #: Where its signing keys are published (RFC 7517 JWKS).
    jwks_uri: AnyHttpUrl
    #: The bearer token it sends with every push (RFC 8935 §2 leaves push authentication to the deployment).
    token: SecretStr
    #: Issuers, besides its own ``issuer``, whose accounts its SETs may name: ``iss_sub`` subjects of them, and
    #: ``email`` subjects when this lists the ``[oidc] issuer`` (agents' emails come from that IdP and its
    #: directory). None by default, so a transmitter that is not the IdP (a chat vendor's) cannot log out or
    #: disable the IdP's agents. For an IdP whose SETs' ``iss`` is not its OIDC issuer, list the OIDC issuer here.
    subject_issuers: tuple[str, ...] = ()
    #: The oldest SET (by ``iat``) acted on, in seconds. A transmitter retries a push the gateway could not take
    #: (RFC 8935 §2.3: it was down, or answered 503), so a disable sent during an outage arrives late and must still
    #: count; a late ``account-disabled`` is not acted on if the agent changed here after it was issued (it could
    #: undo a later re-enable). Each SET's ``jti`` is remembered this long, so none is acted on twice.
    max_set_age_seconds: Annotated[int, Field(ge=300, le=7 * 86_400)] = DEFAULT_MAX_AGE_SECONDS

    @field_validator("token")
    @classmethod
    def _long_token(cls, value: SecretStr) -> SecretStr:
        text = value.get_secret_value()
        if len(text) < 32 or text.upper().startswith("CHANGE-ME"):  # no default credentials (ASVS V13)
            raise ValueError(
                "use a token of at least 32 characters that is not a CHANGE-ME placeholder "
                "(e.g. python -c 'import secrets; print(secrets.token_urlsafe(32))')"
            )
        return value

    @field_validator("subject_issuers")
    @classmethod
    def _exact_issuers(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        problems = []
        for issuer in value:
            if "*" in issuer:
                problems.append(f"{issuer!r}: wildcards are not supported, list each issuer exactly as its iss")
            elif problem := _issuer_url_problem(issuer):
                problems.append(f"{issuer!r}: {problem}")
        if len(set(value)) != len(value):
            problems.append("an issuer is listed twice")
        if problems:
            raise ValueError(
                "each subject issuer must be an issuer identifier, compared exactly: " + "; ".join(problems)
            )
        return value

    @property
    def speaks_for(self) -> frozenset[str]:
        """The issuers whose accounts this transmitter's SETs may name: its own and ``subject_issuers``."""
        return frozenset((self.issuer, *self.subject_issuers))


class SsfSettings(_Section):
    """Shared Signals receiver at ``/.channelgate/ssf/events`` (CAEP and RISC events pushed as SETs)."""

    #: The ``aud`` every SET must carry; empty means the gateway's public URL.
    audience: str = ""
    transmitters: tuple[SsfTransmitterSettings, ...] = ()


class MassDeletionGuardSettings(_Section):
    """Issue 4 item 6: a broken directory sync must not wipe out the workforce. When more than ``max_share`` of
    the agents (and at least ``min_agents``) are deprovisioned within ``window_seconds``, sessions are still
    killed at once, but the irreversible steps (ticket hand-over, seat deletion) wait for an admin's approval."""

    enabled: bool = True
    max_share: Annotated[float, Field(gt=0, le=1)] = 0.10
    window_seconds: Annotated[float, Field(gt=0)] = 3600.0
    #: Below this many deprovisionings in the window the guard never trips (a small team losing two people).
    min_agents: Annotated[int, Field(ge=1)] = 20


class DeprovisionSettings(_Section):
    """The deprovisioning pipeline's retries and workers (``gateway/deprovision/worker.py``)."""

    #: Attempts per step before it is dead-lettered (first try included).
    max_attempts: Annotated[int, Field(ge=1, le=1000)] = 12
    #: Exponential backoff with full jitter: attempt n waits uniform(0, min(max, base * 2**(n-1))) seconds.
    retry_base_seconds: Annotated[float, Field(gt=0)] = 2.0
    retry_max_seconds: Annotated[float, Field(gt=0)] = 600.0
    #: How long a worker owns a claimed step; a crashed worker's steps are taken over after it.
    lease_seconds: Annotated[float, Field(gt=0)] = 60.0
    #: Steps one replica runs at once (across channels and agents).
    concurrency: Annotated[int, Field(ge=1, le=1024)] = 32
    #: How often an idle worker looks for due steps (retries, other replicas' runs, runs left by a crash).
    poll_seconds: Annotated[float, Field(gt=0)] = 1.0
    guard: MassDeletionGuardSettings = Field(default_factory=MassDeletionGuardSettings)

    @model_validator(mode="after")
    def _backoff(self) -> DeprovisionSettings:
        if self.retry_max_seconds < self.retry_base_seconds:
            raise ValueError("retry_max_seconds must be at least retry_base_seconds")
        return self


class Settings(_Section):
    server: ServerSettings = Field(default_factory=ServerSettings)
    database: DatabaseSettings = Field(default_factory=DatabaseSettings)
    sessions: SessionSettings = Field(default_factory=SessionSettings)
    oidc: OidcSettings
    assertion: AssertionSettings = Field(default_factory=AssertionSettings)
    vault: VaultSettings = Field(default_factory=VaultSettings)
    admin: AdminSettings = Field(default_factory=AdminSettings)
    scim: ScimSettings = Field(default_factory=ScimSettings)
    ssf: SsfSettings = Field(default_factory=SsfSettings)
    deprovision: DeprovisionSettings = Field(default_factory=DeprovisionSettings)
    audit: AuditSettings = Field(default_factory=AuditSettings)
    console: ConsoleSettings = Field(default_factory=ConsoleSettings)
    policies: PolicySettings = Field(default_factory=PolicySettings)
    forward_auth: ForwardAuthSettings = Field(default_factory=ForwardAuthSettings)
    #: Directory sync over LDAP / Active Directory (issue 6); absent: no directory is synced.
    ldap: LdapSettings | None = None
    channels: dict[str, ChannelSettings] = Field(default_factory=dict)
    routes: tuple[RouteSettings, ...] = ()

    @model_validator(mode="after")
    def _routes_name_channels(self) -> Settings:
        unknown = sorted({r.channel for r in self.routes} - set(self.channels))
        if unknown:
            raise ValueError(f"routes name channels that are not configured: {', '.join(unknown)}")
        seen: set[tuple[str | None, str]] = set()
        for route in self.routes:
            key = (route.host, route.prefix)
            if key in seen:
                raise ValueError(f"two routes share prefix {route.prefix!r} on host {route.host!r}")
            seen.add(key)
        check_cookie_jar_routes(self.channels, self.routes)
        return self


def _parse_env_value(raw: str) -> Any:
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw


def _is_text_setting(path: Sequence[str]) -> bool:
    """Whether ``path`` names a ``str`` / ``SecretStr`` setting (optional or not)."""
    annotation: Any = Settings
    for part in path:
        fields = getattr(annotation, "model_fields", None)
        if fields is None or part not in fields:
            return False
        annotation = fields[part].annotation
    # Unwrap ``X | None`` only: ``dict[str, SecretStr]`` (vault keys) is a table, not text, whatever its values.
    union = typing.get_origin(annotation) in (typing.Union, types.UnionType)
    members = typing.get_args(annotation) if union else (annotation,)
    return any(m in (str, SecretStr) for m in members) and all(m in (str, SecretStr, type(None)) for m in members)


def apply_env_overrides(data: dict[str, Any], environ: Mapping[str, str]) -> dict[str, Any]:
    """Overlay ``CHANNELGATE_A__B=value`` onto ``data["a"]["b"]`` (keys lower-cased)."""
    merged: dict[str, Any] = {k: (dict(v) if isinstance(v, dict) else v) for k, v in data.items()}
    for name, raw in sorted(environ.items()):
        if not name.startswith(ENV_PREFIX) or name == ENV_PREFIX + "CONFIG":
            continue
        path = name[len(ENV_PREFIX) :].lower().split("__")
        node = merged
        for part in path[:-1]:
            child = node.get(part)
            if not isinstance(child, dict):
                child = {}
            node[part] = child = dict(child)
            node = child
        value = _parse_env_value(raw)
        node[path[-1]] = raw if _is_text_setting(path) and not isinstance(value, str) else value
    return merged


#: The tags of the ``channels`` union: pydantic puts the chosen tag in an error's location; people never wrote it.
_CHANNEL_TAGS = frozenset({"static", "oauth2", "seats", "cookie_jar"})


def _describe(error: ValidationError) -> str:
    lines = []
    for item in error.errors():
        loc = list(item["loc"])
        if len(loc) > 2 and loc[0] == "channels" and loc[2] in _CHANNEL_TAGS:
            del loc[2]
        where = ".".join(str(p) for p in loc) or "(top level)"
        message = item["msg"].removeprefix("Value error, ")
        lines.append(f"  - {where}: {message}")
    return "\n".join(lines)


def load_settings(path: Path | None = None, environ: Mapping[str, str] | None = None) -> Settings:
    """Read, overlay and validate the configuration once; raise one ConfigError naming every bad field."""
    environ = os.environ if environ is None else environ
    path = path or Path(environ.get(ENV_PREFIX + "CONFIG", "channelgate.toml"))
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such configuration file") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a directory, not a configuration file") from None
    except PermissionError:
        raise ConfigError(f"{path}: cannot be read by this user (permission denied)") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot be read: {exc.strerror or type(exc).__name__}") from None
    except UnicodeDecodeError as exc:
        # The offending bytes are not shown: they may be part of a secret.
        raise ConfigError(f"{path}: not UTF-8 text (invalid byte at offset {exc.start}); save it as UTF-8") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    try:
        return Settings.model_validate(apply_env_overrides(data, environ))
    except ValidationError as exc:
        count = exc.error_count()
        raise ConfigError(f"{path}: {count} invalid setting{'s' if count != 1 else ''}:\n{_describe(exc)}") from None
