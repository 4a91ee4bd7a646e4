"""The admin API: bearer-token authenticated, JSON only, no cookies (so a cross-site form cannot drive it).

``POST /.channelgate/admin/agents/{agent}/deprovision`` ends an agent's access everywhere and answers only after
every session on every replica is gone (the channel steps continue in the pipeline);
``GET /.channelgate/admin/agents/{agent}`` shows the agent's state and every pipeline step per channel;
``POST /.channelgate/admin/deprovision/approve`` releases runs held by the mass-deletion guard;
``POST /.channelgate/admin/deprovision/runs/{run}/retry`` gives a run's dead steps a fresh budget.
"""

from __future__ import annotations

import hmac
import json
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from gateway.deprovision.operator import approve_runs, retry_run
from gateway.deprovision.status import agent_pipeline
from gateway.errors import AuthenticationRequired, BadRequest, ChannelgateError, NotFound
from gateway.services import Services

MAX_BODY = 16384


class AdminTokenRequired(AuthenticationRequired):
    code = "admin_token_required"


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
    try:
        sessions = await services.sessions.sessions_of(agent.id, services.clock())
    except ChannelgateError:
        sessions = []
    return JSONResponse(
        {
            "agent_id": agent.id,
            "user_name": agent.user_name,
            "active": agent.active,
            "disabled_reason": agent.disabled_reason,
            "live_sessions": len(sessions),
            "deprovisioning": await agent_pipeline(services.pipeline, agent.id),
        }
    )
