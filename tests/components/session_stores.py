"""Sessions, stores and probes the session-store tests share (tests/contracts, tests/integration)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis

from gateway.sessions.base import PendingLogin, Revocation, SessionData, SessionStore
from gateway.sessions.memory import MemorySessionStore
from gateway.sessions.redis_scripts import idp_session_index
from gateway.sessions.redis_store import RedisSessionStore

IDLE = 600.0
ABSOLUTE = 3600.0
T0 = 1_750_000_000.125
REVOCATION_CHANNEL = "cg:revocations"

ALICE = SessionData(
    agent_id="agent-alice",
    user_name="alice",
    issuer="https://idp.example.com",
    subject="sub-alice",
    groups=frozenset({"tier1", "voice"}),
    idp_session_id="sid-1",
    id_token="eyJ.header.sig",
    acr="urn:mace:incommon:iap:silver",
    amr=("pwd", "otp"),
    auth_time=1_749_999_990.5,
)
BOB = SessionData(agent_id="agent-bob", user_name="bob", issuer="https://idp.example.com", subject="sub-bob")
#: Group names a directory may send: each must land whole, and none may disturb the rest of the stored session.
ODD_GROUPS = [
    frozenset(),
    frozenset({"phone-agents"}),
    frozenset({"chat-agents", "phone-agents", "mail-agents", "supervisors"}),
    frozenset({'a"b', "c]d", "e\\", "\\", "]", '"', '],"groups":["admins"]', ',"groups":[', 'x\\"]'}),
    frozenset({"Ärzte", "客服", "emoji-\U0001f4de", "tab\tnew\nline", "</script>"}),
]
ODD_GROUP_IDS = ["none", "one", "four", "json-breakers", "unicode-and-controls"]
PENDING = PendingLogin(state="st", nonce="nn", code_verifier="cv" * 30, return_to="/console", created_at=T0)


def redis_store(url: str, replica_id: str, **options: Any) -> RedisSessionStore:
    return RedisSessionStore(url, IDLE, ABSOLUTE, replica_id, reconnect_backoff=(0.05, 0.2), **options)


async def wait_for_subscribers(url: str, count: int, timeout: float = 5.0) -> None:
    """Block until ``count`` connections listen on the revocation channel (PUBSUB NUMSUB)."""
    async with Redis.from_url(url, decode_responses=True) as raw:
        deadline = time.monotonic() + timeout
        while True:
            [(_, listening)] = await raw.pubsub_numsub(REVOCATION_CHANNEL)
            if int(listening) >= count:
                return
            assert time.monotonic() < deadline, f"only {listening} of {count} subscribers after {timeout} s"
            await asyncio.sleep(0.01)


async def next_of(feed: AsyncGenerator[Revocation, None]) -> Revocation:
    return await anext(feed)


@dataclass
class Backend:
    """What a contract test needs to see behind the protocol: the raw stored data, and when a subscriber listens."""

    name: str
    store: SessionStore
    url: str | None

    async def stored_text(self) -> str:
        if isinstance(self.store, MemorySessionStore):
            return repr(vars(self.store))
        assert self.url is not None
        async with Redis.from_url(self.url, decode_responses=True) as raw:
            parts = []
            for key in await raw.keys("*"):
                kind = await raw.type(key)
                value = (
                    await raw.hgetall(key) if kind == "hash"
                    else await raw.smembers(key) if kind == "set"
                    else await raw.zrange(key, 0, -1) if kind == "zset"
                    else ""
                )  # fmt: skip
                parts.append(f"{key!s}={value!r}")
            return "\n".join(parts)

    async def idp_index(self, issuer: str, idp_session_id: str) -> list[str] | None:
        """The storage keys an IdP session's index holds, oldest first, as stored; None when there is no index."""
        if isinstance(self.store, MemorySessionStore):
            index = self.store._by_idp_session.get((issuer, idp_session_id))
            return None if index is None else list(index)
        assert self.url is not None
        async with Redis.from_url(self.url, decode_responses=True) as raw:
            key = idp_session_index(issuer, idp_session_id)
            if not await raw.exists(key):
                return None
            return [str(member) for member in await raw.zrange(key, 0, -1)]

    async def wait_subscribed(self, count: int) -> None:
        if self.url is None:
            for _ in range(5):  # the in-process queue is registered on the generator's first step
                await asyncio.sleep(0)
        else:
            await wait_for_subscribers(self.url, count)
