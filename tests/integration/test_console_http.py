"""The security console over HTTP against the real gateway (in this process) and a real OpenID provider: sign-in
and roles from IdP groups, CSRF on every POST, no state change on GET, strict headers on every answer, and hostile
text from the access log rendered as text.

Accounts: ``rita`` is a security reviewer, ``adam`` and ``ada`` are console admins, ``bob`` is an agent without
a console role.
"""

from __future__ import annotations

import contextlib
import re
import uuid
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta

import httpx
import pytest
import pytest_asyncio
from pydantic import AnyHttpUrl
from sqlalchemy import text

from gateway.console.csrf import FIELD, csrf_key, token_for
from gateway.console.render import CONTENT_SECURITY_POLICY, HSTS, security_headers
from gateway.deprovision.plan import RunState, StepKind, StepState
from gateway.errors import StorageError
from gateway.storage.access_log import AccessQuery, AccessRecord
from gateway.storage.pipeline import PlannedStep, RunRecord, supersede_runs
from tests.components.echo_gateway import Deployment, deployment
from tests.components.login_gateway import provider_pool
from tests.components.oidc_provider import DEMO_PASSWORD, STANDARD_ACCOUNTS, OidcAccount, OidcProvider

pytestmark = [pytest.mark.oidc, pytest.mark.timeout(120), pytest.mark.asyncio(loop_scope="module")]

CONSOLE = "/.channelgate/console"
CONSOLE_TOML = '[console]\nreviewer_groups = ["security-reviewers"]\nadmin_groups = ["gateway-admins"]\n'
HTML = {"Accept": "text/html"}
SESSION_COOKIE = "channelgate"


def _account(name: str, sub: str, *groups: str) -> OidcAccount:
    return OidcAccount(sub, name, DEMO_PASSWORD, f"{name}@example.com", name.title(), groups)


ACCOUNTS = (
    *STANDARD_ACCOUNTS,
    _account("rita", "rita-0101", "security-reviewers"),
    _account("adam", "adam-0102", "gateway-admins"),
    _account("ada", "ada-0103", "gateway-admins"),
    _account("dora", "dora-0104", "chat-agents"),
    _account("erin", "erin-0105", "phone-agents"),
)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def gateway() -> AsyncIterator[Deployment]:
    with provider_pool() as pool:

        def factory(redirect_uris: Sequence[str], **_: object) -> OidcProvider:
            return pool.start(redirect_uris, accounts=ACCOUNTS)

        async with deployment(factory, extra_toml=CONSOLE_TOML) as deployed:
            yield deployed


def _client(gateway: Deployment) -> httpx.AsyncClient:
    client = httpx.AsyncClient(timeout=10.0)
    gateway.clients.append(client)
    return client


async def _signed_in(gateway: Deployment, user: str) -> httpx.AsyncClient:
    return await gateway.login(user, return_to=CONSOLE + "/")


def _token(page: httpx.Response) -> str:
    found = re.search(rf'name="{FIELD}" value="([^"]+)"', page.text)
    assert found is not None, page.text[:500]
    return found.group(1)


async def _agent_id(gateway: Deployment, user: str) -> str:
    agent = await gateway.services.agents.find(user)
    assert agent is not None
    return agent.id


async def _seed(gateway: Deployment, records: list[AccessRecord]) -> None:
    await gateway.services.audit.write(*records)


def _request_record(agent: str, agent_id: str | None, moment: datetime, **fields: object) -> AccessRecord:
    values: dict[str, object] = {
        "time": moment,
        "kind": "request",
        "agent_id": agent_id,
        "agent_name": agent,
        "channel": "chat",
        "method": "GET",
        "path": "/chat/customers",
        "status": 200,
        "decision": "allow",
    }
    values.update(fields)
    return AccessRecord(**values)  # type: ignore[arg-type]


async def test_an_anonymous_browser_is_sent_to_sign_in_and_comes_back_to_the_page_it_asked_for(
    gateway: Deployment,
) -> None:
    anonymous = _client(gateway)
    response = await anonymous.get(gateway.url + CONSOLE + "/log?kind=login", headers=HTML)
    assert response.status_code == 302
    assert response.headers["location"] == "/.channelgate/login?rd=/.channelgate/console/log%3Fkind%3Dlogin"
    assert response.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
    rita = await gateway.login("rita", return_to=CONSOLE + "/log?kind=login")
    page = await rita.get(gateway.url + CONSOLE + "/log?kind=login")
    assert page.status_code == 200
    assert 'id="who">rita<' in page.text


async def test_an_anonymous_poll_of_a_json_endpoint_gets_401_not_a_redirect(gateway: Deployment) -> None:
    response = await _client(gateway).get(gateway.url + CONSOLE + "/runs/nope/progress.json")
    assert response.status_code == 401
    assert response.json()["error"] == "authentication_required"


async def test_a_signed_in_agent_without_a_console_group_gets_a_403_page_that_says_why(gateway: Deployment) -> None:
    bob = await gateway.login("bob")
    for path in ("/", "/log", "/dead-letters"):
        response = await bob.get(gateway.url + CONSOLE + path)
        assert response.status_code == 403, path
        assert "None of your groups (chat-agents) gives access" in response.text
        assert "security-reviewers" in response.text
        assert response.headers["content-security-policy"] == CONTENT_SECURITY_POLICY


async def test_a_reviewer_searches_the_log_by_subject_action_and_time_and_pages_with_a_keyset_cursor(
    gateway: Deployment,
) -> None:
    agent_id = None
    start = datetime(2026, 11, 3, 9, 0, tzinfo=UTC)
    records = [
        _request_record("pager", agent_id, start + timedelta(minutes=n), subject="cust-page", action="view")
        for n in range(60)
    ]
    records.append(_request_record("pager", agent_id, start, subject="cust-page", action="download"))
    records.append(_request_record("pager", agent_id, start - timedelta(days=30), subject="cust-page", action="view"))
    await _seed(gateway, records)
    rita = await _signed_in(gateway, "rita")
    params = {"subject": "cust-page", "action": "view", "since": "2026-11-01T00:00", "until": "2026-12-01T00:00"}
    first = await rita.get(gateway.url + CONSOLE + "/log", params=params)
    assert first.status_code == 200
    assert first.text.count("<td>cust-page</td>") == 50
    assert "09:59:00" in first.text and "09:09:00" not in first.text  # newest first
    link = re.search(r'id="next-page" href="([^"]+)"', first.text)
    assert link is not None
    second = await rita.get(gateway.url + link.group(1).replace("&amp;", "&"))
    assert second.status_code == 200
    assert second.text.count("<td>cust-page</td>") == 10
    assert "09:09:00" in second.text and "09:10:00" not in second.text
    assert 'id="next-page"' not in second.text


async def test_a_reviewer_opens_an_agents_history_but_not_its_sessions_or_admin_actions(gateway: Deployment) -> None:
    dora = await gateway.login("dora")
    await dora.get(gateway.url + "/chat/echo")
    dora_id = await _agent_id(gateway, "dora")
    rita = await _signed_in(gateway, "rita")
    page = await rita.get(gateway.url + CONSOLE + f"/agents/{dora_id}")
    assert page.status_code == 200
    assert 'id="agent-status">active<' in page.text
    assert "/.channelgate/console/reports/agent?agent=" in page.text
    assert "Live sessions" not in page.text and "end-sessions" not in page.text
    assert "deprovision-link" not in page.text
    for path in (f"/agents/{dora_id}/deprovision", "/dead-letters"):
        refused = await rita.get(gateway.url + CONSOLE + path)
        assert refused.status_code == 403, path
        assert "your groups make you a reviewer (read-only)" in refused.text


async def test_a_reviewer_posting_an_admin_action_with_a_valid_token_is_refused_and_nothing_changes(
    gateway: Deployment,
) -> None:
    await gateway.login("carol")
    carol_id = await _agent_id(gateway, "carol")
    sessions = len(await gateway.services.sessions.sessions_of(carol_id, gateway.services.clock()))
    rita = await _signed_in(gateway, "rita")
    # Reviewers' pages carry no form: compute the token the server would give rita's session.
    token = token_for(csrf_key(gateway.services.settings), rita.cookies[SESSION_COOKIE])
    for path, data in (
        (f"/agents/{carol_id}/deprovision", {"reason": "forged"}),
        (f"/agents/{carol_id}/sessions/end", {}),
        ("/runs/any/retry", {}),
    ):
        response = await rita.post(gateway.url + CONSOLE + path, data={FIELD: token, **data})
        assert response.status_code == 403, path
    carol = await gateway.services.agents.get(carol_id)
    assert carol is not None and carol.active
    assert len(await gateway.services.sessions.sessions_of(carol_id, gateway.services.clock())) == sessions


CSRF_ATTACKS = [
    pytest.param({}, {}, id="no token"),
    pytest.param({FIELD: "A" * 43}, {}, id="wrong token"),
    pytest.param({FIELD: "<other>"}, {}, id="token of another session"),
    pytest.param({FIELD: "<mine>"}, {"Origin": "https://evil.example"}, id="cross-site Origin"),
    pytest.param({FIELD: "<mine>"}, {"Origin": "null"}, id="opaque Origin"),
    pytest.param({FIELD: "<mine>"}, {"Sec-Fetch-Site": "cross-site"}, id="Sec-Fetch-Site cross-site"),
    pytest.param({FIELD: "<mine>"}, {"Sec-Fetch-Site": "same-site"}, id="Sec-Fetch-Site same-site"),
    pytest.param({FIELD: "<mine>"}, {"Sec-Fetch-Site": "none", "Origin": "null"}, id="Sec-Fetch-Site none"),
    pytest.param(
        {FIELD: "<mine>"}, {"Sec-Fetch-Site": "cross-site", "Origin": "http://127.0.0.1"}, id="cross-site, Origin lies"
    ),
]


@pytest.mark.parametrize(("form", "headers"), CSRF_ATTACKS)
async def test_a_forged_deprovision_post_is_refused_and_changes_nothing(
    gateway: Deployment, form: dict[str, str], headers: dict[str, str]
) -> None:
    target = await gateway.login("dora")
    dora_id = await _agent_id(gateway, "dora")
    adam, ada = await _signed_in(gateway, "adam"), await _signed_in(gateway, "ada")
    mine = _token(await adam.get(gateway.url + CONSOLE + f"/agents/{dora_id}/deprovision"))
    other = _token(await ada.get(gateway.url + CONSOLE + f"/agents/{dora_id}/deprovision"))
    assert mine != other
    data = {"reason": "forged", **{k: {"<mine>": mine, "<other>": other}.get(v, v) for k, v in form.items()}}
    before = await gateway.services.access_log.search(AccessQuery(agent_id=dora_id, kind="deprovision"))
    response = await adam.post(gateway.url + CONSOLE + f"/agents/{dora_id}/deprovision", data=data, headers=headers)
    assert response.status_code == 403
    assert "csrf_rejected" in response.text
    dora = await gateway.services.agents.get(dora_id)
    assert dora is not None and dora.active
    assert await gateway.services.pipeline.runs_of_agent(dora_id) == []
    assert await gateway.services.access_log.search(AccessQuery(agent_id=dora_id, kind="deprovision")) == before
    assert (await target.get(gateway.url + "/chat/echo")).status_code == 200


async def test_an_admin_ends_an_agents_sessions_everywhere_and_the_action_is_recorded_with_its_actor(
    gateway: Deployment,
) -> None:
    carol = await gateway.login("carol")
    carol_id = await _agent_id(gateway, "carol")
    sessions = len(await gateway.services.sessions.sessions_of(carol_id, gateway.services.clock()))
    adam = await _signed_in(gateway, "adam")
    agent_page = await adam.get(gateway.url + CONSOLE + f"/agents/{carol_id}")
    assert "Live sessions" in agent_page.text and "no-sessions" not in agent_page.text
    response = await adam.post(
        gateway.url + CONSOLE + f"/agents/{carol_id}/sessions/end",
        data={FIELD: _token(agent_page)},
        headers={"Origin": gateway.url, "Sec-Fetch-Site": "same-origin"},
    )
    assert response.status_code == 303
    assert response.headers["location"] == f"{CONSOLE}/agents/{carol_id}?notice=sessions-ended"
    assert (await carol.get(gateway.url + "/phone/echo", headers={"Accept": "application/json"})).status_code == 401
    kinds = {r.kind: r for r in await gateway.services.access_log.search(AccessQuery(agent_id=carol_id, limit=20))}
    assert kinds["console_sessions_end"].actor == "console:adam"
    assert kinds["sessions_revoked"].actor == "console:adam"
    assert kinds["sessions_revoked"].detail == {
        "source": "console",
        "sessions": sessions,
        "replicas_confirmed": [gateway.services.replica_id],
        "replicas_missing": [],
    }


async def test_an_admin_deprovisions_an_agent_and_the_disable_is_recorded_with_the_console_actor(
    gateway: Deployment,
) -> None:
    await gateway.login("bob")
    bob_id = await _agent_id(gateway, "bob")
    adam = await _signed_in(gateway, "adam")
    form = await adam.get(gateway.url + CONSOLE + f"/agents/{bob_id}/deprovision")
    response = await adam.post(
        gateway.url + CONSOLE + f"/agents/{bob_id}/deprovision",
        data={FIELD: _token(form), "reason": "left the company"},
        headers={"Origin": gateway.url},
    )
    assert response.status_code == 303, response.text[:400]
    bob = await gateway.services.agents.get(bob_id)
    assert bob is not None and not bob.active
    disabled = await gateway.services.access_log.search(AccessQuery(agent_id=bob_id, kind="deprovision"))
    assert [(r.actor, r.reason, (r.detail or {}).get("source")) for r in disabled] == [
        ("console:adam", "left the company", "console")
    ]
    assert await gateway.services.sessions.sessions_of(bob_id, gateway.services.clock()) == []


async def test_a_superseded_run_is_shown_superseded_with_what_it_carried_out_and_is_no_dead_letter_to_retry(
    gateway: Deployment,
) -> None:
    services = gateway.services
    run_id, agent_id = str(uuid.uuid4()), str(uuid.uuid4())
    created = datetime.now(UTC)
    run = RunRecord(run_id, agent_id, "zoe", "scim", "scim:entra", "left", None, RunState.RUNNING, created, None, None)
    await services.pipeline.create_run(
        run,
        [
            PlannedStep("phone", StepKind.REVOKE, StepState.DONE),  # the seat was disabled
            PlannedStep("phone", StepKind.VERIFY, StepState.PENDING),
            PlannedStep("chat", StepKind.REVOKE, StepState.DEAD),  # gave up: once a dead letter
        ],
    )
    async with services.database.begin() as conn:
        await supersede_runs(conn, agent_id, created, actor="scim:entra", reason="enabled by SCIM")
    rita, adam = await _signed_in(gateway, "rita"), await _signed_in(gateway, "adam")
    page = await rita.get(gateway.url + CONSOLE + f"/runs/{run_id}")
    assert page.status_code == 200
    assert 'id="run-state" class="state-superseded">superseded<' in page.text
    note = re.search(r'<p id="superseded-note"[^>]*>(.*?)</p>', page.text, re.S)
    assert note is not None and "hidden" not in note.group(0).split(">")[0]
    assert 'id="carried-out">phone revoke<' in note.group(1)
    progress = (await rita.get(gateway.url + CONSOLE + f"/runs/{run_id}/progress.json")).json()
    assert (progress["run"]["state"], progress["finished"], progress["superseded"], progress["trouble"]) == (
        "superseded", True, True, False,
    )  # fmt: skip
    assert progress["carried_out"] == [{"channel": "phone", "step": "revoke", "vendor_reference": None}]
    admin_page = await adam.get(gateway.url + CONSOLE + f"/runs/{run_id}")
    assert re.search(r'<form [^>]*id="retry-form" hidden>', admin_page.text)
    dead = await adam.get(gateway.url + CONSOLE + "/dead-letters")
    assert run_id not in dead.text
    refused = await adam.post(
        gateway.url + CONSOLE + f"/runs/{run_id}/retry",
        data={FIELD: _token(admin_page)},
        headers={"Origin": gateway.url},
    )
    assert refused.status_code == 409 and "was superseded" in refused.text
    assert {s.state for s in await services.pipeline.steps_of([run_id])} == {
        StepState.DONE, StepState.SUPERSEDED, StepState.DEAD,
    }  # fmt: skip
    after = await services.pipeline.get_run(run_id)
    assert after is not None and after.state is RunState.SUPERSEDED


async def test_get_requests_never_change_state_even_with_action_parameters(gateway: Deployment) -> None:
    await gateway.login("dora")
    dora_id = await _agent_id(gateway, "dora")
    adam = await _signed_in(gateway, "adam")
    sessions = len(await gateway.services.sessions.sessions_of(dora_id, gateway.services.clock()))
    mark = (await gateway.services.access_log.tail(1))[-1].seq or 0
    paths = [
        "/", "/log?agent=dora", "/agents", f"/agents/{dora_id}", f"/agents/{dora_id}/deprovision?reason=x",
        "/dead-letters", "/reports", "/chain", f"/agents/{dora_id}/sessions/end", "/runs/x/retry",
    ]  # fmt: skip
    for path in paths:
        response = await adam.get(gateway.url + CONSOLE + path)
        assert response.status_code in (200, 404, 405), (path, response.status_code)
    dora = await gateway.services.agents.get(dora_id)
    assert dora is not None and dora.active
    assert len(await gateway.services.sessions.sessions_of(dora_id, gateway.services.clock())) == sessions
    assert await gateway.services.pipeline.runs_of_agent(dora_id) == []
    await gateway.services.audit.flush()
    written = await gateway.services.access_log.after(mark, limit=1000)
    assert {r.kind for r in written} <= {"console_view"}
    assert all(r.actor == "console:adam" and r.action == "view" for r in written)


async def test_every_console_answer_carries_the_strict_headers(gateway: Deployment) -> None:
    adam = await _signed_in(gateway, "adam")
    bob = _client(gateway)
    answers = [
        await adam.get(gateway.url + CONSOLE + "/"),
        await adam.get(gateway.url + CONSOLE + "/log"),
        await adam.get(gateway.url + CONSOLE + "/runs/nope/progress.json"),
        await adam.get(gateway.url + CONSOLE + "/static/console.css"),
        await adam.get(gateway.url + CONSOLE + "/static/console.js"),
        await adam.get(gateway.url + CONSOLE + "/static/../app.py"),
        await adam.get(gateway.url + CONSOLE + "/no-such-page"),
        await adam.delete(gateway.url + CONSOLE + "/log"),
        await adam.get(gateway.url + CONSOLE + "/log?since=yesterday"),
        await adam.post(gateway.url + CONSOLE + "/runs/x/retry"),
        await bob.get(gateway.url + CONSOLE + "/log"),
        await bob.get(gateway.url + CONSOLE),
    ]
    assert [a.status_code for a in answers] == [200, 200, 404, 200, 200, 404, 404, 405, 400, 403, 302, 307]
    for answer in answers:
        headers = answer.headers
        assert headers["content-security-policy"] == CONTENT_SECURITY_POLICY, answer.url
        assert headers["x-content-type-options"] == "nosniff"
        assert headers["referrer-policy"] == "no-referrer"
        assert headers["cache-control"] == "no-store"
        assert headers["x-frame-options"] == "DENY"
        assert "strict-transport-security" not in headers  # plain-http loopback
    assert answers[3].headers["content-type"].startswith("text/css")


async def test_hsts_is_sent_when_the_public_url_is_https(gateway: Deployment) -> None:
    settings = gateway.services.settings
    server = settings.server.model_copy(update={"public_url": AnyHttpUrl("https://gw.example.com")})
    assert security_headers(settings.model_copy(update={"server": server}))["Strict-Transport-Security"] == HSTS


async def test_a_role_change_applies_at_the_next_request(gateway: Deployment) -> None:
    rita = await _signed_in(gateway, "rita")
    rita_id = await _agent_id(gateway, "rita")
    assert (await rita.get(gateway.url + CONSOLE + "/dead-letters")).status_code == 403
    await gateway.services.sessions.update_agent_groups(rita_id, frozenset({"gateway-admins"}))
    assert (await rita.get(gateway.url + CONSOLE + "/dead-letters")).status_code == 200
    await gateway.services.sessions.update_agent_groups(rita_id, frozenset({"chat-agents"}))
    assert (await rita.get(gateway.url + CONSOLE + "/log")).status_code == 403
    await gateway.services.sessions.update_agent_groups(rita_id, frozenset({"security-reviewers"}))
    assert (await rita.get(gateway.url + CONSOLE + "/log")).status_code == 200


HOSTILE_NAME = "<script>alert('name')</script>"
HOSTILE_PATH = "/chat/x\"><img src=x onerror=alert('path')>?q"
HOSTILE_REASON = "{{ 7*7 }} </td><b>bold</b>"


async def test_hostile_user_names_paths_and_reasons_render_as_text(gateway: Deployment) -> None:
    moment = datetime(2026, 10, 5, 3, 0, tzinfo=UTC)
    await _seed(
        gateway, [_request_record(HOSTILE_NAME, None, moment, path=HOSTILE_PATH, reason=HOSTILE_REASON, subject="hx")]
    )
    rita = await _signed_in(gateway, "rita")
    page = await rita.get(gateway.url + CONSOLE + "/log", params={"agent": HOSTILE_NAME, "subject": "hx"})
    assert page.status_code == 200
    body = page.text
    assert "<script>alert" not in body and "<img src=x" not in body and "<b>bold</b>" not in body
    assert "&lt;script&gt;alert(&#39;name&#39;)&lt;/script&gt;" in body
    assert "&lt;img src=x onerror=alert(&#39;path&#39;)&gt;" in body
    assert "{{ 7*7 }}" in body and ">49<" not in body


async def test_a_reviewer_opens_an_agents_offboarding_report_and_the_monthly_review(gateway: Deployment) -> None:
    await gateway.login("dora")
    rita = await _signed_in(gateway, "rita")
    report = await rita.get(gateway.url + CONSOLE + "/reports/agent", params={"agent": "dora"})
    assert report.status_code == 200
    assert "Offboarding evidence: dora" in report.text and "Final zero-access check" in report.text
    assert "/.channelgate/console/static/report.css" in report.text
    css = await rita.get(gateway.url + CONSOLE + "/static/report.css")
    assert css.status_code == 200 and ".cg-report" in css.text
    monthly = await rita.get(gateway.url + CONSOLE + "/reports/monthly", params={"month": "2026-11"})
    assert monthly.status_code == 200
    assert "2026-11" in monthly.text and 'class="cg-report' in monthly.text
    for params in ({"month": "2026-13"}, {"month": "<x>"}):
        refused = await rita.get(gateway.url + CONSOLE + "/reports/monthly", params=params)
        assert refused.status_code == 400 and "YYYY-MM" in refused.text
    unknown = await rita.get(gateway.url + CONSOLE + "/reports/agent", params={"agent": "nobody-here"})
    assert unknown.status_code == 404


async def test_a_reviewers_report_is_recorded_naming_the_agent_or_month_and_the_reviewer(gateway: Deployment) -> None:
    await gateway.login("dora")
    rita = await _signed_in(gateway, "rita")
    started = datetime.now(UTC)  # the module's gateway is shared: only this test's reports
    for path, params in (("/reports/agent", {"agent": "dora"}), ("/reports/monthly", {"month": "2026-11"})):
        assert (await rita.get(gateway.url + CONSOLE + path, params=params)).status_code == 200
    views = await gateway.services.access_log.search(AccessQuery(kind="report_view", since=started))
    assert sorted((r.path, str(r.detail)) for r in views) == [
        (CONSOLE + "/reports/agent", str({"report": "agent", "agent": "dora"})),
        (CONSOLE + "/reports/monthly", str({"report": "monthly", "month": "2026-11"})),
    ]
    assert {r.actor for r in views} == {"console:rita"} and all(r.source_ip for r in views)


async def test_a_reviewer_sees_the_chains_sealed_head_and_how_many_records_wait_for_the_sealer(
    gateway: Deployment,
) -> None:
    rita = await _signed_in(gateway, "rita")
    await gateway.services.audit.flush()
    head = await gateway.services.sealer.seal_all()
    page = await rita.get(gateway.url + CONSOLE + "/chain")
    assert page.status_code == 200
    shown = re.search(r'id="chain-head">(\d+)<', page.text)
    assert shown is not None and int(shown.group(1)) >= head.chain_pos > 0
    assert re.search(r'id="chain-unsealed"[^>]*>\d+ record', page.text)
    assert 'id="chain-checkpoint">none yet' in page.text  # no checkpoint key in this deployment


@contextlib.asynccontextmanager
async def _log_refuses(gateway: Deployment, kind: str) -> AsyncIterator[None]:
    """The database refuses to store access records of ``kind`` (a SQLite trigger: a real failed write)."""
    name = f"refuse_{kind}"
    async with gateway.services.database.engine.begin() as conn:
        await conn.execute(
            text(
                f"CREATE TRIGGER {name} BEFORE INSERT ON access_log WHEN NEW.kind = '{kind}' "
                "BEGIN SELECT RAISE(ABORT, 'access log unavailable'); END"
            )
        )
    try:
        yield
    finally:
        async with gateway.services.database.engine.begin() as conn:
            await conn.execute(text(f"DROP TRIGGER {name}"))


async def _admin_post(gateway: Deployment, admin: httpx.AsyncClient, path: str, **data: str) -> httpx.Response:
    form = await admin.get(gateway.url + CONSOLE + path.removesuffix("/sessions/end"))
    return await admin.post(gateway.url + CONSOLE + path, data={FIELD: _token(form), **data})


async def test_sessions_are_not_ended_when_the_actions_record_cannot_be_written(gateway: Deployment) -> None:
    carol = await gateway.login("carol")
    carol_id = await _agent_id(gateway, "carol")
    adam = await _signed_in(gateway, "adam")
    async with _log_refuses(gateway, "console_sessions_end"):
        response = await _admin_post(gateway, adam, f"/agents/{carol_id}/sessions/end")
    assert response.status_code >= 500  # fail closed: refused, whatever the database said
    assert (await carol.get(gateway.url + "/phone/echo")).status_code == 200


async def test_an_agent_is_not_deprovisioned_when_the_disable_record_cannot_be_written_but_its_sessions_end(
    gateway: Deployment,
) -> None:
    dora = await gateway.login("dora")
    dora_id = await _agent_id(gateway, "dora")
    adam = await _signed_in(gateway, "adam")
    async with _log_refuses(gateway, "deprovision"):
        response = await _admin_post(gateway, adam, f"/agents/{dora_id}/deprovision", reason="strict")
    assert response.status_code >= 500  # fail closed: refused, whatever the database said
    agent = await gateway.services.agents.get(dora_id)
    assert agent is not None and agent.active
    assert await gateway.services.pipeline.runs_of_agent(dora_id) == []
    # The sessions ended before the disable was tried (that never waits for the database), and that has a record.
    assert (await dora.get(gateway.url + "/chat/echo")).status_code == 401
    await gateway.services.audit.flush()
    ended = await gateway.services.access_log.search(AccessQuery(agent_id=dora_id, kind="sessions_revoked"))
    assert len(ended) == 1 and ended[0].decision == "revoked" and ended[0].detail is not None
    assert ended[0].detail["step"] == "before the disable, which failed" and ended[0].detail["sessions"] >= 1


async def test_sessions_ended_whose_end_cannot_be_saved_still_get_their_record(
    gateway: Deployment, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The database fails the end's save (for the sweep after a session-store outage): the sessions are ended all
    the same and the admin gets the 503, and the ending has its record, not only the request's."""
    erin = await gateway.login("erin")
    erin_id = await _agent_id(gateway, "erin")
    adam = await _signed_in(gateway, "adam")

    async def down(*args: object, **kwargs: object) -> None:
        raise StorageError("database write failed on sqlite:///…", detail="database is locked")

    monkeypatch.setattr(gateway.services.logouts._ends, "add", down)
    response = await _admin_post(gateway, adam, f"/agents/{erin_id}/sessions/end")
    monkeypatch.undo()

    assert response.status_code == 503
    assert (await erin.get(gateway.url + "/phone/echo", headers={"Accept": "application/json"})).status_code == 401
    await gateway.services.audit.flush()
    [ended] = await gateway.services.access_log.search(AccessQuery(agent_id=erin_id, kind="sessions_revoked"))
    assert ended.actor == "console:adam" and ended.detail is not None
    assert (ended.detail["sessions"], ended.detail["end_saved"]) == (1, False)
