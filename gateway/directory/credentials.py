"""The bind password: sealed by the vault (AES-256-GCM, ``connectors/vault.py``) beside the channel credentials,
under the name ``ldap:<directory>`` (also its associated data, so another record's ciphertext cannot stand in)."""

from __future__ import annotations

from datetime import datetime

from connectors.vault import Vault
from gateway.directory.settings import LdapSettings
from gateway.errors import VaultError
from gateway.storage.credentials import ChannelCredentialRepository


def vault_name(settings: LdapSettings) -> str:
    return f"ldap:{settings.name}"


async def store_bind_password(
    settings: LdapSettings, credentials: ChannelCredentialRepository, vault: Vault, password: str, now: datetime
) -> None:
    name = vault_name(settings)
    sealed = vault.encrypt(name, password.encode("utf-8"))
    await credentials.put(name, sealed.key_id, sealed.nonce, sealed.ciphertext, now)


async def load_bind_password(
    settings: LdapSettings, credentials: ChannelCredentialRepository, vault: Vault | None
) -> str:
    """``[ldap] bind_password`` when set, else the sealed one; a VaultError says how to store it."""
    if settings.bind_password is not None:
        return settings.bind_password.get_secret_value()
    hint = f"store it with: channelgate ldap set-bind-password < file (directory {settings.name!r})"
    if vault is None:
        raise VaultError(f"No vault key is configured, so the directory's bind password cannot be read; {hint}")
    stored = await credentials.get(vault_name(settings))
    if stored is None:
        raise VaultError(f"No bind password is stored for the directory; {hint}")
    return vault.decrypt(stored, vault_name(settings)).decode("utf-8")
