"""The console's ASGI app, mounted at ``/.channelgate/console``: its routes, the strict headers on every answer
(pages, JSON, static files, errors, 404s and 405s alike), and its own error pages.

A browser without a session is sent to the gateway's login and comes back to the page it asked for. Errors are
rendered here rather than by the gateway's edge so that they too carry the console's Content-Security-Policy.
"""

from __future__ import annotations

from pathlib import Path

from starlette.requests import Request
from starlette.responses import FileResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route, Router
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.console import admin, reviewer
from gateway.console.access import Role
from gateway.console.failures import error_response
from gateway.console.render import security_headers
from gateway.console.web import console_route
from gateway.errors import NotFound
from gateway.reports.render import report_css
from gateway.services import Services

BASE = "/.channelgate/console"
_STATIC = Path(__file__).resolve().parents[1] / "static"
#: The files the console serves from gateway/static (an allow-list: no path from the URL reaches the disk).
_STATIC_FILES = {"console.css": "text/css", "console.js": "text/javascript"}


async def _static(request: Request) -> Response:
    name = request.path_params["name"]
    if name == "report.css":
        # The reports' own stylesheet (screen and print), served for the report fragments the console embeds.
        return Response(report_css(), media_type="text/css")
    if name not in _STATIC_FILES:
        raise NotFound("No such file.")
    return FileResponse(_STATIC / name, media_type=_STATIC_FILES[name])


def _routes() -> list[BaseRoute]:
    admin_only = Role.ADMIN
    return [
        console_route("/", reviewer.index),
        console_route("/log", reviewer.log),
        console_route("/agents", reviewer.agents),
        console_route("/agents/{agent}", reviewer.agent),
        console_route("/runs/{run}", reviewer.run),
        console_route("/runs/{run}/progress.json", reviewer.run_json),
        console_route("/reports", reviewer.reports),
        console_route("/reports/agent", reviewer.agent_report),
        console_route("/reports/monthly", reviewer.monthly_report),
        console_route("/chain", reviewer.chain),
        console_route("/agents/{agent}/deprovision", admin.deprovision_form, need=admin_only),
        console_route("/agents/{agent}/deprovision", admin.deprovision, need=admin_only, post=True),
        console_route("/agents/{agent}/sessions/end", admin.end_sessions, need=admin_only, post=True),
        console_route("/dead-letters", admin.dead_letters, need=admin_only),
        console_route("/runs/{run}/retry", admin.retry, need=admin_only, post=True),
        Route("/static/{name}", _static, methods=["GET"]),
    ]


class ConsoleApp:
    """Routes the console's requests and puts the security headers on every response it sends."""

    def __init__(self) -> None:
        self.router = Router(_routes())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.router(scope, receive, send)
            return
        request = Request(scope, receive)
        services: Services = request.app.state.services
        headers = [(k.lower().encode(), v.encode()) for k, v in security_headers(services.settings).items()]
        replaced = {name for name, _ in headers}
        started = False

        async def send_secured(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                kept = [(k, v) for k, v in message.get("headers", []) if k.lower() not in replaced]
                message = {**message, "headers": kept + headers}
            await send(message)

        try:
            await self.router(scope, receive, send_secured)
        except Exception as exc:
            if started:
                raise
            await error_response(request, services, exc)(scope, receive, send_secured)


def mount() -> list[BaseRoute]:
    """What ``gateway/app.py`` adds to its ``/.channelgate`` routes: the console, and its bare path."""

    async def bare(request: Request) -> Response:
        services: Services = request.app.state.services
        return RedirectResponse(BASE + "/", status_code=307, headers=security_headers(services.settings))

    app: ASGIApp = ConsoleApp()
    return [Route("/console", bare, methods=["GET"]), Mount("/console", app=app)]
