"""Choose the session store named by ``[sessions] store``: the embedded one or the shared Redis one."""

from __future__ import annotations

from collections.abc import Callable

from gateway.sessions.base import SessionStore
from gateway.sessions.local_cache import CachedSessionStore
from gateway.sessions.memory import MemorySessionStore
from gateway.sessions.redis_client import open_redis
from gateway.sessions.redis_store import RedisSessionStore
from gateway.settings import SessionSettings


def create_session_store(
    settings: SessionSettings, replica_id: str, *, on_eviction_unsafe: Callable[[], None] | None = None
) -> SessionStore:
    """Build the configured store; connecting is lazy, so a Redis outage shows on first use (503), not here.
    ``on_eviction_unsafe``: called each time Redis is found set to evict keys (gateway/sessions/redis_eviction.py)."""
    idle, absolute = settings.idle_timeout_seconds, settings.absolute_timeout_seconds
    if settings.store == "redis":
        client, close_also = open_redis(settings)
        store = RedisSessionStore(
            client,
            idle,
            absolute,
            replica_id,
            socket_timeout=settings.redis.socket_timeout_seconds,
            wait_for_replicas=settings.redis.wait_for_replicas,
            wait_for_replicas_timeout=settings.redis.wait_for_replicas_timeout_seconds,
            close_also=close_also,
            on_eviction_unsafe=on_eviction_unsafe,
            max_clock_skew=settings.redis.max_clock_skew_seconds,
        )
        if settings.local_cache_seconds > 0:
            return CachedSessionStore(store, settings.local_cache_seconds)
        return store
    return MemorySessionStore(idle, absolute, replica_id)
