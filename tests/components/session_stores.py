"""Sessions, stores and probes the session-store tests share (tests/contracts, tests/integration)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator
from typing import Any

from redis.asyncio import Redis

from gateway.sessions.base import PendingLogin, Revocation, SessionData
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
