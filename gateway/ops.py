"""Operations endpoints: liveness, readiness (database and session store reachable) and Prometheus metrics.

Every front-proxy sample passes ``/.channelgate/readyz`` from the public side (load balancers and probes read
only its status), so its body tells nobody where the database is or what the replica's host is called: each
failed check is named by its error code, and the error itself goes to the log.
"""

from __future__ import annotations

import asyncio
import logging
import math

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response

from gateway.deprovision.plan import RunState, StepState
from gateway.errors import ChannelgateError
from gateway.services import Services

log = logging.getLogger("channelgate")


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
            log.warning("readiness: the %s check failed: %s (%s)", name, exc.message, exc.detail or exc.code)
            checks[name] = exc.code
    ready = all(value == "ok" for value in checks.values())
    return JSONResponse(
        {"ready": ready, "replica": public_replica_id(services.replica_id), "checks": checks},
        status_code=200 if ready else 503,
        headers={"Cache-Control": "no-store"},
    )


def public_replica_id(replica_id: str) -> str:
    """The random part of a replica's id (``services.new_replica_id``: host name, ``-``, 8 hex digits): enough to
    tell replicas apart and find one in the logs and the admin API's reports, without naming its host."""
    return replica_id.rpartition("-")[2]


async def metrics(request: Request) -> Response:
    services: Services = request.app.state.services
    services.metrics.websockets.set(services.live.websockets.count())
    services.metrics.audit_queue.set(services.audit.pending)
    services.metrics.event_loop_tasks.set(len(asyncio.all_tasks()))
    await _pipeline_counts(services)
    return Response(generate_latest(services.metrics.registry), media_type=CONTENT_TYPE_LATEST)


async def _pipeline_counts(services: Services) -> None:
    """Deprovisioning steps and runs by state, read at each scrape: an alert on runs in attention or steps dead
    needs the count now, whichever replica worked them. Unread (the database not answering), they are NaN rather
    than the last values, which would look like a settled pipeline."""
    metrics = services.metrics
    steps: dict[StepState, float] = dict.fromkeys(StepState, math.nan)
    runs: dict[RunState, float] = dict.fromkeys(RunState, math.nan)
    try:
        steps = dict.fromkeys(StepState, 0.0) | await services.pipeline.count_steps()
        runs = dict.fromkeys(RunState, 0.0) | await services.pipeline.count_runs()
    except ChannelgateError as exc:
        log.warning("metrics: cannot count deprovisioning steps and runs: %s", exc.message)
    for step_state, count in steps.items():
        metrics.pipeline_backlog.labels(step_state.value).set(count)
    for run_state, count in runs.items():
        metrics.pipeline_runs.labels(run_state.value).set(count)
