"""Choose the session store named by ``[sessions] store``: the embedded one or the shared Redis one."""

from __future__ import annotations

from gateway.sessions.base import SessionStore
from gateway.sessions.memory import MemorySessionStore
from gateway.sessions.redis_store import RedisSessionStore
from gateway.settings import SessionSettings


def create_session_store(settings: SessionSettings, replica_id: str) -> SessionStore:
    """Build the configured store; connecting is lazy, so a Redis outage shows on first use (503), not here."""
    idle, absolute = settings.idle_timeout_seconds, settings.absolute_timeout_seconds
    if settings.store == "redis":
        assert settings.redis_url is not None  # enforced by SessionSettings' validator
        return RedisSessionStore(settings.redis_url.get_secret_value(), idle, absolute, replica_id)
    return MemorySessionStore(idle, absolute, replica_id)
