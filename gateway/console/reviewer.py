"""The reviewer's pages (read-only): log search, agents and their history, deprovisioning runs, reports, and the
chain's status. Nothing here writes anything but the batched record of who looked (``web.console_route``) and, for
a report, the strict record of whose report or which month was read (``gateway/reports/reading.py``)."""

from __future__ import annotations

from datetime import UTC, datetime

from starlette.responses import JSONResponse, Response

from gateway.audit.search import decode_cursor, encode_cursor, to_query
from gateway.console import evidence
from gateway.console.filters import PAGE_SIZE, read_form
from gateway.console.progress import run_progress
from gateway.console.render import page
from gateway.console.web import Call
from gateway.deprovision.status import agent_pipeline
from gateway.errors import BadRequest, NotFound
from gateway.reports.reading import Reader
from gateway.scope import scope_of
from gateway.storage.access_log import AccessQuery, AccessRecord
from gateway.storage.agents import Agent

#: The notices a redirect after an admin action may ask a page to show (fixed texts: nothing from the URL is echoed).
NOTICES = {
    "sessions-ended": "Every session of this agent has ended on every replica.",
    "no-sessions": "This agent had no live session.",
    "retried": "The run's dead, failed and blocked steps were queued again.",
    "nothing-to-retry": "This run had no dead, failed or blocked step to retry.",
    "deprovisioned": "The agent is disabled and signed out everywhere; the channel steps are running.",
}


def _notice(call: Call) -> str | None:
    return NOTICES.get(call.request.query_params.get("notice", ""))


def _when(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d %H:%M:%S")


async def find_agent(call: Call, identifier: str) -> Agent:
    """A live agent by id or userName, else any agent (deleted ones too: their history stays readable) by id."""
    agent = await call.services.agents.find(identifier) or await call.services.agents.get_any(identifier)
    if agent is None:
        raise NotFound(f"No agent has the id or userName {identifier[:100]!r}.")
    return agent


async def index(call: Call) -> Response:
    return page("index.html", **call.context(nav="home"))


async def log(call: Call) -> Response:
    form = read_form(call.request.query_params)
    found = await call.services.access_log.search(await to_query(form.search, call.services.agents))
    records, more = found[:PAGE_SIZE], len(found) > PAGE_SIZE
    return page(
        "log.html",
        **call.context(
            nav="log", form=form.values, records=records, next_page=form.next_page(records[-1]) if more else None
        ),
    )


async def agents(call: Call) -> Response:
    typed = call.request.query_params.get("q", "").strip()[:256]
    if typed:
        found = await call.services.agents.find(typed) or await call.services.agents.get_any(typed)
        listed = [found] if found is not None else []
    else:
        listed = await call.services.agents.list(limit=500)
    return page("agents.html", **call.context(nav="agents", q=typed, agents=listed))


async def _history(call: Call, agent: Agent) -> tuple[list[AccessRecord], str | None]:
    before = call.request.query_params.get("before", "")
    query = AccessQuery(agent_id=agent.id, before=decode_cursor(before) if before else None, limit=PAGE_SIZE + 1)
    found = await call.services.access_log.search(query)
    records = found[:PAGE_SIZE]
    return records, encode_cursor(records[-1]) if len(found) > PAGE_SIZE else None


async def agent(call: Call) -> Response:
    person = await find_agent(call, call.request.path_params["agent"])
    records, next_cursor = await _history(call, person)
    runs = await agent_pipeline(call.services.pipeline, person.id)
    sessions = None
    if call.user.is_admin:
        live = await call.services.sessions.sessions_of(person.id, call.services.clock())
        sessions = [
            {
                "started": _when(s.created_at),
                "last_seen": _when(s.last_seen_at),
                "groups": sorted(s.data.groups),
                "idp_session": s.data.idp_session_id is not None,
            }
            for s in live
        ]
    return page(
        "agent.html",
        **call.context(
            nav="agents",
            agent=person,
            records=records,
            next_cursor=next_cursor,
            runs=runs,
            sessions=sessions,
            notice=_notice(call),
        ),
    )


async def run(call: Call) -> Response:
    progress = await run_progress(call.services, call.request.path_params["run"])
    return page("run.html", **call.context(nav="agents", progress=progress, notice=_notice(call)))


async def run_json(call: Call) -> Response:
    """What the run page polls for its live view (``/static/console.js``)."""
    return JSONResponse(await run_progress(call.services, call.request.path_params["run"]))


async def reports(call: Call) -> Response:
    return page("reports.html", **call.context(nav="reports", previous=evidence.previous_month()))


def _reader(call: Call) -> Reader:
    """The person asking for a report, for its strict record (the page view's record is batched, and keeps no
    query values: it would not say whose report was read)."""
    scope = scope_of(call.request, call.services.settings.server.trusted_proxies)
    return Reader(call.user.actor, scope.client_ip, scope.request_id, call.request.url.path)


async def agent_report(call: Call) -> Response:
    typed = call.request.query_params.get("agent", "").strip()[:256]
    if not typed:
        raise BadRequest("Name the agent (userName or id) whose report you want.")
    body = await evidence.agent_report_html(call.services, typed, _reader(call))
    return page("report.html", **call.context(nav="reports", title=f"Agent report: {typed}", body=body))


async def monthly_report(call: Call) -> Response:
    month = call.request.query_params.get("month", "").strip()
    if not evidence.valid_month(month):
        raise BadRequest("Give the month as YYYY-MM, for example 2026-11.")
    body = await evidence.monthly_report_html(call.services, month, _reader(call))
    return page("report.html", **call.context(nav="reports", title=f"Monthly review {month}", body=body))


async def chain(call: Call) -> Response:
    status = await evidence.chain_status(call.services)
    return page("chain.html", **call.context(nav="chain", status=status))
