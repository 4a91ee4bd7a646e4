"""``channelgate ldap ...`` as an operator runs it, against a real ``slapd``: the bind password sealed in the
vault, a dry run that changes nothing, a sync, its status, a quarantine and its approval."""

from __future__ import annotations

import base64
import io
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from gateway.cli import main
from gateway.storage.migrate import upgrade_to_head
from tests.components.gateway import ROOT
from tests.components.ldap_server import GROUPS, PEOPLE, SYNC_DN, SYNC_PASSWORD, LdapServer, group_ldif, person_ldif

pytestmark = [pytest.mark.timeout(90)]

TEAM = [f"agent{i}" for i in range(10)]


@pytest.fixture
def directory() -> Iterator[LdapServer]:
    with LdapServer() as server:
        server.add("\n".join(person_ldif(n) for n in TEAM) + "\n" + group_ldif("agents", TEAM))
        yield server


@pytest.fixture
async def config(directory: LdapServer) -> AsyncIterator[Path]:
    base = Path(tempfile.mkdtemp(prefix="channelgate-ldap-cli-"))
    key = base64.b64encode(secrets.token_bytes(32)).decode()
    database = f"sqlite+aiosqlite:///{base / 'channelgate.db'}"
    path = base / "channelgate.toml"
    path.write_text(
        f"""
[server]
public_url = "http://127.0.0.1:9"
insecure_dev_cookies = true

[database]
url = "{database}"

[oidc]
issuer = "http://127.0.0.1:9/unused"
client_id = "unused"
client_secret = "unused"

[vault]
active_key = "k1"
keys = {{ k1 = "{key}" }}

[ldap]
url = "{directory.url}"
bind_dn = "{SYNC_DN}"
users_base = "{PEOPLE}"
groups_base = "{GROUPS}"
agents_group = "cn=agents,{GROUPS}"

[ldap.quarantine]
max_share = 0.5
min_agents = 5
""",
        encoding="utf-8",
    )
    await upgrade_to_head(database)
    yield path
    shutil.rmtree(base, ignore_errors=True)


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Callable[..., Result]:
    """``channelgate`` in this process (its argument parsing, output and exit codes; no interpreter start-up)."""

    def run(config: Path, *args: str, stdin: str = "") -> Result:
        monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
        capsys.readouterr()
        code = main(["--config", str(config), *args])
        captured = capsys.readouterr()
        return Result(code, captured.out, captured.err)

    return run


def run_cli(config: Path, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    """The real command in a child process, as an operator runs it."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("CHANNELGATE_")}
    return subprocess.run(
        [sys.executable, "-W", "ignore::DeprecationWarning", "-m", "gateway", "--config", str(config), *args],
        input=stdin,
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=environ,
        timeout=60,
        check=False,
    )


def test_without_a_stored_bind_password_the_sync_says_how_to_store_it(config: Path, cli: Callable[..., Result]) -> None:
    result = cli(config, "ldap", "sync", "--dry-run")
    assert result.returncode == 1
    assert "channelgate ldap set-bind-password" in result.stderr


def test_a_dry_run_prints_the_plan_and_changes_nothing_then_the_sync_applies_it(
    config: Path, cli: Callable[..., Result]
) -> None:
    stored = run_cli(config, "ldap", "set-bind-password", stdin=SYNC_PASSWORD + "\n")
    assert stored.returncode == 0, stored.stderr
    assert SYNC_PASSWORD not in stored.stdout + stored.stderr

    dry = cli(config, "ldap", "sync", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "create     agent3" in dry.stdout and "dry run, nothing changed" in dry.stdout
    assert json.loads(cli(config, "ldap", "status").stdout)["last_full_at"] is None

    applied = cli(config, "ldap", "sync", "--json")
    assert applied.returncode == 0, applied.stderr
    assert json.loads(applied.stdout)["applied"] == {"create": len(TEAM)}
    status = json.loads(cli(config, "ldap", "status").stdout)
    assert status["last_full_at"] is not None and status["quarantines"] == []


def test_a_mass_disable_is_quarantined_shown_by_status_and_carried_out_once_approved(
    config: Path, directory: LdapServer, cli: Callable[..., Result]
) -> None:
    assert cli(config, "ldap", "set-bind-password", stdin=SYNC_PASSWORD + "\n").returncode == 0
    assert cli(config, "ldap", "sync").returncode == 0
    directory.modify("".join(f"dn: uid={n},{PEOPLE}\nchangetype: delete\n\n" for n in TEAM[1:]))

    held = cli(config, "ldap", "sync")
    assert held.returncode == 0, held.stderr
    assert "QUARANTINED: 9 disables held" in held.stdout
    status = cli(config, "ldap", "status")
    assert status.returncode == 3
    [quarantine] = json.loads(status.stdout)["quarantines"]
    assert (quarantine["state"], quarantine["disabling"]) == ("held", 9)

    approved = cli(config, "ldap", "approve", quarantine["id"], "--actor", "ops:alice")
    assert approved.returncode == 0, approved.stderr
    assert "approved and applied" in approved.stdout
    after = cli(config, "ldap", "status")
    assert after.returncode == 0 and json.loads(after.stdout)["quarantines"] == []
    assert cli(config, "ldap", "approve", quarantine["id"]).returncode == 1
