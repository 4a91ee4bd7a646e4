"""The first connector kind: one shared credential per channel, held encrypted in the vault, injected upstream.

The credential is presented as ``Authorization: Bearer`` (RFC 6750 §2.1), as a named header, or as HTTP Basic
(RFC 7617, user ``channelgate``). It is cached decrypted in memory for ``CACHE_SECONDS`` (5 s), so that a
``channelgate channels set-credential`` takes effect on every replica within seconds, without a restart, while
the database is read at most once per 5 s per channel and replica. Every agent shares the credential, so there is
nothing per agent to revoke: the agent's access ends with their gateway session. A channel with a ticket API
(``tickets``) hands the agent's open tickets over through it (connectors/tickets.py).
"""

from __future__ import annotations

import asyncio
import base64
import re
import time
from collections.abc import Callable

import aiohttp

from connectors.base import AgentRef, Capability, Outcome, StepContext, StepResult, UpstreamRequest
from connectors.context import ConnectorContext, CredentialLoader
from connectors.secret import Secret
from connectors.tickets import TicketDesk
from gateway.errors import ConfigError, VaultError
from gateway.settings import StaticChannelSettings

CACHE_SECONDS = 5.0
#: After an upstream 401 the vault is read again, but not more often than this: a burst of 401s is one read.
RELOAD_FLOOR_SECONDS = 1.0
BASIC_USER = "channelgate"
NOT_PER_AGENT = "shared credential: nothing per agent to revoke"

_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # RFC 9110 §5.1 field-name
_FIELD_VALUE = re.compile(r"[\t\x20-\x7e\x80-\xff]*")  # RFC 9110 §5.5: no CR, LF, NUL or other controls
# Framing and routing headers: a credential there would change what the upstream parses, not who is calling.
_RESERVED = {"host", "content-length", "transfer-encoding", "connection", "upgrade", "te", "trailer", "keep-alive",
             "proxy-connection", "cookie"}  # fmt: skip


class StaticCredentialConnector:
    capabilities = frozenset({Capability.INJECT})

    def __init__(
        self,
        channel: str,
        settings: StaticChannelSettings,
        credential_loader: CredentialLoader,
        *,
        clock: Callable[[], float] = time.monotonic,
        http: Callable[[], aiohttp.ClientSession] | None = None,
    ) -> None:
        self.channel = channel
        self._inject = settings.inject
        self._header = settings.header_name if settings.inject == "header" and settings.header_name else "Authorization"
        if not _TOKEN.fullmatch(self._header) or self._header.lower() in _RESERVED:
            raise ConfigError(f"channel {channel!r}: header_name {self._header!r} cannot carry a credential")
        self._load = credential_loader
        self._clock = clock
        self._cached: Secret | None = None
        self._loaded_at = float("-inf")
        self._lock = asyncio.Lock()
        # Open tickets are handed over through the channel's ticket API, presenting the credential as upstream.
        self._tickets: TicketDesk | None = None
        if settings.tickets is not None:
            if http is None:
                raise ConfigError(f"channel {channel!r}: a ticket API needs the connector's HTTP client")
            self._tickets = TicketDesk(channel, settings.tickets, credential_loader, http, self._ticket_authorization)
            self.capabilities = frozenset({Capability.INJECT, Capability.TICKETS})

    @classmethod
    def from_context(cls, context: ConnectorContext) -> StaticCredentialConnector:
        assert isinstance(context.settings, StaticChannelSettings)
        return cls(context.channel, context.settings, context.credential, http=context.http)

    def __repr__(self) -> str:
        return f"StaticCredentialConnector(channel={self.channel!r}, inject={self._inject!r})"

    def _fresh(self, max_age: float) -> bool:
        return self._cached is not None and self._clock() - self._loaded_at < max_age

    async def _credential(self, max_age: float = CACHE_SECONDS) -> Secret:
        if not self._fresh(max_age):
            async with self._lock:
                if not self._fresh(max_age):
                    self._cached = await self._load()
                    self._loaded_at = self._clock()
        assert self._cached is not None
        return self._cached

    def injected_headers(self) -> tuple[str, ...]:
        return (self._header,)

    def _presentation(self, credential: Secret) -> str:
        value = credential.reveal()
        if self._inject == "bearer":
            presented = f"Bearer {value}"
        elif self._inject == "basic":
            presented = "Basic " + base64.b64encode(f"{BASIC_USER}:{value}".encode()).decode("ascii")
        else:
            presented = value
        if not _FIELD_VALUE.fullmatch(presented):
            # Refused rather than sent: a line break would let the stored value add headers of its own upstream.
            raise VaultError(
                f"The credential of channel {self.channel!r} contains characters an HTTP header cannot carry "
                "(line breaks, control characters); store it again."
            )
        return presented

    def _ticket_authorization(self, credential: Secret) -> tuple[str, str]:
        return self._header, self._presentation(credential)

    async def prepare(self, agent: AgentRef, request: UpstreamRequest) -> None:
        request.set_header(self._header, self._presentation(await self._credential()))

    def prepare_from_memory(self, agent: AgentRef, request: UpstreamRequest) -> bool:
        if self._cached is None or not self._fresh(CACHE_SECONDS):
            return False
        request.set_header(self._header, self._presentation(self._cached))
        return True

    async def on_upstream_unauthorized(self, agent: AgentRef, request: UpstreamRequest) -> bool:
        """Read the vault again (a rotated credential) and resend only if the request would now carry another."""
        sent = request.header(self._header)
        request.set_header(self._header, self._presentation(await self._credential(RELOAD_FLOOR_SECONDS)))
        return request.header(self._header) != sent

    def _not_applicable(self, step: str) -> StepResult:
        return StepResult(self.channel, step, Outcome.NOT_APPLICABLE, detail=NOT_PER_AGENT)

    async def on_upstream_response(self, agent: AgentRef, status: int, headers: list[tuple[str, str]]) -> None:
        return None

    async def provision(self, agent: AgentRef, ctx: StepContext) -> StepResult:
        return self._not_applicable("provision")

    async def revoke(self, agent: AgentRef, ctx: StepContext) -> StepResult:
        return self._not_applicable("revoke")

    async def hand_over(self, agent: AgentRef, successor: AgentRef | None, ctx: StepContext) -> StepResult:
        if self._tickets is not None:
            return await self._tickets.hand_over(agent, successor, ctx)
        return self._not_applicable("hand_over")

    async def verify_no_access(self, agent: AgentRef, ctx: StepContext) -> StepResult:
        return self._not_applicable("verify_no_access")

    async def remove(self, agent: AgentRef, ctx: StepContext) -> StepResult:
        return self._not_applicable("remove")

    async def forget(self, agent_id: str) -> None:
        return None

    async def aclose(self) -> None:
        self._cached = None
        self._loaded_at = float("-inf")
