"""The ``[database]`` and ``[sessions]`` sections: what the gateway stores on, and how it connects there.

Both connections can carry TLS, credentials from a mounted file, timeouts and pool sizes, because a production
deployment reaches a managed PostgreSQL and Redis over a network it does not own (ASVS 5.0 V12.3: TLS to every
back end, the server's certificate verified). Files named here must exist when the settings are loaded, so a
wrong path is a configuration error at start, not a TLS failure at the first request.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator, model_validator

from gateway.errors import ConfigError
from gateway.settings_section import Section

#: libpq's ``sslmode`` values (PostgreSQL §34.19.1) that the gateway supports; ``allow`` is left out: it tries
#: plain text first, which no deployment should want.
SslMode = Literal["disable", "prefer", "require", "verify-ca", "verify-full"]


def _must_be_file(value: Path | None, what: str) -> Path | None:
    if value is not None and not value.is_file():
        raise ValueError(f"{value} is not a file ({what})")
    return value


def read_secret_file(path: Path, setting: str) -> str:
    """The first line of a mounted secret (a trailing newline is what ``echo`` and most editors leave)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        reason = error.strerror if isinstance(error, OSError) else "not UTF-8 text"
        raise ConfigError(f"{setting}: cannot read {path}: {reason}") from None
    return text.splitlines()[0] if text else ""


def _text(value: object) -> object:
    """``CHANNELGATE_…__PASSWORD=12345`` arrives parsed as a TOML integer; a password is always text."""
    return str(value) if isinstance(value, int | float) and not isinstance(value, bool) else value


class DatabaseSettings(Section):
    #: SQLAlchemy async URL: ``sqlite+aiosqlite:///path.db`` (embedded) or ``postgresql+asyncpg://...``.
    url: SecretStr = SecretStr("sqlite+aiosqlite:///./channelgate.db")
    #: The password in a file (a mounted secret) instead of in the URL; one trailing newline is dropped.
    password_file: Path | None = None
    #: Connections kept open per engine; the gateway opens two engines per process on PostgreSQL (the main one
    #: and a read-only one of 4 for hot-path reads).
    pool_size: Annotated[int, Field(ge=1)] = 10
    #: Connections opened beyond ``pool_size`` under a burst, closed again when returned.
    max_overflow: Annotated[int, Field(ge=0)] = 10
    #: How long a request waits for a free connection before it fails (503, fail closed).
    pool_timeout_seconds: Annotated[float, Field(gt=0)] = 10.0
    #: Connections older than this are replaced (a firewall or pooler that drops idle connections); 0: never.
    pool_recycle_seconds: Annotated[int, Field(ge=0)] = 0
    #: Connecting (TCP + TLS + authentication); on SQLite, also how long a writer waits for the lock.
    connect_timeout_seconds: Annotated[float, Field(gt=0)] = 5.0
    #: Client-side limit of one statement (asyncpg ``command_timeout``); none when absent.
    command_timeout_seconds: Annotated[float, Field(gt=0)] | None = None
    #: Server-side ``statement_timeout`` of the gateway's sessions; none when absent. Migrations run without it.
    statement_timeout_seconds: Annotated[float, Field(gt=0)] | None = None
    #: TLS to PostgreSQL, with libpq's meaning (``verify-full``: chain and host name checked). Absent: asyncpg's
    #: default, ``prefer`` (TLS when the server offers it, unverified), or ``PGSSLMODE``.
    sslmode: SslMode | None = None
    #: PEM bundle of the CAs that issued the server's certificate; absent with ``verify-*``: the system's CAs.
    sslrootcert: Path | None = None
    #: Client certificate (and its key, unless inside the same PEM) for certificate authentication.
    sslcert: Path | None = None
    sslkey: Path | None = None

    @field_validator("url")
    @classmethod
    def _driver(cls, value: SecretStr) -> SecretStr:
        scheme = value.get_secret_value().split(":", 1)[0]
        if scheme not in {"sqlite+aiosqlite", "postgresql+asyncpg"}:
            raise ValueError(f"unsupported driver {scheme!r}: use sqlite+aiosqlite:///FILE or postgresql+asyncpg://...")
        return value

    @field_validator("password_file")
    @classmethod
    def _password_file(cls, value: Path | None) -> Path | None:
        return _must_be_file(value, "the database password")

    @field_validator("sslrootcert")
    @classmethod
    def _root_cert(cls, value: Path | None) -> Path | None:
        return _must_be_file(value, "the PEM bundle of the CAs that issued the database server's certificate")

    @field_validator("sslcert", "sslkey")
    @classmethod
    def _client_files(cls, value: Path | None) -> Path | None:
        return _must_be_file(value, "the client certificate or key for the database")

    @property
    def is_postgres(self) -> bool:
        return self.url.get_secret_value().startswith("postgresql")

    @model_validator(mode="after")
    def _postgres_only(self) -> DatabaseSettings:
        postgres_only = {
            "password_file": self.password_file,
            "sslmode": self.sslmode,
            "sslrootcert": self.sslrootcert,
            "sslcert": self.sslcert,
            "sslkey": self.sslkey,
            "command_timeout_seconds": self.command_timeout_seconds,
            "statement_timeout_seconds": self.statement_timeout_seconds,
        }
        given = [name for name, value in postgres_only.items() if value is not None]
        if given and not self.is_postgres:
            raise ValueError(f"{', '.join(given)} apply to PostgreSQL only (the url is SQLite)")
        if self.sslkey is not None and self.sslcert is None:
            raise ValueError("sslkey needs sslcert (the client certificate it belongs to)")
        files = self.sslrootcert or self.sslcert
        if files is not None and self.sslmode in (None, "disable", "prefer"):
            raise ValueError("sslrootcert/sslcert need sslmode = 'require', 'verify-ca' or 'verify-full'")
        if self.password_file is not None and urlsplit(self.url.get_secret_value()).password:
            raise ValueError("the url carries a password and password_file is set: keep the password in one place")
        return self


class RedisSentinelSettings(Section):
    """Redis Sentinel: the gateway asks the sentinels which server is the primary, and asks again after a
    failover (the first request on a dropped connection fails closed; the next one reaches the new primary)."""

    #: The monitored primary's name (``sentinel monitor NAME ...`` in sentinel.conf).
    master_name: Annotated[str, Field(min_length=1)]
    #: ``host:port`` of every sentinel (at least the quorum of them; three or more in production).
    addresses: Annotated[tuple[str, ...], Field(min_length=1)]
    #: The sentinels' own credentials (``requirepass`` / ACL user of sentinel.conf), when they ask for any.
    username: str | None = None
    password: SecretStr | None = None
    password_file: Path | None = None
    #: TLS to the sentinels (``tls-port`` in sentinel.conf); the CA and client certificate of ``[sessions.redis]``.
    tls: bool = False

    @field_validator("password", mode="before")
    @classmethod
    def _password_as_text(cls, value: object) -> object:
        return _text(value)

    @field_validator("addresses")
    @classmethod
    def _host_ports(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for address in value:
            split_address(address)
        return value

    @field_validator("password_file")
    @classmethod
    def _password_file(cls, value: Path | None) -> Path | None:
        return _must_be_file(value, "the sentinels' password")

    @model_validator(mode="after")
    def _one_password(self) -> RedisSentinelSettings:
        if self.password is not None and self.password_file is not None:
            raise ValueError("set password or password_file, not both")
        return self


def split_address(address: str) -> tuple[str, int]:
    """``"host:port"`` or ``"[v6]:port"`` → (host, port); ValueError naming the address otherwise."""
    host, sep, port = address.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{address!r} is not host:port")
    if ":" in host:
        ipaddress.IPv6Address(host)  # a bare v6 address without brackets is ambiguous
    return host, int(port)


class RedisSettings(Section):
    """How the session store connects to Redis: credentials, TLS files, timeouts and the pool."""

    #: ACL user (Redis 6+); may be in ``redis_url`` instead.
    username: str | None = None
    #: Better from ``CHANNELGATE_SESSIONS__REDIS__PASSWORD`` or ``password_file`` than in this file.
    password: SecretStr | None = None
    password_file: Path | None = None
    #: Sentinel mode only (with ``redis_url`` the scheme says it: ``rediss://``): TLS to the primary.
    tls: bool = False
    #: Sentinel mode only (with ``redis_url`` its path says it): the database number.
    db: Annotated[int, Field(ge=0)] = 0
    #: PEM bundle of the CAs that issued Redis's certificate (else the system's); the host name is checked.
    ca_file: Path | None = None
    #: Client certificate (and key, unless in the same PEM) when Redis requires ``tls-auth-clients``.
    cert_file: Path | None = None
    key_file: Path | None = None
    #: One command's limit: a slower Redis counts as down and the request fails closed (503).
    socket_timeout_seconds: Annotated[float, Field(gt=0)] = 1.0
    connect_timeout_seconds: Annotated[float, Field(gt=0)] = 1.0
    #: Idle pooled connections are PINGed before use after this long, so a dead one is noticed before a request.
    health_check_interval_seconds: Annotated[int, Field(ge=0)] = 5
    #: Connections per process (commands, the revocation subscription, acknowledgement waits); none: no limit.
    #: A command finding every connection busy fails closed (503): size it above the peak of concurrent requests.
    max_connections: Annotated[int, Field(ge=4)] | None = None
    #: Redis replicas that must hold a revocation, a logout or a group change before it counts as done (Redis
    #: ``WAIT``): replication is asynchronous, so a failover can lose a write the primary acknowledged and revive
    #: the sessions it ended. 0: do not wait. Not confirmed in time: the action fails (503), a kill is retried.
    wait_for_replicas: Annotated[int, Field(ge=0)] = 0
    wait_for_replicas_timeout_seconds: Annotated[float, Field(gt=0)] = 0.5
    #: How far this host's clock may be from Redis's: session timeouts are decided with this host's clock, so a
    #: replica further off refuses to start, and a running one refuses sessions (503) and is not ready until it
    #: agrees again (gateway/sessions/redis_clock.py).
    max_clock_skew_seconds: Annotated[float, Field(ge=0.5, le=300)] = 5.0
    sentinel: RedisSentinelSettings | None = None

    @field_validator("password", mode="before")
    @classmethod
    def _password_as_text(cls, value: object) -> object:
        return _text(value)

    @field_validator("password_file")
    @classmethod
    def _password_file(cls, value: Path | None) -> Path | None:
        return _must_be_file(value, "the Redis password")

    @field_validator("ca_file")
    @classmethod
    def _ca_file(cls, value: Path | None) -> Path | None:
        return _must_be_file(value, "the PEM bundle of the CAs that issued Redis's certificate")

    @field_validator("cert_file", "key_file")
    @classmethod
    def _client_files(cls, value: Path | None) -> Path | None:
        return _must_be_file(value, "the client certificate or key for Redis")

    @model_validator(mode="after")
    def _consistent(self) -> RedisSettings:
        if self.password is not None and self.password_file is not None:
            raise ValueError("set password or password_file, not both")
        if self.key_file is not None and self.cert_file is None:
            raise ValueError("key_file needs cert_file (the client certificate it belongs to)")
        if self.wait_for_replicas and self.wait_for_replicas_timeout_seconds >= self.socket_timeout_seconds:
            raise ValueError(
                "wait_for_replicas_timeout_seconds must be below socket_timeout_seconds: Redis answers a WAIT only "
                "after its timeout, and a slower answer would count as Redis down"
            )
        return self


class SessionSettings(Section):
    store: Literal["memory", "redis"] = "memory"
    #: ``redis://[user:password@]host:port/db`` or ``rediss://`` (TLS); not with ``[sessions.redis.sentinel]``.
    redis_url: SecretStr | None = None
    redis: RedisSettings = Field(default_factory=RedisSettings)
    idle_timeout_seconds: Annotated[int, Field(ge=60)] = 1800
    absolute_timeout_seconds: Annotated[int, Field(ge=300)] = 12 * 3600
    #: How long a revocation waits for every live replica to confirm it closed that agent's WebSockets.
    revocation_ack_timeout_seconds: Annotated[float, Field(gt=0)] = 2.0
    #: Redis store only: keep valid sessions in process this long (gateway/sessions/local_cache.py), dropped by
    #: the revocation broadcast; also the worst-case revocation latency if that broadcast dies silently. 0: off.
    local_cache_seconds: Annotated[float, Field(ge=0, le=30)] = 0.0

    @model_validator(mode="after")
    def _redis_target(self) -> SessionSettings:
        sentinel = self.redis.sentinel
        if self.store == "redis" and self.redis_url is None and sentinel is None:
            raise ValueError(
                "store = 'redis' needs redis_url (redis://host:port/db or rediss://...) or [sessions.redis.sentinel]"
            )
        if self.redis_url is not None and sentinel is not None:
            raise ValueError("set redis_url or [sessions.redis.sentinel], not both (Sentinel names the primary)")
        if self.redis_url is not None:
            self._check_url(self.redis_url.get_secret_value())
        if self.absolute_timeout_seconds < self.idle_timeout_seconds:
            raise ValueError("absolute_timeout_seconds must not be shorter than idle_timeout_seconds")
        return self

    def _check_url(self, url: str) -> None:
        """What the URL already says must not be said again differently (the message never echoes the URL)."""
        parts = urlsplit(url)
        redis = self.redis
        tls_files = redis.ca_file or redis.cert_file
        if tls_files is not None and parts.scheme != "rediss":
            raise ValueError("redis.ca_file/cert_file need a rediss:// redis_url (TLS)")
        if redis.tls or redis.db:
            raise ValueError("redis.tls and redis.db are for Sentinel; with redis_url use rediss:// and /DB")
        has_password = bool(parts.password)
        if has_password and (redis.password is not None or redis.password_file is not None):
            raise ValueError("redis_url carries a password and so does [sessions.redis]: keep it in one place")
