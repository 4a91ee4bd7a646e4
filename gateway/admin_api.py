"""The admin API: bearer-token authenticated, JSON only, no cookies (so a cross-site form cannot drive it).

``POST /.channelgate/admin/agents/{agent}/deprovision`` ends an agent's access everywhere and answers only after
every session on every replica is gone (the channel steps continue in the pipeline);
``GET /.channelgate/admin/agents/{agent}`` shows the agent's state, its live sessions (``null`` with the reason in
``live_sessions_not_checked`` when the session store could not be asked) and every pipeline step per channel;
``POST /.channelgate/admin/deprovision/approve`` releases runs held by the mass-deletion guard;
``POST /.channelgate/admin/deprovision/runs/{run}/retry`` gives a run's dead steps a fresh budget (409 for a superseded
run, which is never retried);
``GET /.channelgate/admin/audit/search`` searches the access log (filters, ``limit``, ``before`` → records and a
``next`` cursor) and ``GET /.channelgate/admin/audit/export?format=jsonl|cef|syslog|ocsf`` streams every matching
record; each reading of the log is itself recorded first (``gateway/audit/search.py``).
"""

from __future__ import annotations

import hmac
import json
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from gateway.audit.formats import FORMATS, formatter
from gateway.audit.formats.jsonl import dumps, record_dict
from gateway.audit.search import encode_cursor, export_lines, parse_search, record_reading, to_query
from gateway.deprovision.operator import approve_runs, retry_run
from gateway.deprovision.status import agent_pipeline
from gateway.errors import AuthenticationRequired, BadRequest, ChannelgateError, NotFound
from gateway.scope import scope_of
from gateway.services import Services

MAX_BODY = 16384


class AdminTokenRequired(AuthenticationRequired):
    code = "admin_token_required"
    challenge = 'Bearer realm="channelgate-admin"'


def _authorise(request: Request, services: Services) -> str:
    """Constant-time comparison against every configured admin token; returns the actor label."""
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise AdminTokenRequired("The admin API needs 'Authorization: Bearer <admin token>'.")
    actor: str | None = None
    for index, candidate in enumerate(services.settings.admin.tokens):
        # Every token is compared, so the time taken does not tell which one (or whether any) matched.
        if hmac.compare_digest(token.encode(), candidate.get_secret_value().encode()):
            actor = f"admin-token-{index}"
    if actor is None:
        raise AdminTokenRequired("The admin token is not valid.")
    return actor


async def _json_body(request: Request, example: str) -> dict[str, Any]:
    if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
        raise BadRequest(f"Send a JSON body with Content-Type: application/json, e.g. {example}.")
    raw = await request.body()
    if len(raw) > MAX_BODY:
        raise BadRequest("The request body is too large.")
    try:
        body = json.loads(raw or b"{}")
    except ValueError:
        raise BadRequest("The request body is not valid JSON.") from None
    if not isinstance(body, dict):
        raise BadRequest(f"The request body must be a JSON object, e.g. {example}.")
    return body


async def deprovision(request: Request) -> Response:
    services: Services = request.app.state.services
    actor = _authorise(request, services)
    body = await _json_body(request, '{"reason": "left"}')
    reason = body.get("reason")
    if not isinstance(reason, str) or not reason.strip():
        raise BadRequest('Give a reason: {"reason": "why this agent\'s access ends"}.')
    successor = body.get("successor")
    if successor is not None and (not isinstance(successor, str) or not successor.strip()):
        raise BadRequest('"successor" must be the userName of the agent who takes over the open tickets.')
    result = await services.killer.deprovision(
        request.path_params["agent"],
        reason=reason.strip()[:500],
        actor=actor,
        source="admin_api",
        successor=successor.strip() if successor else None,
    )
    return JSONResponse(result.as_dict())


async def approve(request: Request) -> Response:
    services: Services = request.app.state.services
    actor = _authorise(request, services)
    body = await _json_body(request, '{"runs": ["<run id>"]} or {"all": true}')
    runs = body.get("runs")
    if body.get("all") is True:
        chosen = None
    elif isinstance(runs, list) and runs and all(isinstance(r, str) for r in runs):
        chosen = runs
    else:
        raise BadRequest('Name the held runs to approve, {"runs": ["<run id>"]}, or approve all: {"all": true}.')
    approved = await approve_runs(services.database, services.pipeline, services.audit, chosen, actor)
    if services.worker is not None:
        services.worker.wake()
    return JSONResponse({"approved": approved})


async def retry(request: Request) -> Response:
    services: Services = request.app.state.services
    actor = _authorise(request, services)
    run_id = request.path_params["run"]
    if await services.pipeline.get_run(run_id) is None:
        raise NotFound("No deprovisioning run has that id.")
    count = await retry_run(services.database, services.pipeline, services.audit, run_id, actor)
    if services.worker is not None:
        services.worker.wake()
    return JSONResponse({"run_id": run_id, "steps_requeued": count})


async def agent_status(request: Request) -> Response:
    services: Services = request.app.state.services
    _authorise(request, services)
    agent = await services.agents.find(request.path_params["agent"])
    if agent is None:
        raise NotFound("No agent has that id or userName.")
    # "0" would claim no session when nobody could look: say it was not checked, and why, as the agent report does
    # (gateway/reports/zero_access.py); the rest of the status is still worth answering with.
    live: int | None = None
    not_checked: str | None = None
    try:
        live = len(await services.sessions.sessions_of(agent.id, services.clock()))
    except ChannelgateError as exc:
        not_checked = f"the {services.settings.sessions.store} session store was not checked: {exc.message}"
    return JSONResponse(
        {
            "agent_id": agent.id,
            "user_name": agent.user_name,
            "active": agent.active,
            "disabled_reason": agent.disabled_reason,
            "live_sessions": live,
            "live_sessions_not_checked": not_checked,
            "deprovisioning": await agent_pipeline(services.pipeline, agent.id),
        }
    )


def _query_params(request: Request) -> dict[str, str]:
    params = request.query_params
    repeated = sorted({key for key in params if len(params.getlist(key)) > 1})
    if repeated:
        raise BadRequest(f"Give {repeated[0]!r} once.")
    return dict(params)


async def audit_search(request: Request) -> Response:
    services: Services = request.app.state.services
    actor = _authorise(request, services)
    params = _query_params(request)
    if "format" in params:
        raise BadRequest("'format' belongs to /.channelgate/admin/audit/export.")
    search = parse_search(params)
    scope = scope_of(request, services.settings.server.trusted_proxies)
    await record_reading(
        services.audit,
        search,
        actor=actor,
        source_ip=scope.client_ip,
        request_id=scope.request_id,
        path=request.url.path,
    )
    found = await services.access_log.search(await to_query(search, services.agents))
    following = encode_cursor(found[-1]) if len(found) == search.limit else None
    body = {"records": [record_dict(record) for record in found], "next": following}
    return Response(dumps(body), media_type="application/json", headers={"Cache-Control": "no-store"})


async def audit_export(request: Request) -> Response:
    services: Services = request.app.state.services
    actor = _authorise(request, services)
    params = _query_params(request)
    name = params.pop("format", "")
    if name not in FORMATS:
        raise BadRequest(f"'format' must be one of {', '.join(FORMATS)}.")
    if "limit" in params or "before" in params:
        raise BadRequest("An export has every matching record: narrow it with the filters and since/until.")
    search = parse_search(params)
    chosen = formatter(name, syslog_enterprise_number=services.settings.audit.syslog_enterprise_number)
    scope = scope_of(request, services.settings.server.trusted_proxies)
    await record_reading(
        services.audit,
        search,
        actor=actor,
        export_format=name,
        source_ip=scope.client_ip,
        request_id=scope.request_id,
        path=request.url.path,
    )
    query = await to_query(search, services.agents)
    lines = export_lines(services.access_log, query, chosen)
    return StreamingResponse(
        (line.encode("utf-8") async for line in lines),
        media_type=chosen.media_type,
        headers={
            "Cache-Control": "no-store",
            "Content-Disposition": f'attachment; filename="channelgate-access-log.{name}"',
        },
    )
