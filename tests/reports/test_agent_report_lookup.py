"""Finding the agent of a report (SQLite and PostgreSQL): an offboarded agent deleted by the directory is still
found by userName or id, a rehire under the same userName is the live one, and the report's activity comes from
the access log of that agent only."""

from __future__ import annotations

from dataclasses import replace

from gateway.reports.agent import build_agent_report
from gateway.reports.render import render_agent_html
from gateway.services import Services
from tests.reports.seed import add_agent, disable, kst, request


async def test_a_deleted_agent_is_found_by_user_name_and_id_and_a_rehire_is_the_live_one(services: Services) -> None:
    alice = await add_agent(services, "alice")
    await services.access_log.append([request(alice, kst(2, 9), subject="c-1")])
    await disable(services, alice, kst(3, 9))
    await services.agents.mark_deleted(alice.id, "deleted by SCIM", kst(3, 10))

    by_name = await build_agent_report(services, "ALICE")
    by_id = await build_agent_report(services, alice.id)
    assert by_name.agent.id == by_id.agent.id == alice.id
    assert by_name.agent.deleted and by_name.disabled_at == kst(3, 9)
    assert [(a.channel, a.requests, a.subjects) for a in by_name.channels] == [("chat", 1, 1)]
    # No run was recorded for her, and this process cannot see the gateway's in-memory sessions: not proven.
    assert not by_name.verdict.ended
    assert [c.passed for c in by_name.verdict.checks] == [True, False, False, True]

    rehired = await services.agents.link_or_create_from_login(
        "https://idp.example", "sub-alice-2", "alice", None, None, kst(20, 9),
        link_by="user_name_is_preferred_username", email_verified=False,
    )  # fmt: skip
    live = await build_agent_report(services, "alice")
    assert live.agent.id == rehired.id != alice.id
    assert live.channels == () and live.disabled_at is None
    assert live.verdict.checks[0].evidence == ("the agent is active: it can still sign in",)


async def test_the_agent_report_html_escapes_a_hostile_user_name_subject_and_path(services: Services) -> None:
    hostile = "<script>alert('x')</script>\"&"
    agent = await add_agent(services, hostile)
    record = request(agent, kst(2, 9), subject="<img src=x onerror=alert(1)>")
    await services.access_log.append([replace(record, path="/chat/<svg onload=alert(1)>")])

    html = render_agent_html(await build_agent_report(services, agent.id))
    assert "<script" not in html and "<img" not in html and "<svg" not in html
    assert "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;&#34;&amp;" in html
    assert "&lt;img src=x onerror=alert(1)&gt;" in html
