"""What a connector is built with: its settings, the channel's own credential, per-agent secrets, HTTP, identity.

One ``ConnectorContext`` per channel, made by ``gateway/services.py``; ``connectors/registry.py`` passes it to
the kind's class. Per-agent secrets go through :class:`AgentSecrets`, which seals each value with the vault under
"<channel>/<agent_id>/<name>" as associated data, so a ciphertext moved to another agent's or channel's row does
not open.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

import aiohttp

from connectors.secret import Secret
from connectors.vault import Rotation, Vault
from gateway.errors import VaultError
from gateway.settings import ChannelSettings
from gateway.storage.agent_secrets import AgentSecretRepository, StoredAgentSecret
from gateway.timeutil import utcnow

log = logging.getLogger(__name__)

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


@dataclass(frozen=True, slots=True)
class UnreadableSecret:
    """A row sealed under a vault key that is no longer configured: its ``meta`` can be read, its value cannot."""

    name: str
    key_id: str
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

    def _open(self, stored: StoredAgentSecret) -> AgentSecretValue | UnreadableSecret:
        """The row's value; a row under a removed vault key is unreadable (an altered one still raises)."""
        vault = self._need_vault()
        if not vault.knows(stored.key_id):
            log.warning(
                "agent secret %s of agent %s at channel %s is sealed under vault key %r, which is not configured "
                "any more: treated as unreadable",
                stored.name,
                stored.agent_id,
                self._channel,
                stored.key_id,
            )
            return UnreadableSecret(stored.name, stored.key_id, stored.meta, stored.updated_at)
        plaintext = vault.decrypt(stored, self._aad(stored.agent_id, stored.name))
        return AgentSecretValue(stored.name, Secret(plaintext.decode("utf-8")), stored.meta, stored.updated_at)

    async def lookup(self, agent_id: str, name: str) -> AgentSecretValue | UnreadableSecret | None:
        """One row, readable or not: for a caller whose row records something beyond its value (a seat)."""
        stored = await self._repository.get(agent_id, self._channel, name)
        return None if stored is None else self._open(stored)

    async def get(self, agent_id: str, name: str) -> AgentSecretValue | None:
        """One readable row; one under a removed vault key is absent (logged), so a fresh value is obtained."""
        found = await self.lookup(agent_id, name)
        return found if isinstance(found, AgentSecretValue) else None

    async def read_all(self, agent_id: str) -> tuple[list[AgentSecretValue], list[UnreadableSecret]]:
        """Every row of the agent at the channel, by name: those that open, and those under a removed key."""
        readable: list[AgentSecretValue] = []
        unreadable: list[UnreadableSecret] = []
        for stored in await self._repository.list(agent_id, self._channel):
            row = self._open(stored)
            if isinstance(row, AgentSecretValue):
                readable.append(row)
            else:
                unreadable.append(row)
        return readable, unreadable

    async def list(self, agent_id: str) -> list[AgentSecretValue]:
        """Every readable row; those under a removed vault key are left out (logged)."""
        return (await self.read_all(agent_id))[0]

    async def delete(self, agent_id: str, name: str | None = None) -> int:
        return await self._repository.delete(agent_id, self._channel, name)


async def rotate_agent_secrets(
    repository: AgentSecretRepository, vault: Vault, rows: Iterable[tuple[str, str, str]]
) -> Rotation:
    """Re-seal each ``(agent_id, channel, name)`` row not under the active key, keeping its meta and time (the
    value is unchanged). A row that cannot be opened is reported and the others are still re-sealed; a row
    rewritten meanwhile (a connector seals under the active key already) is left as it is."""
    rotation = Rotation()
    for agent_id, channel, name in rows:
        stored = await repository.get(agent_id, channel, name)
        if stored is None or not vault.needs_rotation(stored):
            continue
        what = f"agent secret {name!r} of agent {agent_id} at channel {channel!r}"
        if not vault.knows(stored.key_id):
            rotation.failures.append(f"{what}: sealed under vault key {stored.key_id!r}, which is not configured")
            continue
        aad = f"{channel}/{agent_id}/{name}"
        try:
            plaintext = vault.decrypt(stored, aad)
        except VaultError:
            rotation.failures.append(f"{what}: does not decrypt with vault key {stored.key_id!r} (altered?)")
            continue
        current = await repository.get(agent_id, channel, name)
        if current is None or (current.key_id, current.nonce) != (stored.key_id, stored.nonce):
            continue
        sealed = vault.encrypt(aad, plaintext)
        await repository.put(
            StoredAgentSecret(
                agent_id, channel, name, sealed.key_id, sealed.nonce, sealed.ciphertext, stored.updated_at, stored.meta
            )
        )
        rotation.resealed += 1
    return rotation


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
