"""The admin API: bearer-token authenticated, JSON only, no cookies (so a cross-site form cannot drive it).

``POST /.channelgate/admin/agents/{agent}/deprovision`` ends an agent's access everywhere and answers only after
every session on every replica is gone; ``GET /.channelgate/admin/agents/{agent}`` shows the agent's state.
"""

from __future__ import annotations

import hmac
import json

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

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


async def deprovision(request: Request) -> Response:
    services: Services = request.app.state.services
    actor = _authorise(request, services)
    if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
        raise BadRequest('Send a JSON body with Content-Type: application/json, e.g. {"reason": "left"}.')
    raw = await request.body()
    if len(raw) > MAX_BODY:
        raise BadRequest("The request body is too large.")
    try:
        body = json.loads(raw or b"{}")
    except ValueError:
        raise BadRequest("The request body is not valid JSON.") from None
    reason = body.get("reason") if isinstance(body, dict) else None
    if not isinstance(reason, str) or not reason.strip():
        raise BadRequest('Give a reason: {"reason": "why this agent\'s access ends"}.')
    result = await services.killer.deprovision(
        request.path_params["agent"], reason=reason.strip()[:500], actor=actor, source="admin_api"
    )
    return JSONResponse(result.as_dict())


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
        }
    )
