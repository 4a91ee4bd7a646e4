"""The reference decision endpoint: uvicorn + Starlette answering 200, deciding nothing.

What nginx ``auth_request`` to a Python process costs before any session, policy or credential work; the issue's
goal for channelgate's forward-auth (≥ 0.4× nginx ``proxy_pass``) is about what such an endpoint reaches here.
With ``--answer FILE`` (a JSON list of [name, value] pairs) it answers those headers instead of one short one:
the bench gives it a copy of a real channelgate answer (credential, assertion, names), so the same endpoint
shows what carrying channelgate's answer through nginx costs by itself. With ``--log DATABASE_URL`` (SQLite) it
also queues one access-log record per answer through channelgate's own writer (``gateway.audit.writer`` and its
writer process: WAL, ``synchronous=FULL``, chained as inserted), exactly as a forward-auth answer does: what the
durable, tamper-evident record of each request costs by itself, without any decision.

    python -m bench.trivial_auth --port 9000 [--answer headers.json] [--log sqlite+aiosqlite:///log.db]
"""

from __future__ import annotations

import argparse
import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path

import uvicorn
from pydantic import SecretStr
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.audit.writer import AuditLog
from gateway.scope import new_request_id
from gateway.settings import DatabaseSettings
from gateway.storage.access_log import ROW_HEAD, AccessLogRepository, AccessRecord, insert_values
from gateway.storage.database import create_engine
from gateway.storage.migrate import upgrade_to_head
from gateway.timeutil import utcnow

ANSWER: list[tuple[bytes, bytes]] = [(b"x-channelgate-assertion", b"trivial"), (b"cache-control", b"no-store")]
#: The access log, with ``--log``.
LOGS: list[AuditLog] = []
#: What channelgate records for an allowed forward-auth check, after the time, the kind and the request id.
ROW_TAIL = insert_values(
    AccessRecord(
        time=utcnow(), kind="request", agent_id="00000000-0000-4000-8000-000000000001", agent_name="alice",
        source_ip="127.0.0.1", channel="chat", method="GET", path="/chat/", status=200, decision="allow",
        reason="route-groups", detail={"via": "forward-auth"}, action="view",
    )
)[len(ROW_HEAD) :]  # fmt: skip


async def decide(request: Request) -> Response:
    for log in LOGS:
        log.submit_row((utcnow(), "request", new_request_id(), *ROW_TAIL))
    response = Response(status_code=200)
    response.raw_headers.extend(ANSWER)
    return response


async def queued(request: Request) -> Response:
    """Records answered but not yet committed (the bench waits for 0 after a run, as for channelgate's)."""
    return Response(str(sum(log.pending for log in LOGS)), media_type="text/plain")


def app_for(log_url: str | None) -> Starlette:
    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if log_url is None:
            yield
            return
        settings = DatabaseSettings(url=SecretStr(log_url))
        await upgrade_to_head(settings)
        engine = create_engine(settings)
        log = AuditLog(AccessLogRepository(engine))
        log.start()
        LOGS.append(log)
        try:
            yield
        finally:
            LOGS.clear()
            await log.stop()
            await engine.dispose()

    routes = [Route("/.channelgate/auth", decide, methods=["GET"]), Route("/queued", queued, methods=["GET"])]
    return Starlette(routes=routes, lifespan=lifespan)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--answer", type=Path, help="JSON list of [name, value] headers to answer with")
    parser.add_argument("--log", metavar="DATABASE_URL", help="queue an access-log record per answer (SQLite)")
    args = parser.parse_args()
    if args.answer is not None:
        pairs = json.loads(args.answer.read_text(encoding="utf-8"))
        ANSWER[:] = [(str(name).lower().encode("latin-1"), str(value).encode("latin-1")) for name, value in pairs]
    app = app_for(args.log)
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
