"""``channelgate report agent|monthly`` as an operator runs them (``python -m gateway --config … report …``), after
a real deprovisioning: JSON and HTML, a private output file, and clear refusals. The final check from the CLI
proves "no live session" only with the shared (Redis) session store; with the gateway's in-memory store another
process cannot see it, and the verdict says so instead of claiming it."""

from __future__ import annotations

import json
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.cli.reports import private_output
from gateway.deprovision.plan import RunState
from gateway.storage.access_log import AccessQuery
from gateway.timeutil import utcnow
from tests.components.offboarding import OffboardingStack, offboarding_stack
from tests.integration.test_deprovision_pipeline import finished_run, gateway_of, give_access

ROOT = Path(__file__).resolve().parents[2]


def channelgate(stack: OffboardingStack, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", "--config", str(stack.config_path), *args],
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


async def offboard(stack: OffboardingStack) -> None:
    stack.add_agents(["alice", "carol"], managers={"alice": "carol"})
    async with gateway_of(stack) as services:
        await give_access(services, "alice")
        await services.killer.deprovision("alice", reason="left the company", actor="hr-admin", source="cli")
        assert (await finished_run(services, "alice")).state is RunState.DONE


@pytest.mark.redis
async def test_cli_agent_report_proves_access_ended_with_the_shared_session_store(
    redis_url: str, tmp_path: Path
) -> None:
    async with offboarding_stack({"alice": 2}, ["alice", "carol"]) as stack:
        config = stack.config_path.read_text(encoding="utf-8")
        stack.config_path.write_text(
            config.replace('store = "memory"', f'store = "redis"\nredis_url = "{redis_url}"'), encoding="utf-8"
        )
        await offboard(stack)

        as_json = channelgate(stack, "report", "agent", "alice", "--format", "json")
        output = tmp_path / "alice.html"
        as_html = channelgate(stack, "report", "agent", "ALICE", "--output", str(output))
        monthly = channelgate(stack, "report", "monthly", utcnow().strftime("%Y-%m"), "--format", "json")

    assert as_json.returncode == 0, as_json.stderr
    data = json.loads(as_json.stdout)
    assert data["zero_access"]["verdict"] == "access ended", data["zero_access"]
    sessions = data["zero_access"]["checks"][1]
    assert sessions["evidence"] == ["the redis session store holds no live session of the agent"]
    assert {h["channel"]: h["to"] for h in data["hand_overs"]} == {"chat": "carol", "mail": "carol"}
    assert as_html.returncode == 0, as_html.stderr
    assert as_html.stdout == ""
    assert stat.S_IMODE(output.stat().st_mode) == 0o600  # personal data: readable by the operator only
    html = output.read_text(encoding="utf-8")
    assert html.startswith("<!doctype html>") and "access ended" in html and "T-alice-1" in html
    assert monthly.returncode == 0, monthly.stderr
    assert json.loads(monthly.stdout)["disabled_access_total"] == 0


async def test_cli_agent_report_does_not_claim_no_session_it_cannot_see_in_the_gateways_memory() -> None:
    async with offboarding_stack({}, ["alice", "carol"]) as stack:
        await offboard(stack)
        result = channelgate(stack, "report", "agent", "alice", "--format", "json")

    assert result.returncode == 0, result.stderr
    zero = json.loads(result.stdout)["zero_access"]
    assert zero["verdict"] == "access NOT proven ended"
    assert [c["passed"] for c in zero["checks"]] == [True, False, True, True]
    assert zero["reasons"] == [
        "no live session: the memory session store was not checked: it is in the gateway process's memory; run the "
        "report from the console"
    ]


async def test_cli_refuses_an_unknown_agent_and_a_bad_month_with_a_clear_message() -> None:
    async with offboarding_stack({}, []) as stack:
        unknown = channelgate(stack, "report", "agent", "nobody")
        bad_month = channelgate(stack, "report", "monthly", "2026-13")

    assert (unknown.returncode, unknown.stdout) == (1, "")
    assert "No agent, live or deleted, has the id or userName 'nobody'" in unknown.stderr
    assert (bad_month.returncode, bad_month.stdout) == (2, "")  # bad usage
    assert "YYYY-MM" in bad_month.stderr


async def test_cli_reports_record_whose_report_or_which_month_was_read_and_by_whom() -> None:
    """A report reads personal data out of the access log: like a search of it, that reading is itself recorded."""
    async with offboarding_stack({}, ["alice", "carol"]) as stack:
        await offboard(stack)
        month = utcnow().strftime("%Y-%m")
        agent = channelgate(stack, "report", "agent", "alice", "--format", "json")
        monthly = channelgate(stack, "report", "monthly", month, "--format", "json")
        async with gateway_of(stack) as services:
            views = await services.access_log.search(AccessQuery(kind="report_view"))

    assert agent.returncode == 0 and monthly.returncode == 0, agent.stderr + monthly.stderr
    assert sorted(str(r.detail) for r in views) == sorted(
        [str({"report": "agent", "agent": "alice"}), str({"report": "monthly", "month": month})]
    )
    assert all((r.actor or "").startswith("cli:") and r.action == "view" for r in views)


def test_a_report_file_is_private_over_an_existing_readable_file_and_never_written_through_a_symlink(
    tmp_path: Path,
) -> None:
    existing = tmp_path / "last-month.html"
    existing.write_text("old")
    existing.chmod(0o644)  # copied in, or made by another tool
    elsewhere = tmp_path / "attacker-readable.txt"
    elsewhere.write_text("")
    planted = tmp_path / "report.html"
    planted.symlink_to(elsewhere)
    for target in (existing, planted, tmp_path / "new.html"):
        with private_output(target) as handle:
            handle.write("<p>personal data</p>")
        assert not target.is_symlink() and stat.S_IMODE(target.stat().st_mode) == 0o600, target.name
        assert target.read_text() == "<p>personal data</p>"
    assert elsewhere.read_text() == ""
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".partial")] == []


def test_a_report_file_that_fails_halfway_leaves_neither_a_partial_file_nor_a_changed_target(tmp_path: Path) -> None:
    target = tmp_path / "report.html"
    target.write_text("complete earlier report")

    def fail_halfway() -> None:
        with private_output(target) as handle:
            handle.write("half")
            raise RuntimeError("the database went away")

    with pytest.raises(RuntimeError):
        fail_halfway()
    assert target.read_text() == "complete earlier report"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.html"]
