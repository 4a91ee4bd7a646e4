"""What a connector is built with: its settings, the channel's own credential, per-agent secrets, HTTP, identity.

One ``ConnectorContext`` per channel, made by ``gateway/services.py``; ``connectors/registry.py`` passes it to
the kind's class. Per-agent secrets go through :class:`AgentSecrets`, which seals each value with the vault under
"<channel>/<agent_id>/<name>" as associated data, so a ciphertext moved to another agent's or channel's row does
not open.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

import aiohttp

from connectors.secret import Secret
from connectors.vault import Vault
from gateway.errors import VaultError
from gateway.settings import ChannelSettings
from gateway.storage.agent_secrets import AgentSecretRepository, StoredAgentSecret
from gateway.timeutil import utcnow

#: Reads the channel's own credential from the vault (shared key, OAuth client secret, seats admin key).
CredentialLoader = Callable[[], Awaitable[Secret]]


#: How long a channel credential read from the vault is reused, so a bulk offboarding does not read and decrypt
#: it from the database once per vendor call. No longer than the static kind's re-read floor after an upstream
#: 401 (connectors/static.py RELOAD_FLOOR_SECONDS), so a rotated credential is still picked up on the resend.
CREDENTIAL_CACHE_SECONDS = 1.0


def cached_credential(
    load: CredentialLoader, seconds: float = CREDENTIAL_CACHE_SECONDS, clock: Callable[[], float] = time.monotonic
) -> CredentialLoader:
    """``load`` behind a cache of ``seconds``; concurrent callers of an expired entry share one read."""
    state: dict[str, Any] = {"value": None, "at": float("-inf")}
    lock = asyncio.Lock()

    async def read() -> Secret:
        if state["value"] is None or clock() - state["at"] >= seconds:
            async with lock:
                if state["value"] is None or clock() - state["at"] >= seconds:
                    state["value"] = await load()
                    state["at"] = clock()
        value: Secret = state["value"]
        return value

    return read


class IdentityAssertions(Protocol):
    """Signs a short-lived assertion of who the agent is for one channel (``gateway/proxy/assertion.py``)."""

    def sign(self, agent_id: str, user_name: str, groups: frozenset[str], channel: str, now: float) -> str: ...


@dataclass(frozen=True, slots=True)
class AgentSecretValue:
    name: str
    value: Secret
    meta: Mapping[str, Any]
    updated_at: datetime


class AgentSecrets:
    """One channel's per-agent secrets, sealed by the vault, in table ``agent_secrets`` (shared by replicas)."""

    def __init__(self, channel: str, repository: AgentSecretRepository, vault: Vault | None) -> None:
        self._channel = channel
        self._repository = repository
        self._vault = vault

    def _need_vault(self) -> Vault:
        if self._vault is None:
            raise VaultError(
                f"No vault key is configured, so channel {self._channel!r} cannot keep per-agent secrets; "
                "add [vault] keys (channelgate vault generate-key)."
            )
        return self._vault

    def _aad(self, agent_id: str, name: str) -> str:
        return f"{self._channel}/{agent_id}/{name}"

    async def put(self, agent_id: str, name: str, value: Secret, meta: Mapping[str, Any] | None = None) -> None:
        sealed = self._need_vault().encrypt(self._aad(agent_id, name), value.reveal().encode())
        await self._repository.put(
            StoredAgentSecret(
                agent_id,
                self._channel,
                name,
                sealed.key_id,
                sealed.nonce,
                sealed.ciphertext,
                utcnow(),
                dict(meta or {}),
            )
        )

    def _open(self, stored: StoredAgentSecret) -> AgentSecretValue:
        plaintext = self._need_vault().decrypt(stored, self._aad(stored.agent_id, stored.name))
        return AgentSecretValue(stored.name, Secret(plaintext.decode("utf-8")), stored.meta, stored.updated_at)

    async def get(self, agent_id: str, name: str) -> AgentSecretValue | None:
        stored = await self._repository.get(agent_id, self._channel, name)
        return None if stored is None else self._open(stored)

    async def list(self, agent_id: str) -> list[AgentSecretValue]:
        return [self._open(stored) for stored in await self._repository.list(agent_id, self._channel)]

    async def delete(self, agent_id: str, name: str | None = None) -> int:
        return await self._repository.delete(agent_id, self._channel, name)


@dataclass
class ConnectorContext:
    channel: str
    settings: ChannelSettings
    #: The channel's own credential from the vault.
    credential: CredentialLoader
    secrets: AgentSecrets
    #: The gateway's identity assertions (None in the CLI, which proxies nothing and mints no token).
    assertions: IdentityAssertions | None = None
    #: One aiohttp session per connector, made on first use and closed by ``aclose``.
    _http: aiohttp.ClientSession | None = field(default=None, repr=False)

    def http(self) -> aiohttp.ClientSession:
        """The connector's HTTP client for admin/token/ticket APIs: its own cookie jar off (a cookie-jar connector
        keeps cookies per agent itself), the channel's ``api_timeout_seconds`` as the total time limit."""
        if self._http is None or self._http.closed:
            timeout = aiohttp.ClientTimeout(total=self.settings.api_timeout_seconds)
            self._http = aiohttp.ClientSession(timeout=timeout, cookie_jar=aiohttp.DummyCookieJar())
        return self._http

    async def aclose(self) -> None:
        if self._http is not None:
            await self._http.close()
            self._http = None
