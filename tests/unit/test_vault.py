"""The vault: AES-256-GCM at rest, bound to the channel, rotatable, and never printing a secret."""

from __future__ import annotations

import base64
import logging
from dataclasses import dataclass, replace
from datetime import UTC, datetime

import pytest
from pydantic import SecretStr

from connectors.secret import Secret
from connectors.vault import Sealed, Vault, generate_key, load_credential, rotate_all, store_credential
from gateway.errors import ConfigError, VaultError
from gateway.settings import VaultSettings

NOW = datetime(2026, 12, 4, tzinfo=UTC)


def _vault(*ids: str, active: str | None = None) -> tuple[Vault, dict[str, bytes]]:
    keys = {key_id: base64.b64decode(generate_key()) for key_id in ids}
    return Vault(keys, active or ids[0]), keys


@dataclass
class _Row:
    key_id: str
    nonce: bytes
    ciphertext: bytes


class MemoryCredentials:
    """The storage side of the vault, in memory (the real repository is covered by the storage contract)."""

    def __init__(self) -> None:
        self.rows: dict[str, _Row] = {}

    async def put(self, channel: str, key_id: str, nonce: bytes, ciphertext: bytes, now: datetime) -> None:
        self.rows[channel] = _Row(key_id, nonce, ciphertext)

    async def get(self, channel: str) -> _Row | None:
        return self.rows.get(channel)

    async def list_channels(self) -> list[str]:
        return sorted(self.rows)


def test_a_credential_round_trips_and_the_ciphertext_does_not_contain_it() -> None:
    vault, _ = _vault("k1")
    sealed = vault.encrypt("chat", b"top-secret-token")
    assert b"top-secret-token" not in sealed.ciphertext
    assert vault.decrypt(sealed, "chat") == b"top-secret-token"


def test_every_encryption_uses_a_fresh_nonce() -> None:
    vault, _ = _vault("k1")
    nonces = {vault.encrypt("chat", b"x").nonce for _ in range(1000)}
    assert len(nonces) == 1000


@pytest.mark.parametrize(
    "tamper",
    [
        lambda s: replace(s, ciphertext=bytes([s.ciphertext[0] ^ 1]) + s.ciphertext[1:]),
        lambda s: replace(s, nonce=bytes([s.nonce[0] ^ 1]) + s.nonce[1:]),
        lambda s: replace(s, ciphertext=s.ciphertext[:-1] + bytes([s.ciphertext[-1] ^ 0x80])),
        lambda s: replace(s, ciphertext=s.ciphertext[:-1]),
        lambda s: replace(s, ciphertext=b""),
        lambda s: replace(s, nonce=s.nonce[:8]),
        lambda s: replace(s, nonce=b""),
    ],
    ids=["flipped-ciphertext-byte", "flipped-nonce-byte", "flipped-tag-byte", "truncated", "empty", "short-nonce",
         "no-nonce"],
)  # fmt: skip
def test_an_altered_ciphertext_is_refused_naming_channel_and_key_but_not_the_value(tamper: object) -> None:
    vault, _ = _vault("k1")
    sealed = tamper(vault.encrypt("chat", b"token-value"))  # type: ignore[operator]
    with pytest.raises(VaultError, match="altered") as error:
        vault.decrypt(sealed, "chat")
    assert "'chat'" in error.value.message
    assert "'k1'" in error.value.message
    assert "token-value" not in str(error.value)


def test_a_ciphertext_moved_to_another_channel_does_not_decrypt() -> None:
    vault, _ = _vault("k1")
    with pytest.raises(VaultError, match="phone"):
        vault.decrypt(vault.encrypt("chat", b"token"), "phone")


def test_an_unknown_key_id_is_named_in_the_error() -> None:
    vault, _ = _vault("k1")
    with pytest.raises(VaultError, match="'gone'"):
        vault.decrypt(Sealed("gone", b"0" * 12, b"x" * 32), "chat")


def test_a_key_of_the_wrong_size_is_refused_naming_it() -> None:
    with pytest.raises(ConfigError, match="k16"):
        Vault({"k16": bytes(16), "k32": bytes(32)}, "k32")


def test_settings_keys_decode_into_a_working_vault() -> None:
    vault = Vault.from_settings(VaultSettings(keys={"a": SecretStr(generate_key())}, active_key="a"))
    assert vault.decrypt(vault.encrypt("chat", b"v"), "chat") == b"v"
    assert len(base64.b64decode(generate_key(), validate=True)) == 32


def test_settings_with_a_short_or_non_base64_key_fail_naming_each_bad_key() -> None:
    settings = VaultSettings(
        keys={"good": SecretStr(generate_key()), "short": SecretStr("AAAA"), "junk": SecretStr("not base64!")},
        active_key="good",
    )
    with pytest.raises(ConfigError) as error:
        Vault.from_settings(settings)
    assert "junk" in error.value.message
    assert "short" in error.value.message
    assert "good," not in error.value.message


async def test_rotation_re_encrypts_under_the_active_key_and_old_values_still_decrypt_meanwhile() -> None:
    old, keys = _vault("k1")
    store = MemoryCredentials()
    await store_credential(store, old, "chat", b"chat-token", NOW)
    await store_credential(store, old, "mail", b"mail-token", NOW)
    keys["k2"] = base64.b64decode(generate_key())
    new = Vault(keys, "k2")
    assert (await load_credential(store, new, "chat")).reveal() == "chat-token"
    assert (await rotate_all(store, new, NOW)).resealed == 2
    assert {row.key_id for row in store.rows.values()} == {"k2"}
    assert (await rotate_all(store, new, NOW)).resealed == 0
    only_new = Vault({"k2": keys["k2"]}, "k2")
    assert (await load_credential(store, only_new, "mail")).reveal() == "mail-token"
    with pytest.raises(VaultError, match="'k2'"):
        await load_credential(store, Vault({"k1": keys["k1"]}, "k1"), "chat")


def test_only_values_under_another_key_need_rotation() -> None:
    old, keys = _vault("k1", "k2")
    sealed = old.encrypt("chat", b"x")
    assert not old.needs_rotation(sealed)
    assert Vault(keys, "k2").needs_rotation(sealed)


async def test_rotation_does_not_write_an_old_value_over_one_set_meanwhile() -> None:
    old, keys = _vault("k1", "k2")
    store = MemoryCredentials()
    await store_credential(store, old, "chat", b"before", NOW)
    new = Vault(keys, "k2")
    get = store.get
    reads = {"n": 0}

    async def racing_get(channel: str) -> _Row | None:
        reads["n"] += 1
        if reads["n"] == 2:  # an admin sets a new credential between rotation's read and its write
            await store_credential(store, new, "chat", b"after", NOW)
        return await get(channel)

    store.get = racing_get  # type: ignore[method-assign]
    assert (await rotate_all(store, new, NOW)).resealed == 0
    assert (await load_credential(store, new, "chat")).reveal() == "after"


async def test_a_missing_credential_says_how_to_set_it() -> None:
    vault, _ = _vault("k1")
    with pytest.raises(VaultError, match="channels set-credential chat"):
        await load_credential(MemoryCredentials(), vault, "chat")


def test_a_secret_never_prints(caplog: pytest.LogCaptureFixture) -> None:
    secret = Secret("hunter2")
    logging.getLogger("test").warning("value %s %r", secret, secret)
    shown = [repr(secret), str(secret), f"{secret}", f"{secret!r}", "%s" % (secret,), caplog.text]  # noqa: UP031
    assert all("hunter2" not in text for text in shown)
    assert secret.reveal() == "hunter2"
    assert "hunter2" not in repr(Sealed("k", b"n", b"hunter2"))


async def test_rotation_reseals_the_rest_and_names_a_credential_it_cannot_open() -> None:
    retired, _ = _vault("k0")
    old, keys = _vault("k1", "k2")
    store = MemoryCredentials()
    # A channel removed from the configuration long ago, its key gone since: sorted first, it used to stop rotation.
    await store_credential(store, retired, "a-retired-channel", b"old", NOW)
    await store_credential(store, old, "chat", b"chat-token", NOW)
    rotation = await rotate_all(store, Vault(keys, "k2"), NOW)
    assert rotation.resealed == 1
    assert store.rows["chat"].key_id == "k2"
    [failure] = rotation.failures
    assert "'a-retired-channel'" in failure and "'k0'" in failure
