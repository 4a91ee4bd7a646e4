"""The SCIM 2.0 endpoint at /scim/v2 (RFC 7644): scim2-server's ASGI core with our auth, errors and audit.

Every request but /ServiceProviderConfig needs a bearer token of one IdP client (RFC 7644 §2; stored hashed,
``gateway.storage.scim_tokens``); without one the answer is a 401 SCIM Error. Nothing here is rate-limited:
a throttled deactivation waits for the IdP's retry (Okta: 5 min and doubling, Entra: the next 40-min cycle).
A PUT or PATCH that sets ``active`` to false disables the agent even when the rest of the request fails
(fail closed; the error is still reported). Every write is recorded in the access log, refused or not.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any
from urllib.parse import quote

from scim2_models import InvalidSyntaxException, PayloadTooLargeException, SCIMException, UnauthorizedException
from scim2_server.applications.asgi import ASGIApplication, Scope
from scim2_server.requests import ScimRequest
from scim2_server.responses import ScimResponse
from scim2_server.routing import Operation
from scim2_server.service import ScimService
from starlette import types

from gateway.audit.writer import AuditLog
from gateway.errors import ChannelgateError
from gateway.storage.access_log import AccessRecord
from gateway.storage.agents import AgentRepository
from gateway.storage.scim_tokens import ScimTokenRepository
from gateway.timeutil import utcnow
from scim import requests
from scim.errors import ScimError
from scim.handler import RetryingHandler
from scim.lifecycle import CLIENT, Lifecycle, actor
from scim.lookups import Lookups
from scim.provider import MAX_BODY_BYTES, scim_provider
from scim.storage import DatabaseStorage

log = logging.getLogger("channelgate.scim")

MOUNT_PATH = "/scim"
_WRITES = frozenset({"POST", "PUT", "PATCH", "DELETE"})
#: Characters left as they are when a decoded path is percent-encoded again (RFC 3986 §3.3).
_PATH_SAFE = "/:@!$&'()*+,;="
#: Longest id we issue (a UUID): a longer one in a path names no agent, and would not fit the log's column.
_ID_LENGTH = 36
#: Seconds an IdP waits before it retries a 503: Okta needs an integer, else it waits 5 min (research note §1).
RETRY_AFTER_SECONDS = 10


class _Service(ScimService):
    def max_body_size(self, request: ScimRequest) -> int | None:
        return MAX_BODY_BYTES


def _scim_exception(exc: ChannelgateError) -> SCIMException:
    """One of our errors as the SCIM Error the engine renders (RFC 7644 §3.12).

    Only SCIM errors are written for the IdP; any other server-side failure (a ``StorageError`` names the
    database's host, port, role and database) is logged and answered with a generic detail.
    """
    detail = exc.message
    if exc.status >= 500 and not isinstance(exc, ScimError):
        detail = f"the gateway could not complete the request ({exc.code}); the cause is in its log, retry later"
    rendered = SCIMException(detail=detail)
    rendered.status = exc.status
    rendered.scim_type = (exc.scim_type if isinstance(exc, ScimError) else None) or ""
    return rendered


class ScimApplication(ASGIApplication):
    def __init__(
        self,
        storage: DatabaseStorage,
        tokens: ScimTokenRepository,
        agents: AgentRepository,
        lifecycle: Lifecycle,
        audit: AuditLog,
        base_url: str,
        clock: Callable[[], datetime] = utcnow,
        *,
        fast_lookups: bool = True,
    ) -> None:
        provider = scim_provider()
        super().__init__(storage, provider, _Service(provider))
        self.handler = RetryingHandler(self.service, storage)
        self._tokens = tokens
        self._agents = agents
        self._lifecycle = lifecycle
        self._audit = audit
        self._base_url = base_url.rstrip("/") + MOUNT_PATH + "/v2"
        self._clock = clock
        self._lookups = Lookups(storage, self._base_url) if fast_lookups else None

    def get_base_url(self, scope: Scope) -> str:  # type: ignore[override]
        """The configured public URL, never the Host header: Location and meta.location cannot be steered."""
        return self._base_url

    async def _authenticate(self, request: ScimRequest) -> str:
        scheme, _, token = (request.header("Authorization") or "").strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise UnauthorizedException(
                detail="send the SCIM client's token as 'Authorization: Bearer <token>' "
                "(create one with: channelgate scim-tokens create NAME)"
            )
        client = await self._tokens.authenticate(token.strip(), self._clock())
        if client is None:
            raise UnauthorizedException(detail="the bearer token is unknown or revoked; ask for a new SCIM token")
        return client

    async def dispatch_request(self, request: ScimRequest) -> ScimResponse:
        authenticated = self.needs_auth(request)
        if authenticated:
            request.subject = await self._authenticate(request)
            CLIENT.set(request.subject)
        if len(request.body) > MAX_BODY_BYTES:
            # The body was cut one byte past the limit while it was read: say so (RFC 7644 §3.12, 413) rather than
            # report the cut JSON as invalid.
            raise PayloadTooLargeException(detail=f"the request body is larger than {MAX_BODY_BYTES} bytes")
        # Parsed and normalised only now, after the token was checked: an unauthenticated client's megabyte of JSON
        # costs a 401, not ~30 ms of the event loop.
        try:
            body = requests.parse(request.body)
        except RecursionError:  # [[[[...: json's C decoder recurses per level
            raise InvalidSyntaxException(detail="the request body nests too deeply to be a SCIM message") from None
        if body is not None:
            request.body = json.dumps(requests.normalise(request.method.upper(), body)).encode()
        if authenticated and self._lookups is not None and (answer := await self._lookups.answer(request)) is not None:
            return answer
        method = request.method.upper()
        target = self.service.match(request)
        deactivating = (
            target.endpoint == "Users"
            and target.resource_id is not None
            and target.operation in (Operation.patch, Operation.replace)
            and requests.deactivates(method, requests.parse(request.body))
        )
        try:
            return await self.handler.handle(request)
        except Exception:
            if deactivating:
                assert target.resource_id is not None
                await self._fail_closed(target.resource_id)
            raise

    async def _fail_closed(self, agent_id: str) -> None:
        """The request asked to deactivate and failed for another reason: deactivate anyway."""
        agent = await self._agents.get(agent_id)
        if agent is not None:
            log.warning("SCIM request failed but asked to deactivate agent %s: deactivating it", agent_id)
            if agent.active:
                await self._lifecycle.deactivate(agent_id)
            else:
                await self._lifecycle.deactivated(agent_id, was_active=False)

    def finalize_response(self, request: ScimRequest, response: ScimResponse) -> ScimResponse:
        """The engine's default ``Location`` is the request's URL with its path decoded: percent-encode it again
        (RFC 3986 §2.1), or a ``%0D`` or ``%1F`` in the path is a header value no server may send (RFC 9110 §5.5)
        and the answer is lost with the connection."""
        response.headers.setdefault("Location", self._base_url + quote(request.path, safe=_PATH_SAFE))
        return super().finalize_response(request, response)

    def handle_exception(self, request: ScimRequest, exception: Exception) -> ScimResponse:
        if isinstance(exception, ChannelgateError):
            if exception.status >= 500:
                log.error(
                    "SCIM %s %s failed: %s (%s)", request.method, request.path, exception.message, exception.detail
                )
            response = self.service.error_response(_scim_exception(exception))
            if exception.status == 503:
                response.headers["Retry-After"] = str(RETRY_AFTER_SECONDS)
            return response
        return super().handle_exception(request, exception)

    async def serve(self, request: ScimRequest) -> ScimResponse:
        started = time.perf_counter()
        CLIENT.set("unauthenticated")
        response = await super().serve(request)
        if request.method.upper() in _WRITES:
            await self._record(request, response, started)
        return response

    async def _record(self, request: ScimRequest, response: ScimResponse, started: float) -> None:
        body: Any = response.body if isinstance(response.body, dict) else {}
        parts = request.path.strip("/").split("/")
        agent_id = None
        if parts[0] == "Users":
            agent_id = parts[1] if len(parts) > 1 else body.get("id")
        # The path is the client's: a U+0000 or an overlong id in it cannot be stored on PostgreSQL, and the
        # record of a refused request must not fail the response.
        if agent_id is not None and (len(agent_id) > _ID_LENGTH or "\x00" in agent_id):
            agent_id = None
        await self._audit.write(
            AccessRecord(
                time=utcnow(),
                kind="scim",
                agent_id=agent_id,
                agent_name=body.get("userName"),
                method=request.method.upper(),
                path=MOUNT_PATH + "/v2" + quote(request.path, safe=_PATH_SAFE),
                status=int(response.status),
                decision="applied" if int(response.status) < 400 else "refused",
                reason=body.get("detail") if int(response.status) >= 400 else None,
                duration_ms=round((time.perf_counter() - started) * 1000),
                actor=actor(),
                detail={"scimType": body.get("scimType")} if body.get("scimType") else None,
            )
        )


async def scim_endpoint(scope: types.Scope, receive: types.Receive, send: types.Send) -> None:
    """The mount point in the gateway app: the ``ScimApplication`` that ``gateway.services`` built."""
    application: ScimApplication | None = scope["app"].state.services.scim
    if application is None:
        await send({"type": "http.response.start", "status": 404, "headers": []})
        await send({"type": "http.response.body", "body": b""})
        return
    await application(dict(scope), receive, send)  # type: ignore[arg-type]
