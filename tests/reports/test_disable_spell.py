"""When access had to stop: the first disable record since the agent was last made active, in the offboarding report
and the monthly review alike. A repeated deprovisioning (an admin repeating the command, SCIM DELETE after an
earlier ``active=false``) writes a later disable record that must not hide access allowed in between; a disable
after a real re-enable starts a new spell."""

from __future__ import annotations

from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from gateway.deprovision.plan import RunState
from gateway.reports.agent import build_agent_report
from gateway.reports.monthly import build_monthly_report
from gateway.services import Services
from gateway.storage.access_log import AccessQuery, AccessRecord
from gateway.storage.agents import Agent
from gateway.storage.database import write_transaction
from gateway.timeutil import utcnow
from tests.reports.seed import add_agent, request

AFTER = "no access allowed after the disable"


async def _disables(services: Services, agent: Agent) -> list[datetime]:
    found = await services.access_log.search(AccessQuery(agent_id=agent.id, kind="deprovision"))
    return sorted(r.time for r in found if r.decision == "disabled")


async def _later(services: Services, agent: Agent, record: AccessRecord) -> None:
    """``record`` written, then time moves past it (the next disable is strictly later)."""
    await services.access_log.append([record])
    while utcnow() <= record.time + timedelta(milliseconds=5):
        pass


async def _month_total(services: Services, moment: datetime) -> int:
    month = moment.astimezone(ZoneInfo(services.settings.audit.review.timezone)).strftime("%Y-%m")
    return (await build_monthly_report(services, month)).disabled_access_total


async def test_access_between_a_disable_and_a_repeated_deprovisioning_is_access_after_the_disable(
    services: Services,
) -> None:
    alice = await add_agent(services, "alice")
    await services.killer.deprovision("alice", reason="left the company", actor="admin", source="cli")
    # Allowed after the disable: what the check exists to catch (a stale replica, a bug).
    leak = request(alice, utcnow() + timedelta(milliseconds=100), subject="C-1", action="download")
    await _later(services, alice, leak)
    await services.killer.deprovision(alice.id, reason="deleted by SCIM", actor="scim:entra", source="scim")
    first, second = await _disables(services, alice)

    report = await build_agent_report(services, "alice")
    check = {c.name: c for c in report.verdict.checks}[AFTER]
    assert report.disabled_at == first < leak.time < second
    assert (check.passed, report.verdict.access_after_disable_total) == (False, 1), check.evidence
    assert await _month_total(services, leak.time) == 1


async def test_a_disable_after_an_ldap_reactivation_starts_a_new_spell(services: Services) -> None:
    bob = await add_agent(services, "bob")
    await services.killer.deprovision("bob", reason="contract ended", actor="ldap:corp", source="ldap")
    back = utcnow()
    await services.agents.set_active(bob.id, True, None, back)
    reactivated = AccessRecord(time=back, kind="ldap", agent_id=bob.id, agent_name="bob", decision="reactivate")
    await _later(services, bob, reactivated)
    work = request(bob, utcnow(), subject="C-2")  # allowed while bob was active again
    await _later(services, bob, work)
    await services.killer.deprovision("bob", reason="contract ended again", actor="ldap:corp", source="ldap")
    _, second = await _disables(services, bob)

    report = await build_agent_report(services, "bob")
    assert report.disabled_at == second
    assert {c.name: c.passed for c in report.verdict.checks}[AFTER]
    assert await _month_total(services, work.time) == 0


async def test_a_disable_that_starts_a_new_deprovisioning_run_starts_a_new_spell(services: Services) -> None:
    """A SCIM re-enable writes no record of its own; the run a later disable of the active agent starts says it."""
    carol = await add_agent(services, "carol")
    await services.killer.deprovision("carol", reason="on leave", actor="scim:entra", source="scim")
    async with write_transaction(services.database.engine) as conn:
        for run in await services.pipeline.runs_of_agent(carol.id, conn=conn):
            await services.pipeline.set_run_state(run.id, RunState.DONE, utcnow(), conn=conn)
    await services.agents.set_active(carol.id, True, None, utcnow())  # back from leave (SCIM active=true)
    work = request(carol, utcnow() + timedelta(milliseconds=5), subject="C-3")
    await _later(services, carol, work)
    await services.killer.deprovision("carol", reason="left the company", actor="scim:entra", source="scim")
    _, second = await _disables(services, carol)
    assert len(await services.pipeline.runs_of_agent(carol.id)) == 2

    report = await build_agent_report(services, "carol")
    assert report.disabled_at == second
    assert {c.name: c.passed for c in report.verdict.checks}[AFTER]
    assert await _month_total(services, work.time) == 0
