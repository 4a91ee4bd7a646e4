"""Channel credentials encrypted at rest with AES-256-GCM (NIST SP 800-38D) under keys from the configuration.

Each credential is sealed with a fresh 96-bit random nonce and the channel name as associated data, so a
ciphertext copied onto another channel's row fails to decrypt. Every sealed value records its key id: to rotate,
add a new key, make it ``active_key``, run ``channelgate vault rotate`` (re-encrypts the channel credentials here
and the per-agent secrets by ``connectors/context.py``), then remove the old key from the configuration once it
reports nothing left under it.
"""

from __future__ import annotations

import base64
import binascii
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from connectors.secret import Secret
from gateway.errors import ConfigError, VaultError
from gateway.settings import VaultSettings

KEY_BYTES = 32
NONCE_BYTES = 12


@dataclass(frozen=True, slots=True)
class Sealed:
    key_id: str
    nonce: bytes
    ciphertext: bytes

    def __repr__(self) -> str:
        return f"Sealed(key_id={self.key_id!r}, ...)"


class SealedRecord(Protocol):
    """Anything carrying a sealed value: a ``Sealed`` or a stored row (``StoredCredential``)."""

    @property
    def key_id(self) -> str: ...
    @property
    def nonce(self) -> bytes: ...
    @property
    def ciphertext(self) -> bytes: ...


class CredentialStore(Protocol):
    """What the vault needs from storage (``gateway.storage.credentials.ChannelCredentialRepository``)."""

    async def put(self, channel: str, key_id: str, nonce: bytes, ciphertext: bytes, now: datetime) -> object: ...

    async def get(self, channel: str) -> SealedRecord | None: ...

    async def list_channels(self) -> list[str]: ...


def generate_key() -> str:
    """A new random AES-256 key, base64, for ``[vault] keys``."""
    return base64.b64encode(os.urandom(KEY_BYTES)).decode("ascii")


class Vault:
    """AES-256-GCM under named keys: ``active_key`` seals, every key still configured opens."""

    def __init__(self, keys: Mapping[str, bytes], active_key: str) -> None:
        short = sorted(key_id for key_id, key in keys.items() if len(key) != KEY_BYTES)
        if short:
            raise ConfigError(f"vault keys {', '.join(short)} are not {KEY_BYTES} bytes (AES-256)")
        if active_key not in keys:
            raise ConfigError(f"vault: active_key {active_key!r} is not one of the configured keys")
        self._ciphers = {key_id: AESGCM(key) for key_id, key in keys.items()}
        self.active_key = active_key

    @classmethod
    def from_settings(cls, settings: VaultSettings) -> Vault:
        keys: dict[str, bytes] = {}
        bad: list[str] = []
        for key_id, secret in settings.keys.items():
            try:
                raw = base64.b64decode(secret.get_secret_value(), validate=True)
            except (binascii.Error, ValueError):
                raw = b""
            if len(raw) != KEY_BYTES:
                bad.append(key_id)
            keys[key_id] = raw
        if bad:
            raise ConfigError(
                f"vault keys {', '.join(sorted(bad))} are not base64 of exactly {KEY_BYTES} bytes "
                "(make one with: channelgate vault generate-key)"
            )
        return cls(keys, settings.active_key or "")

    def encrypt(self, channel: str, plaintext: bytes) -> Sealed:
        """Seal under the active key with a fresh random 96-bit nonce (SP 800-38D §8.2.2) and the channel as AD."""
        nonce = os.urandom(NONCE_BYTES)
        ciphertext = self._ciphers[self.active_key].encrypt(nonce, plaintext, channel.encode())
        return Sealed(self.active_key, nonce, ciphertext)

    def decrypt(self, sealed: SealedRecord, channel: str) -> bytes:
        """Open a value sealed for ``channel``; any alteration, or another channel's value, is a VaultError."""
        cipher = self._ciphers.get(sealed.key_id)
        if cipher is None:
            raise VaultError(
                f"The credential of channel {channel!r} is sealed with vault key {sealed.key_id!r}, which is not "
                "configured any more; add it back or store the credential again."
            )
        if len(sealed.nonce) != NONCE_BYTES:
            raise VaultError(
                f"The credential of channel {channel!r} (vault key {sealed.key_id!r}) has a "
                f"{len(sealed.nonce)}-byte nonce, not {NONCE_BYTES}: it was altered."
            )
        try:
            return cipher.decrypt(sealed.nonce, sealed.ciphertext, channel.encode())
        except InvalidTag:
            raise VaultError(
                f"The credential of channel {channel!r} does not decrypt with vault key {sealed.key_id!r}: "
                "it was altered or belongs to another channel."
            ) from None

    def knows(self, key_id: str) -> bool:
        """Whether ``key_id`` is still configured, so what it sealed can be opened."""
        return key_id in self._ciphers

    def needs_rotation(self, sealed: SealedRecord) -> bool:
        """Whether ``sealed`` is under a key other than the active one (``channelgate vault rotate`` re-seals it)."""
        return sealed.key_id != self.active_key


async def store_credential(store: CredentialStore, vault: Vault, channel: str, value: bytes, now: datetime) -> None:
    """Seal ``value`` for ``channel`` and store it, replacing the previous credential."""
    sealed = vault.encrypt(channel, value)
    await store.put(channel, sealed.key_id, sealed.nonce, sealed.ciphertext, now)


async def load_credential(store: CredentialStore, vault: Vault, channel: str) -> Secret:
    """The channel's credential, decrypted into a ``Secret`` that cannot print."""
    stored = await store.get(channel)
    if stored is None:
        raise VaultError(
            f"No credential is stored for channel {channel!r}; set one with: "
            f"channelgate channels set-credential {channel}"
        )
    try:
        return Secret(vault.decrypt(stored, channel).decode("utf-8"))
    except UnicodeDecodeError:
        raise VaultError(f"The credential of channel {channel!r} is not UTF-8 text.") from None


@dataclass
class Rotation:
    """What ``channelgate vault rotate`` did: how many values it re-sealed, and each one it could not open."""

    resealed: int = 0
    #: One line per value left under its old key (what it is and why), never the value.
    failures: list[str] = field(default_factory=list)

    def add(self, other: Rotation) -> None:
        self.resealed += other.resealed
        self.failures.extend(other.failures)


async def rotate_all(store: CredentialStore, vault: Vault, now: datetime) -> Rotation:
    """Re-encrypt every credential not sealed under the active key. One that cannot be opened (its key is gone,
    or it was altered) is reported and the rest are still re-sealed: otherwise one leftover row would keep every
    later credential under the old key, which could then never be removed."""
    rotation = Rotation()
    for channel in await store.list_channels():
        stored = await store.get(channel)
        if stored is None or not vault.needs_rotation(stored):
            continue
        try:
            plaintext = vault.decrypt(stored, channel)
        except VaultError as exc:
            rotation.failures.append(f"channel credential {channel!r}: {exc.message}")
            continue
        current = await store.get(channel)
        # Skip a credential replaced meanwhile (set-credential seals under the active key already), so rotation
        # does not write an older value back over it.
        if current is not None and (current.key_id, current.nonce) == (stored.key_id, stored.nonce):
            await store_credential(store, vault, channel, plaintext, now)
            rotation.resealed += 1
    return rotation
