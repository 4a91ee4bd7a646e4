"""This replica's subscription to the revocation broadcast (``REVOCATION_CHANNEL``), followed while the store is
open.

Redis pub/sub keeps nothing: a revocation published while the subscription is down never reaches this replica. So a
subscription counts only once Redis confirmed it, a lost one is resubscribed with backoff (and the store counted
unreachable from that moment, gateway/deprovision/revived.py), and every resubscription — with ``resync`` the first
one too — yields a resync marker before the next broadcast: the replica then closes what it can no longer vouch for
and an in-process session cache, which serves only while :attr:`RevocationSubscription.subscribed`, starts again.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncGenerator, Callable

from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.exceptions import RedisError

from gateway.sessions.base import RESYNC_AGENT_ID, Revocation
from gateway.sessions.redis_codec import decode_revocation
from gateway.sessions.redis_scripts import REVOCATION_CHANNEL

log = logging.getLogger(__name__)


class RevocationSubscription:
    """Follows the revocation channel on its own connection (see the module docstring)."""

    def __init__(
        self,
        redis: Redis,
        replica_id: str,
        *,
        socket_timeout: float,
        reconnect_backoff: tuple[float, float],
        on_lost: Callable[[], None],
    ) -> None:
        """``on_lost`` is called each time the subscription is lost (the store counts Redis unreachable then)."""
        self._redis = redis
        self.replica_id = replica_id
        self._socket_timeout = socket_timeout
        self._backoff = reconnect_backoff
        self._on_lost = on_lost
        self._closed = False
        #: True while the subscription is confirmed.
        self.subscribed = False

    def close(self) -> None:
        """Stop following at the next message or timeout."""
        self._closed = True

    async def follow(self, *, resync: bool = False) -> AsyncGenerator[Revocation, None]:
        """Follow the broadcast channel until :meth:`close`, resubscribing with backoff.

        Anything published while the subscription was down is lost (pub/sub keeps nothing), so every reconnect
        (and with ``resync`` the first subscription too) yields a resync marker before the next broadcast.
        """
        first, backoff = not resync, self._backoff[0]
        while not self._closed:
            pubsub = self._redis.pubsub(ignore_subscribe_messages=False)
            try:
                await self._subscribe(pubsub)
                self.subscribed = True
                if not first:
                    log.info("revocation channel is back; resyncing open connections")
                    yield Revocation(RESYNC_AGENT_ID, uuid.uuid4().hex, self.replica_id)
                first, backoff = False, self._backoff[0]
                while not self._closed:
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=self._socket_timeout)
                    if message is None or message["type"] != "message":
                        continue
                    try:
                        revocation = decode_revocation(message["data"])
                    except ValueError as malformed:
                        log.warning("ignored a malformed message on %s (%s)", REVOCATION_CHANNEL, malformed)
                        continue
                    yield revocation
            except (RedisError, OSError, UnicodeDecodeError) as exc:
                # Not UTF-8 (a stray publisher): redis-py drops the connection to resubscribe silently on the next
                # read, losing what was published meanwhile, so it is handled as a lost subscription.
                self.subscribed = False
                if self._closed:
                    return
                self._on_lost()
                log.warning("revocation channel lost (%s); reconnecting in %.1f s", type(exc).__name__, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self._backoff[1])
            finally:
                self.subscribed = False
                await self._close_pubsub(pubsub)

    async def _subscribe(self, pubsub: PubSub) -> None:
        """Subscribe and wait for Redis to confirm, so nothing published after this returns can be missed."""
        await pubsub.subscribe(REVOCATION_CHANNEL)
        while True:
            message = await pubsub.get_message(timeout=self._socket_timeout)
            if message is None:
                raise TimeoutError("no subscribe confirmation")
            if message["type"] == "subscribe":
                return

    @staticmethod
    async def _close_pubsub(pubsub: PubSub) -> None:
        try:
            await pubsub.aclose()
        except (RedisError, OSError):
            log.debug("closing a broken pub/sub connection failed", exc_info=True)
