"""The console's request handling shared by every page: who is asking, CSRF on every POST, the audit record of
each request, and the template context (user, role, CSRF token).

``console_route`` turns a handler into a route that does all of this before the handler runs, so a handler
cannot forget a check. Only POST changes state; GET handlers are read-only by construction (they get no form).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.console.access import ConsoleUser, Role, console_user
from gateway.console.csrf import FIELD, CsrfRejected, check_token, csrf_key, origin_of, refuse_cross_site, token_for
from gateway.console.failures import error_response
from gateway.errors import AccessDenied, BadRequest
from gateway.scope import scope_of
from gateway.services import Services
from gateway.storage.access_log import AccessRecord
from gateway.timeutil import utcnow

#: Console forms are a few short fields; anything bigger is refused before it is parsed.
MAX_FORM_BYTES = 8192


@dataclass(frozen=True, slots=True)
class Call:
    """One console request, checked: the services, the person and (for a POST) the verified form."""

    request: Request
    services: Services
    user: ConsoleUser
    form: FormData | None = None

    def context(self, **extra: Any) -> dict[str, Any]:
        """What every template gets: the person, their role, and the CSRF token for their forms."""
        token = token_for(csrf_key(self.services.settings), self.user.session.id)
        return {"user": self.user, "csrf_field": FIELD, "csrf_token": token, **extra}

    def field(self, name: str, limit: int = 500) -> str:
        """A POSTed text field, stripped; empty when absent."""
        value = self.form.get(name) if self.form is not None else None
        if value is not None and not isinstance(value, str):
            raise BadRequest(f"'{name}' must be text.")
        text = (value or "").strip()
        if len(text) > limit:
            raise BadRequest(f"'{name}' is too long (at most {limit} characters).")
        return text


Handler = Callable[[Call], Awaitable[Response]]


def query_keys(request: Request) -> str:
    """The path with query keys only, never values (the access log's rule for paths)."""
    keys = sorted({key for key, value in request.query_params.multi_items() if value})
    return request.url.path + ("?" + "&".join(keys) if keys else "")


async def _checked_form(request: Request, services: Services, user: ConsoleUser) -> FormData:
    """The POSTed form, after the origin and token checks (origin first: the body is not read for a forgery)."""
    refuse_cross_site(request.headers, origin_of(str(services.settings.server.public_url)))
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "application/x-www-form-urlencoded":
        # Not one of the console's forms, so it cannot carry the token.
        raise CsrfRejected("The form's security token is missing. Reload the page and try again.")
    length = request.headers.get("content-length")
    if length is None or not length.isdigit() or int(length) > MAX_FORM_BYTES:
        raise BadRequest("The form is missing its length or is too large.")
    form = await request.form(max_files=0, max_fields=20)
    token = form.get(FIELD)
    check_token(csrf_key(services.settings), user.session.id, token if isinstance(token, str) else None)
    return form


def _view_record(request: Request, services: Services, user: ConsoleUser) -> AccessRecord:
    scope = scope_of(request, services.settings.server.trusted_proxies)
    subject = request.query_params.get("subject") or None
    return AccessRecord(
        time=utcnow(),
        kind="console_view",
        request_id=scope.request_id,
        agent_id=user.session.data.agent_id,
        agent_name=user.user_name,
        source_ip=scope.client_ip,
        method=request.method,
        path=query_keys(request),
        decision="allow",
        actor=user.actor,
        subject=subject[:256] if subject else None,
        action="view",
    )


def _refusal_record(request: Request, services: Services, refusal: AccessDenied) -> AccessRecord:
    """A refused console action (a forged POST, a reviewer trying an admin action): evidence of the attempt."""
    scope = scope_of(request, services.settings.server.trusted_proxies)
    session = scope.session
    return AccessRecord(
        time=utcnow(),
        kind="console_refused",
        request_id=scope.request_id,
        agent_id=session.data.agent_id if session is not None else None,
        agent_name=session.data.user_name if session is not None else None,
        source_ip=scope.client_ip,
        method=request.method,
        path=query_keys(request),
        decision="deny",
        reason=refusal.code,
        actor=f"console:{session.data.user_name}" if session is not None else None,
    )


def console_route(path: str, handler: Handler, *, need: Role = Role.REVIEWER, post: bool = False) -> Route:
    """A console route: GET (read-only, its view recorded in the access log) or POST (CSRF-checked)."""

    async def checked(request: Request, services: Services) -> Response:
        user = await console_user(request, services, need)
        if post:
            form = await _checked_form(request, services, user)
            return await handler(Call(request, services, user, form))
        # Who looked at the log, and at whose records (PIPA art. 8 covers reviewers too); batched, not strict.
        services.audit.submit(_view_record(request, services, user))
        return await handler(Call(request, services, user))

    async def endpoint(request: Request) -> Response:
        services: Services = request.app.state.services
        try:
            return await checked(request, services)
        except Exception as exc:
            if post and isinstance(exc, AccessDenied):
                services.audit.submit(_refusal_record(request, services, exc))
            return error_response(request, services, exc)

    return Route(path, endpoint, methods=["POST"] if post else ["GET"], name=handler.__name__)
