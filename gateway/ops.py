"""Operations endpoints: liveness, readiness (database and session store reachable) and Prometheus metrics."""

from __future__ import annotations

import asyncio

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response

from gateway.errors import ChannelgateError
from gateway.services import Services


async def healthz(request: Request) -> Response:
    return PlainTextResponse("ok", headers={"Cache-Control": "no-store"})


async def readyz(request: Request) -> Response:
    services: Services = request.app.state.services
    checks: dict[str, str] = {}
    for name, probe in (("database", services.database.ping), ("sessions", services.sessions.ping)):
        try:
            await probe()
            checks[name] = "ok"
        except ChannelgateError as exc:
            checks[name] = exc.message
    ready = all(value == "ok" for value in checks.values())
    return JSONResponse(
        {"ready": ready, "replica": services.replica_id, "checks": checks},
        status_code=200 if ready else 503,
        headers={"Cache-Control": "no-store"},
    )


async def metrics(request: Request) -> Response:
    services: Services = request.app.state.services
    services.metrics.websockets.set(services.live.websockets.count())
    services.metrics.audit_queue.set(services.audit.pending)
    services.metrics.event_loop_tasks.set(len(asyncio.all_tasks()))
    return Response(generate_latest(services.metrics.registry), media_type=CONTENT_TYPE_LATEST)
