"""The first connector kind: one shared credential per channel, held encrypted in the vault, injected upstream.

The credential is presented as ``Authorization: Bearer``, as a named header, or as HTTP Basic (user
``channelgate``). It is cached decrypted in memory for ``CACHE_SECONDS`` so that a
``channelgate channels set-credential`` takes effect on every replica within seconds, without a restart.
"""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import Awaitable, Callable

from connectors.base import AgentRef, Capability, Outcome, StepResult, UpstreamRequest
from connectors.secret import Secret
from gateway.settings import ChannelSettings

CACHE_SECONDS = 5.0
BASIC_USER = "channelgate"

CredentialLoader = Callable[[], Awaitable[Secret]]


class StaticCredentialConnector:
    capabilities = frozenset({Capability.INJECT})

    def __init__(self, channel: str, settings: ChannelSettings, load: CredentialLoader) -> None:
        self.channel = channel
        self._settings = settings
        self._load = load
        self._cached: Secret | None = None
        self._loaded_at = float("-inf")
        self._lock = asyncio.Lock()

    async def _credential(self) -> Secret:
        if self._cached is not None and time.monotonic() - self._loaded_at < CACHE_SECONDS:
            return self._cached
        async with self._lock:
            if self._cached is None or time.monotonic() - self._loaded_at >= CACHE_SECONDS:
                self._cached = await self._load()
                self._loaded_at = time.monotonic()
            return self._cached

    def injected_headers(self) -> tuple[str, ...]:
        if self._settings.inject == "header" and self._settings.header_name:
            return (self._settings.header_name,)
        return ("Authorization",)

    async def prepare(self, agent: AgentRef, request: UpstreamRequest) -> None:
        value = (await self._credential()).reveal()
        if self._settings.inject == "bearer":
            request.set_header("Authorization", f"Bearer {value}")
        elif self._settings.inject == "basic":
            token = base64.b64encode(f"{BASIC_USER}:{value}".encode()).decode("ascii")
            request.set_header("Authorization", f"Basic {token}")
        else:
            request.set_header(self.injected_headers()[0], value)

    async def on_upstream_unauthorized(self, agent: AgentRef) -> bool:
        """Drop the cache so a rotated credential is read again; resend only if it changed."""
        previous = self._cached
        self._loaded_at = float("-inf")
        return (await self._credential()) != previous

    def _not_applicable(self, step: str) -> StepResult:
        return StepResult(self.channel, step, Outcome.NOT_APPLICABLE, detail="shared credential: nothing per agent")

    async def revoke(self, agent: AgentRef) -> StepResult:
        return self._not_applicable("revoke")

    async def hand_over(self, agent: AgentRef, successor: str | None) -> StepResult:
        return self._not_applicable("hand_over")

    async def verify_no_access(self, agent: AgentRef) -> StepResult:
        return self._not_applicable("verify")

    async def aclose(self) -> None:
        self._cached = None
