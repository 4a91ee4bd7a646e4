"""``channelgate channels set-agent-password CHANNEL AGENT`` as an operator runs it: the password from standard
input, sealed by the vault for that agent and channel, never echoed; refused for a channel that is not a cookie
jar, an unknown agent or an empty input."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest

from connectors.context import AgentSecrets
from connectors.cookie_jar import PASSWORD
from connectors.vault import Vault, generate_key
from gateway.settings import load_settings
from gateway.storage.agent_secrets import AgentSecretRepository
from gateway.storage.agents import AgentRepository
from gateway.storage.database import Database
from gateway.storage.migrate import upgrade_to_head

ROOT = Path(__file__).resolve().parents[2]
PASSWORD_VALUE = "alice's console pw: s3cr3t ünïcode"


@dataclass
class Installation:
    config: Path
    database: Database
    vault: Vault
    alice_id: str

    def secrets(self, channel: str) -> AgentSecrets:
        return AgentSecrets(channel, AgentSecretRepository(self.database.engine), self.vault)


@pytest.fixture
async def installation(tmp_path: Path) -> AsyncIterator[Installation]:
    url = f"sqlite+aiosqlite:///{tmp_path}/channelgate.db"
    config = tmp_path / "channelgate.toml"
    config.write_text(
        f"""
[server]
public_url = "https://gateway.example"

[database]
url = "{url}"

[oidc]
issuer = "https://idp.example"
client_id = "channelgate"
client_secret = "unused"

[vault]
active_key = "k1"
keys = {{ k1 = "{generate_key()}" }}

[channels.chat]
inject = "bearer"

[channels.mail]
kind = "cookie_jar"
console_url = "http://127.0.0.1:9"
""",
        encoding="utf-8",
    )
    await upgrade_to_head(url)
    settings = load_settings(config, environ={})
    database = Database.from_settings(settings.database)
    agent = await AgentRepository(database.engine).link_or_create_from_login(
        "https://idp.example", "sub-alice", "alice", None, None, datetime.now(UTC),
        link_by="user_name_is_preferred_username", email_verified=False,
    )  # fmt: skip
    try:
        yield Installation(config, database, Vault.from_settings(settings.vault), agent.id)
    finally:
        await database.dispose()


def _run(config: Path, *args: str, stdin: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", "--config", str(config), "channels", "set-agent-password", *args],
        input=stdin,
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
        check=False,
        env={"PATH": "/usr/bin:/bin"},
    )


@pytest.mark.parametrize("agent", ["alice", "by-id"])
async def test_the_password_from_stdin_is_stored_sealed_for_that_agent_and_never_echoed(
    installation: Installation, agent: str
) -> None:
    name = installation.alice_id if agent == "by-id" else agent
    result = _run(installation.config, "mail", name, stdin=PASSWORD_VALUE + "\n")
    assert result.returncode == 0, result.stderr
    assert "console password of alice for channel 'mail' stored" in result.stdout
    assert PASSWORD_VALUE not in result.stdout + result.stderr
    stored = await installation.secrets("mail").get(installation.alice_id, PASSWORD)
    assert stored is not None and stored.value.reveal() == PASSWORD_VALUE
    assert await installation.secrets("chat").get(installation.alice_id, PASSWORD) is None


async def test_storing_again_replaces_the_password(installation: Installation) -> None:
    _run(installation.config, "mail", "alice", stdin="first\n")
    _run(installation.config, "mail", "alice", stdin="second\n")
    stored = await installation.secrets("mail").get(installation.alice_id, PASSWORD)
    assert stored is not None and stored.value.reveal() == "second"


@pytest.mark.parametrize(
    ("args", "stdin", "code", "message"),
    [
        (("chat", "alice"), "pw\n", 2, 'only kind = "cookie_jar" channels'),
        (("nowhere", "alice"), "pw\n", 2, "channel 'nowhere' is not configured"),
        (("mail", "alice"), "\n", 2, "no password on standard input"),
        (("mail", "mallory"), "pw\n", 1, "no agent has the id or userName 'mallory'"),
    ],
    ids=["static-channel", "unknown-channel", "empty-input", "unknown-agent"],
)
async def test_a_wrong_channel_agent_or_empty_input_is_refused_and_stores_nothing(
    installation: Installation, args: tuple[str, str], stdin: str, code: int, message: str
) -> None:
    result = _run(installation.config, *args, stdin=stdin)
    assert result.returncode == code
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert await installation.secrets("mail").get(installation.alice_id, PASSWORD) is None
