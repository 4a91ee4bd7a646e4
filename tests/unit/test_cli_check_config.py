"""``channelgate check-config FILE`` as an operator runs it: exit 0 on a good file, 2 naming every bad field."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.unit.test_settings import GOOD, SECRETS

ROOT = Path(__file__).resolve().parents[2]


def _check_config(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", "check-config", str(path)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
        check=False,
        env={"PATH": "/usr/bin:/bin", "CHANNELGATE_OIDC__CLIENT_SECRET": "from-env-s3cret"},
    )


def test_check_config_exits_0_on_a_good_file_and_prints_no_secret(tmp_path: Path) -> None:
    path = tmp_path / "good.toml"
    path.write_text(GOOD, encoding="utf-8")
    result = _check_config(path)
    assert result.returncode == 0, result.stderr
    assert "valid" in result.stdout
    assert "route /chat/ -> channel chat" in result.stdout
    output = result.stdout + result.stderr
    assert [secret for secret in [*SECRETS, "from-env-s3cret"] if secret in output] == []


def test_check_config_exits_2_naming_every_bad_field(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(
        GOOD.replace('public_url = "https://gateway.example"', 'public_url = "https://gateway.example"\nport = 0')
        .replace('issuer = "https://idp.example"', 'issuer = "ftp://idp.example"')
        .replace('prefix = "/chat/"', 'prefix = "chat"'),
        encoding="utf-8",
    )
    result = _check_config(path)
    assert result.returncode == 2
    assert result.stdout == ""
    for field in ("server.port", "oidc.issuer", "routes.0.prefix"):
        assert field in result.stderr
    assert "Traceback" not in result.stderr


def test_check_config_exits_2_on_a_vault_key_that_does_not_decode_without_printing_it(tmp_path: Path) -> None:
    path = tmp_path / "bad-key.toml"
    path.write_text(GOOD.replace("dmF1bHQta2V5LXMzY3JldC0zMi1ieXRlcy1sb25nISE=", "short-key-s3cret"), encoding="utf-8")
    result = _check_config(path)
    assert result.returncode == 2
    assert "vault" in result.stderr and "k1" in result.stderr
    assert "short-key-s3cret" not in result.stderr


def test_check_config_exits_2_on_a_missing_file(tmp_path: Path) -> None:
    result = _check_config(tmp_path / "absent.toml")
    assert result.returncode == 2
    assert "no such configuration file" in result.stderr


def test_check_config_exits_2_naming_a_file_that_is_not_utf8_or_is_a_directory(tmp_path: Path) -> None:
    latin1 = tmp_path / "latin1.toml"
    latin1.write_bytes(GOOD.encode("utf-8") + b"# caf\xe9\n")
    for path, problem in ((latin1, "not UTF-8"), (tmp_path, "is a directory")):
        result = _check_config(path)
        assert result.returncode == 2, result.stderr
        assert str(path) in result.stderr and problem in result.stderr
        assert "Traceback" not in result.stderr


def test_the_example_configuration_is_valid_in_every_section() -> None:
    from gateway.settings import load_settings

    example = Path(__file__).resolve().parents[2] / "deploy" / "channelgate.example.toml"
    settings = load_settings(example, environ={})
    assert settings.audit.forwarders[0].name == "siem" and settings.console.admin_groups == ("gateway-admins",)
    helpdesk = next(route for route in settings.routes if route.channel == "helpdesk")
    assert settings.ldap is not None and helpdesk.data[0].action == "download"


def test_the_example_configuration_ships_no_working_admin_token_but_says_how_to_make_one() -> None:
    from gateway.settings import load_settings

    example = Path(__file__).resolve().parents[2] / "deploy" / "channelgate.example.toml"
    assert load_settings(example, environ={}).admin.tokens == ()
    section = example.read_text(encoding="utf-8").split("[admin]", 1)[1].split("\n\n", 1)[0]
    assert "secrets.token_urlsafe(32)" in section and "CHANNELGATE_ADMIN__TOKENS" in section
