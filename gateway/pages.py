"""HTML pages and error rendering: every error is rendered here once, as a page for browsers or JSON for APIs.

Pages never show secrets, upstream headers or stack traces; each carries the request id so a person can quote it.
An error written for operators (``ChannelgateError.public_message``: a StorageError names the database) shows its
public message, and its own goes to the log under that request id.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.requests import HTTPConnection
from starlette.responses import HTMLResponse, JSONResponse, Response

from gateway.errors import (
    AccessDenied,
    AgentDisabled,
    AuthenticationRequired,
    ChannelgateError,
    LoginFailed,
    SessionExpired,
)

log = logging.getLogger("channelgate")

_env = Environment(
    loader=FileSystemLoader(Path(__file__).parent / "templates"),
    autoescape=select_autoescape(default=True),
)

#: Security headers on every page the gateway renders itself (ASVS 3.4).
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
    "X-Frame-Options": "DENY",
}


def render(name: str, status: int = 200, **context: Any) -> HTMLResponse:
    body = _env.get_template(name).render(**context)
    return HTMLResponse(body, status_code=status, headers=PAGE_HEADERS)


def _headline(error: ChannelgateError) -> tuple[str, str | None, str | None]:
    if isinstance(error, AgentDisabled):
        return "Your access has ended", None, None
    if isinstance(error, SessionExpired):
        return "Your session has ended", "/.channelgate/login", "Sign in again"
    if isinstance(error, LoginFailed):
        return "Sign-in failed", "/.channelgate/login", "Start again"
    if isinstance(error, AuthenticationRequired):
        return "Please sign in", "/.channelgate/login", "Sign in"
    if isinstance(error, AccessDenied):
        return "Not allowed", "/", "Back to your consoles"
    if error.status == 503:
        return "Temporarily unavailable", None, None
    if error.status >= 500:
        return "Something went wrong", None, None
    return "Request refused", "/", "Back to your consoles"


def wants_html(connection: HTTPConnection) -> bool:
    accept = connection.headers.get("accept", "")
    return "text/html" in accept or connection.url.path in {"/", "/.channelgate/callback", "/.channelgate/login"}


def error_response(connection: HTTPConnection, error: ChannelgateError, request_id: str) -> Response:
    headers = {"Cache-Control": "no-store"}
    if error.status == 503:
        headers["Retry-After"] = "2"
    if isinstance(error, AuthenticationRequired) and error.challenge is not None:
        headers["WWW-Authenticate"] = error.challenge
    message = error.message
    if error.public_message is not None:
        log.warning("request %s: %s (%s)", request_id, error.message, error.detail or error.code)
        message = error.public_message
    if not wants_html(connection):
        body = {"error": error.code, "message": message, "request_id": request_id}
        return JSONResponse(body, status_code=error.status, headers=headers)
    heading, action_url, action_label = _headline(error)
    response = render(
        "error.html",
        status=error.status,
        heading=heading,
        message=message,
        action_url=action_url,
        action_label=action_label,
        request_id=request_id,
        code=error.code,
    )
    response.headers.update(headers)
    return response
