"""deploy/systemd: the units pass ``systemd-analyze verify`` with no warning (an unknown or misspelt directive is
only a warning there, so any output fails the test), and ``systemd-analyze security --offline`` rates their
exposure "OK" (below 2.0 of 10). The binary path is pointed at this checkout's ``channelgate``, which verify
requires to exist."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from gateway.cli import build_parser
from tests.deploy.tools import DEPLOY, run

UNITS = DEPLOY / "systemd"
SYSTEMD_ANALYZE = shutil.which("systemd-analyze")

pytestmark = pytest.mark.skipif(SYSTEMD_ANALYZE is None, reason="systemd-analyze is not installed on this machine")


@pytest.fixture
def units(tmp_path: Path) -> Path:
    channelgate = Path(shutil.which("channelgate") or Path(__import__("sys").executable).with_name("channelgate"))
    for source in UNITS.glob("*.service"):
        text = source.read_text(encoding="utf-8").replace("/opt/channelgate/bin/channelgate", str(channelgate))
        target = source.name.replace("@.service", "@8000.service")
        (tmp_path / target).write_text(text, encoding="utf-8")
    return tmp_path


def test_systemd_analyze_verify_finds_nothing(units: Path) -> None:
    assert SYSTEMD_ANALYZE is not None
    names = sorted(path.name for path in units.glob("*.service"))
    assert names == ["channelgate-migrate.service", "channelgate@8000.service"]
    result = run([SYSTEMD_ANALYZE, "verify", "--man=no", *(f"./{name}" for name in names)], cwd=units)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "" and result.stderr.strip() == "", result.stderr


@pytest.mark.parametrize("unit", ["channelgate@8000.service", "channelgate-migrate.service"])
def test_systemd_rates_the_exposure_ok(units: Path, unit: str) -> None:
    assert SYSTEMD_ANALYZE is not None
    result = run([SYSTEMD_ANALYZE, "security", "--offline=yes", "--no-pager", f"./{unit}"], cwd=units)
    assert result.returncode == 0, result.stderr
    level = re.search(r"Overall exposure level for \S+: (\d+\.\d+) (\w+)", result.stdout)
    assert level is not None, result.stdout[-500:]
    assert float(level.group(1)) < 2.0 and level.group(2) == "OK", level.group(0)


def test_the_units_run_commands_the_cli_accepts_as_the_images_user() -> None:
    service = (UNITS / "channelgate@.service").read_text(encoding="utf-8")
    migrate = (UNITS / "channelgate-migrate.service").read_text(encoding="utf-8")
    serve = re.search(r"^ExecStart=/opt/channelgate/bin/channelgate (.+)$", service, re.MULTILINE)
    assert serve is not None
    build_parser().parse_args(serve.group(1).replace("%i", "8000").split())
    assert "ExecStart=/opt/channelgate/bin/channelgate migrate" in migrate
    assert "Requires=channelgate-migrate.service" in service and "After=channelgate-migrate.service" in service
    sysusers = (UNITS / "channelgate.sysusers.conf").read_text(encoding="utf-8")
    assert "u channelgate 10001:10001" in sysusers  # the same UID as the container image
    for text in (service, migrate):
        for directive in ("NoNewPrivileges=yes", "ProtectSystem=strict", "PrivateTmp=yes", "CapabilityBoundingSet="):
            assert f"\n{directive}\n" in text
