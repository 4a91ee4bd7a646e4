"""Search and export end to end (issue 5, item 4): ``channelgate audit search|export`` as an operator runs them, the
admin API over real HTTP with its bearer token, and the gateway forwarding to a syslog receiver from its lifespan.
Every reading of the log is itself in the log."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import stat
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from gateway.services import Services
from gateway.settings import load_settings
from gateway.storage.access_log import AccessQuery, AccessRecord
from gateway.storage.migrate import upgrade_to_head
from tests.audit.format_parsers import parse_cef, parse_syslog
from tests.audit.siem_receivers import HOST, SyslogReceiver
from tests.components.asgi_server import bound_socket
from tests.components.inprocess import running_gateway

pytestmark = pytest.mark.timeout(120)

ROOT = Path(__file__).resolve().parents[2]
ADMIN_TOKEN = "admin-token-for-the-audit-tests-0123456789"
HOSTILE_NAME = "mallory\r\nCEF:0|x|x|1|1|forged|10|suser=root \x1b[31m"
T0 = datetime(2026, 11, 30, 22, 0, tzinfo=UTC)


def _config(tmp_path: Path, *, syslog_port: int | None = None) -> Path:
    forwarder = (
        f'\n[[audit.forwarders]]\nname = "siem"\nurl = "syslog+tcp://{HOST}:{syslog_port}"\nformat = "syslog"\n'
        if syslog_port
        else ""
    )
    path = tmp_path / "channelgate.toml"
    path.write_text(
        f"""
[server]
insecure_dev_cookies = true

[database]
url = "sqlite+aiosqlite:///{tmp_path}/data/channelgate.db"

[oidc]
issuer = "https://idp.invalid"
client_id = "channelgate"
client_secret = "not-used-here"

[admin]
tokens = ["{ADMIN_TOKEN}"]
{forwarder}"""
    )
    return path


def _records() -> list[AccessRecord]:
    rows = [
        AccessRecord(
            time=T0 + timedelta(minutes=n),
            kind="request",
            agent_name="alice",
            source_ip="192.0.2.7",
            channel="chat",
            method="GET",
            path=f"/chat/customers/C-{n}/export?format",
            status=200,
            decision="allow",
            subject=f"C-{n}",
            action="download",
        )
        for n in range(12)
    ]
    rows.append(AccessRecord(time=T0, kind="login_failed", agent_name=HOSTILE_NAME, reason='nonce|=]"\\'))
    return rows


@dataclass
class Stack:
    config: Path
    services: Services
    url: str
    receiver: SyslogReceiver

    def cli(self, *args: str, umask: int | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "gateway", "--config", str(self.config), *args],
            capture_output=True,
            text=True,
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            timeout=60,
            check=False,
            preexec_fn=None if umask is None else (lambda: os.umask(umask)),
        )

    async def kinds(self, kind: str) -> list[AccessRecord]:
        return await self.services.access_log.search(AccessQuery(kind=kind))


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[Stack]:
    receiver = SyslogReceiver(None)
    await receiver.start()
    try:
        config = _config(tmp_path, syslog_port=receiver.port)
        settings = load_settings(config)
        await upgrade_to_head(settings.database.url.get_secret_value())
        sock = bound_socket()
        async with running_gateway(settings, sock) as services:
            await services.audit.write(*_records())
            yield Stack(config, services, f"http://{HOST}:{sock.getsockname()[1]}", receiver)
    finally:
        await receiver.stop()


async def test_the_cli_searches_and_exports_and_each_reading_is_recorded(stack: Stack, tmp_path: Path) -> None:
    found = stack.cli("audit", "search", "--agent", "alice", "--action", "download", "--limit", "5", "--json")
    assert found.returncode == 0, found.stderr
    page = json.loads(found.stdout)
    assert [r["subject"] for r in page["records"]] == ["C-11", "C-10", "C-9", "C-8", "C-7"]
    assert page["next"]
    following = stack.cli("audit", "search", "--agent", "alice", "--limit", "5", "--before", page["next"], "--json")
    assert [r["subject"] for r in json.loads(following.stdout)["records"]] == ["C-6", "C-5", "C-4", "C-3", "C-2"]

    listed = stack.cli("audit", "search", "--kind", "login_failed")
    assert listed.returncode == 0 and listed.stdout.count("\n") == 1  # the CR/LF in the name did not add a line
    assert "\x1b" not in listed.stdout and "agent_name=mallory\\x0d\\x0aCEF:0" in listed.stdout
    tail = stack.cli("audit", "tail", "-n", "100")  # the same listing, without the search's subject and action
    assert tail.returncode == 0 and "\x1b" not in tail.stdout and "agent_name=mallory\\x0d\\x0aCEF:0" in tail.stdout
    assert "path=/chat/customers/C-11/export?format" in tail.stdout and "subject=" not in tail.stdout

    output = tmp_path / "alice.cef"
    exported = stack.cli("audit", "export", "--format", "cef", "--agent", "alice", "--output", str(output))
    assert exported.returncode == 0, exported.stderr
    lines = output.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 12 and not (tmp_path / "alice.cef.partial").exists()
    assert {parse_cef(line)[1]["cs2"] for line in lines} == {f"C-{n}" for n in range(12)}

    syslog = stack.cli("audit", "export", "--format", "syslog", "--kind", "login_failed")
    [message] = syslog.stdout.splitlines()
    assert parse_syslog(message)["sd"][0][1]["agentName"] == HOSTILE_NAME

    bad = stack.cli("audit", "search", "--since", "last tuesday")
    assert bad.returncode == 2 and "'since' must be an ISO 8601 date or time" in bad.stderr

    searches, exports = await stack.kinds("audit_search"), await stack.kinds("audit_export")
    assert len(searches) == 3 and len(exports) == 2  # the refused search read nothing and is not recorded
    assert all((r.actor or "").startswith("cli:") for r in searches + exports)
    assert exports[-1].detail == {"filters": {"agent": "alice"}, "format": "cef"}
    assert exports[-1].action == "export"


async def test_the_admin_api_pages_and_streams_exports_only_for_an_admin_token(stack: Stack) -> None:
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}", "Accept": "application/json"}
    async with httpx.AsyncClient(base_url=stack.url + "/.channelgate/admin/audit") as client:
        refused = await client.get("/search", headers={"Accept": "application/json"})
        assert refused.status_code == 401 and refused.json()["error"] == "admin_token_required"

        first = await client.get("/search", params={"agent": "alice", "limit": "8"}, headers=headers)
        assert first.status_code == 200 and first.headers["cache-control"] == "no-store"
        body = first.json()
        params = {"agent": "alice", "limit": "8", "before": body["next"]}
        second = await client.get("/search", params=params, headers=headers)
        records = body["records"] + second.json()["records"]
        assert second.json()["next"] is None
        assert [r["subject"] for r in records] == [f"C-{n}" for n in range(11, -1, -1)]

        for params, message in (
            ({"since": "soon"}, "'since' must be an ISO 8601"),
            ({"action": "steal"}, "'action' must be one of"),
            ({"limit": "5", "limit2": "x"}, "Unknown filter 'limit2'"),
            ({"format": "cef"}, "'format' belongs to"),
        ):
            bad = await client.get("/search", params=params, headers=headers)
            assert bad.status_code == 400 and bad.json()["error"] == "bad_request"
            assert message in bad.json()["message"]

        async with client.stream("GET", "/export", params={"format": "ocsf", "agent": "alice"}, headers=headers) as r:
            assert r.status_code == 200 and r.headers["content-type"] == "application/x-ndjson"
            events = [json.loads(line) async for line in r.aiter_lines() if line]
        assert len(events) == 12 and {e["class_uid"] for e in events} == {3003}
        missing = await client.get("/export", params={"agent": "alice"}, headers=headers)
        assert missing.status_code == 400 and "'format' must be one of jsonl, cef, syslog, ocsf" in missing.text

    searches = await stack.kinds("audit_search")
    assert len(searches) == 2 and {r.actor for r in searches} == {"admin-token-0"}
    assert searches[0].detail == {"filters": {"agent": "alice"}, "limit": 8}
    assert searches[0].path == "/.channelgate/admin/audit/search" and searches[0].source_ip == HOST
    [export] = await stack.kinds("audit_export")
    assert export.detail == {"filters": {"agent": "alice"}, "format": "ocsf"}


def _cursor(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


async def test_the_admin_search_answers_400_naming_the_parameter_never_500_to_values_out_of_range(
    stack: Stack,
) -> None:
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}", "Accept": "application/json"}
    cases = (
        ({"limit": "\u00b2"}, "'limit'"),
        ({"since": "0001-01-01T00:00:00+01:00"}, "'since'"),
        ({"until": "9999-12-31T23:59:59-01:00"}, "'until'"),
        ({"before": _cursor("0001-01-01T00:00:00+01:00/5")}, "'before'"),
        ({"before": _cursor("2026-01-01T00:00:00+00:00/99999999999999999999999")}, "'before'"),  # beyond BIGINT
    )
    async with httpx.AsyncClient(base_url=stack.url + "/.channelgate/admin/audit") as client:
        for params, named in cases:
            response = await client.get("/search", params=params, headers=headers)
            assert (response.status_code, response.json()["error"]) == (400, "bad_request"), params
            assert named in response.json()["message"]


async def test_an_export_file_is_private_even_over_an_existing_file_and_never_written_through_a_symlink(
    stack: Stack, tmp_path: Path
) -> None:
    existing = tmp_path / "existing.jsonl"
    existing.write_text("last month's export\n")
    existing.chmod(0o644)
    elsewhere = tmp_path / "elsewhere.txt"
    elsewhere.write_text("")
    (tmp_path / "linked.jsonl").symlink_to(elsewhere)
    for name in ("new.jsonl", "existing.jsonl", "linked.jsonl"):
        target = tmp_path / name
        done = stack.cli(
            "audit", "export", "--format", "jsonl", "--agent", "alice", "--output", str(target), umask=0o022
        )
        assert done.returncode == 0, done.stderr
        assert not target.is_symlink() and stat.S_IMODE(target.stat().st_mode) == 0o600, name
        assert len(target.read_text(encoding="utf-8").splitlines()) == 12
    assert elsewhere.read_text() == ""  # the link was replaced, not followed
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".partial")] == []


async def test_the_gateway_forwards_sealed_records_to_its_configured_siem(stack: Stack) -> None:
    for _ in range(300):
        if len(stack.receiver.messages) >= 13:
            break
        await asyncio.sleep(0.1)
    messages = [parse_syslog(m) for m in stack.receiver.messages]
    positions = [int(m["sd"][0][1]["chainPos"]) for m in messages]
    assert positions[:13] == list(range(1, 14))
    assert HOSTILE_NAME in {m["sd"][0][1].get("agentName") for m in messages}
