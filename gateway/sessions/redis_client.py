"""The session store's Redis client, built from ``[sessions]``: one server by URL, or the primary that Redis
Sentinel names; TLS (CA file, client certificate, host name checked), credentials from a file, timeouts, a pool.

Redis Cluster is not supported. The store's Lua scripts reach keys they read from other keys (an agent's index
names its session keys), which Cluster refuses unless every key of a script hashes to one slot; and an
acknowledgement wait (BLPOP) must see the pushes of every replica on the same node. A single primary with
replicas behind Sentinel (or a managed service's failover endpoint) is the supported high-availability setup;
the session data is small (docs/operations: sizing) and one primary carries far more than the gateway sends it.

Commands are never retried by the client: a failure fails the request closed at once (503), and the next command
reconnects, asking Sentinel for the primary again, so the store recovers by itself after a failover.
"""

from __future__ import annotations

import ssl
from collections.abc import Awaitable, Callable
from typing import Any, cast

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import NoBackoff

from gateway.errors import ConfigError
from gateway.settings_stores import RedisSettings, SessionSettings, read_secret_file, split_address

#: Closes what the client needs beside itself (the sentinels' own connections).
Closer = Callable[[], Awaitable[None]]


def _tls_options(settings: RedisSettings) -> dict[str, Any]:
    options: dict[str, Any] = {"ssl_cert_reqs": "required", "ssl_check_hostname": True}
    options["ssl_min_version"] = ssl.TLSVersion.TLSv1_2
    if settings.ca_file is not None:
        options["ssl_ca_certs"] = str(settings.ca_file)
    if settings.cert_file is not None:
        options["ssl_certfile"] = str(settings.cert_file)
    if settings.key_file is not None:
        options["ssl_keyfile"] = str(settings.key_file)
    return options


def _credentials(username: str | None, password: str | None) -> dict[str, Any]:
    options: dict[str, Any] = {}
    if username is not None:
        options["username"] = username
    if password is not None:
        options["password"] = password
    return options


#: ``[sessions.redis] max_connections`` unset: no limit of our own (Redis's ``maxclients`` still applies).
UNLIMITED_CONNECTIONS = 2**31 - 1


def _connection_options(settings: RedisSettings) -> dict[str, Any]:
    """What every connection to the data server gets, in either mode."""
    password = settings.password.get_secret_value() if settings.password is not None else None
    if settings.password_file is not None:
        password = read_secret_file(settings.password_file, "sessions.redis.password_file")
    options: dict[str, Any] = {
        "socket_timeout": settings.socket_timeout_seconds,
        "socket_connect_timeout": settings.connect_timeout_seconds,
        "health_check_interval": settings.health_check_interval_seconds,
        "retry": Retry(NoBackoff(), 0),
        "decode_responses": True,
        **_credentials(settings.username, password),
    }
    # Always given: without it redis-py (8.x) caps a pool at 100 connections, and a storm of deprovisionings (each
    # waiting for acknowledgements on a connection of its own) beside the lookups found them all busy: the
    # gateway failed closed (503) for live agents although Redis was fine (docs/benchmarks.md §9).
    options["max_connections"] = (
        settings.max_connections if settings.max_connections is not None else UNLIMITED_CONNECTIONS
    )
    return options


def open_redis(settings: SessionSettings) -> tuple[Redis, Closer | None]:
    """The client for ``[sessions]`` (store ``redis``), and what to close beside it; connecting is lazy."""
    redis = settings.redis
    options = _connection_options(redis)
    if settings.redis_url is not None:
        url = settings.redis_url.get_secret_value()
        if url.startswith("rediss://"):
            options |= _tls_options(redis)
        try:
            return Redis.from_url(url, **options), None
        except ValueError:
            raise ConfigError("sessions.redis_url is not a Redis URL (redis://, rediss:// or unix://)") from None
    sentinel_settings = redis.sentinel
    assert sentinel_settings is not None  # enforced by SessionSettings' validator
    password = sentinel_settings.password.get_secret_value() if sentinel_settings.password is not None else None
    if sentinel_settings.password_file is not None:
        password = read_secret_file(sentinel_settings.password_file, "sessions.redis.sentinel.password_file")
    sentinel_options: dict[str, Any] = {
        "socket_timeout": redis.socket_timeout_seconds,
        "socket_connect_timeout": redis.connect_timeout_seconds,
        "decode_responses": True,
        **_credentials(sentinel_settings.username, password),
    }
    if sentinel_settings.tls:
        sentinel_options |= {"ssl": True, **_tls_options(redis)}
    sentinel = Sentinel(
        [split_address(address) for address in sentinel_settings.addresses], sentinel_kwargs=sentinel_options
    )
    if redis.tls:
        options |= {"ssl": True, **_tls_options(redis)}
    client = cast(Redis, sentinel.master_for(sentinel_settings.master_name, db=redis.db, **options))
    return client, sentinel.aclose
