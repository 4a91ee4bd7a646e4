"""``channelgate vault rotate`` as docs/operations/keys.md has an operator run it: a new key made active beside the
old one, then every sealed value (channel credentials and every per-agent secret, of any channel) re-sealed under
it, so the old key can be removed. A value that cannot be opened is named, the others are still re-sealed, and
the exit status says the old key must stay."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

import pytest
from pydantic import SecretStr

from connectors.context import AgentSecrets
from connectors.secret import Secret
from connectors.vault import Vault, generate_key, load_credential, store_credential
from gateway.settings import DatabaseSettings, load_settings
from gateway.storage.agent_secrets import AgentSecretRepository
from gateway.storage.credentials import ChannelCredentialRepository
from gateway.storage.database import Database
from gateway.storage.migrate import upgrade_to_head

ROOT = Path(__file__).resolve().parents[2]
NOW = datetime(2025, 3, 1, 9, 0, tzinfo=UTC)
SEALED_AT = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)
ROWS = [("agent-alice", "chat", "access:1"), ("agent-alice", "mail", "password"), ("agent-bob", "phone", "api_key")]
CONFIG = """
[server]
public_url = "https://gateway.example"

[database]
url = "{url}"

[oidc]
issuer = "https://idp.example"
client_id = "channelgate"
client_secret = "unused"

[vault]
active_key = "{active}"
keys = {{ {keys} }}

[channels.chat]
inject = "bearer"
"""


@dataclass
class Installation:
    tmp_path: Path
    url: str
    database: Database
    keys: dict[str, str]

    def configure(self, active: str, *key_ids: str) -> Path:
        config = self.tmp_path / "channelgate.toml"
        keys = ", ".join(f'{key_id} = "{self.keys[key_id]}"' for key_id in key_ids)
        config.write_text(CONFIG.format(url=self.url, active=active, keys=keys), encoding="utf-8")
        return config

    def vault(self, active: str, *key_ids: str) -> Vault:
        return Vault.from_settings(load_settings(self.configure(active, *key_ids), environ={}).vault)

    def repository(self) -> AgentSecretRepository:
        return AgentSecretRepository(self.database.engine)

    async def seal(self, vault: Vault, agent_id: str, channel: str, name: str) -> None:
        await AgentSecrets(channel, self.repository(), vault).put(
            agent_id, name, Secret(f"{channel}-{name}-value"), {"seat_id": "seat_1"}
        )


@pytest.fixture
async def installation(tmp_path: Path) -> AsyncIterator[Installation]:
    url = f"sqlite+aiosqlite:///{tmp_path}/channelgate.db"
    await upgrade_to_head(url)
    keys = {key_id: generate_key() for key_id in ("k0", "k1", "k2")}
    database = Database.from_settings(DatabaseSettings(url=SecretStr(url)))
    try:
        yield Installation(tmp_path, url, database, keys)
    finally:
        await database.dispose()


def _rotate(config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", "--config", str(config), "vault", "rotate"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
        check=False,
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
    )


async def test_rotate_reseals_every_agent_secret_so_the_old_key_can_be_removed(installation: Installation) -> None:
    old = installation.vault("k1", "k1")
    await store_credential(ChannelCredentialRepository(installation.database.engine), old, "chat", b"chat-key", NOW)
    for row in ROWS:
        await installation.seal(old, *row)
    repository = installation.repository()
    sealed = await repository.get(*ROWS[2])
    assert sealed is not None
    await repository.put(replace(sealed, updated_at=SEALED_AT))

    result = _rotate(installation.configure("k2", "k1", "k2"))
    assert result.returncode == 0, result.stderr
    assert "re-encrypted 4 value(s)" in result.stdout

    only_new = installation.vault("k2", "k2")  # the old key removed, as the procedure's last step
    credentials = ChannelCredentialRepository(installation.database.engine)
    assert (await load_credential(credentials, only_new, "chat")).reveal() == "chat-key"
    for agent_id, channel, name in ROWS:
        stored = await AgentSecrets(channel, repository, only_new).get(agent_id, name)
        assert stored is not None and stored.value.reveal() == f"{channel}-{name}-value"
        assert stored.meta == {"seat_id": "seat_1"}  # what the row records beside its value is kept
    bob = await repository.get(*ROWS[2])
    assert bob is not None and bob.updated_at == SEALED_AT  # the value did not change, so neither does its time
    assert _rotate(installation.configure("k2", "k1", "k2")).stdout.startswith("re-encrypted 0 value(s)")


async def test_one_row_under_a_key_long_gone_is_named_and_the_rows_after_it_are_still_resealed(
    installation: Installation,
) -> None:
    await installation.seal(installation.vault("k0", "k0"), "agent-aaron", "a-removed-channel", "access:1")
    old = installation.vault("k1", "k1")
    for row in ROWS:
        await installation.seal(old, *row)

    result = _rotate(installation.configure("k2", "k1", "k2"))
    assert result.returncode == 1
    assert "re-encrypted 3 value(s)" in result.stdout
    assert "'access:1' of agent agent-aaron at channel 'a-removed-channel'" in result.stderr
    assert "'k0'" in result.stderr
    assert "Traceback" not in result.stderr
    for row in ROWS:
        stored = await installation.repository().get(*row)
        assert stored is not None and stored.key_id == "k2"
