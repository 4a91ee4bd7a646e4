"""The console's answers to errors: a browser without a session goes to sign in (and comes back), the live view's
JSON gets JSON, anything else a console page that says what went wrong. Rendered here, not at the gateway's
edge, so that error pages carry the console's strict headers and styles too."""

from __future__ import annotations

import logging
from urllib.parse import quote

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response

from gateway.console.render import page
from gateway.errors import AuthenticationRequired, ChannelgateError
from gateway.scope import scope_of
from gateway.services import Services

log = logging.getLogger("channelgate.console")


def _wants_json(request: Request) -> bool:
    return request.url.path.endswith(".json")


def _login_redirect(request: Request) -> RedirectResponse:
    """Back to this page after signing in (``/.channelgate/login`` keeps only same-origin paths)."""
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return RedirectResponse("/.channelgate/login?rd=" + quote(target, safe="/"), status_code=302)


def as_error(exc: Exception) -> ChannelgateError:
    """Our error for ``exc``: itself, a router's 404/405, or an unexpected failure (logged, never shown)."""
    if isinstance(exc, ChannelgateError):
        return exc
    if isinstance(exc, HTTPException):
        error = ChannelgateError(exc.detail or "Request refused.")
        error.status, error.code = exc.status_code, "not_found" if exc.status_code == 404 else "method_not_allowed"
        return error
    log.exception("unexpected error in the console", exc_info=exc)
    return ChannelgateError("Something went wrong on our side.")


def error_response(request: Request, services: Services, exc: Exception) -> Response:
    error = as_error(exc)
    if error.public_message is not None:  # an operator's message (a StorageError names the database): to the log
        log.warning("console: %s (%s)", error.message, error.code)
        shown = ChannelgateError(error.public_message)
        shown.status, shown.code = error.status, error.code
        error = shown
    scope = scope_of(request, services.settings.server.trusted_proxies)
    wants_json = _wants_json(request)
    if isinstance(error, AuthenticationRequired) and request.method in ("GET", "HEAD") and not wants_json:
        return _login_redirect(request)
    if wants_json:
        body = {"error": error.code, "message": error.message, "request_id": scope.request_id}
        return JSONResponse(body, status_code=error.status)
    session = scope.session
    return page(
        "error.html",
        status_code=error.status,
        error=error,
        request_id=scope.request_id,
        signed_in=session.data.user_name if session is not None else None,
    )
