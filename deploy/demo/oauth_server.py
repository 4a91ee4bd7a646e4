"""An OAuth 2.0 authorization server inside a demo console, for channelgate's ``oauth2`` connector kind.

The gateway is its one client, authenticated by ``client_secret_basic`` (RFC 6749 §2.3.1) with the console's
configured credential as the secret. It obtains a per-agent access token by RFC 8693 token exchange, the subject
token being the gateway's identity assertion for this console (verified as every request's assertion is: the
gateway's JWKS, ``aud`` = the channel), refreshes it with the RFC 6749 §6 refresh grant (rotated: a refresh token
works once, and a second use revokes the whole grant, RFC 9700 §4.14.2), revokes it (RFC 7009) and asks about it
(RFC 7662). Agent routes then demand one of these live access tokens (RFC 6750) *and* the assertion of the agent
it was issued to, so a token taken from one agent's traffic cannot act for another.

Tokens are 256-bit random strings kept only as SHA-256 digests, so a dump of the store cannot be replayed.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal
from urllib.parse import unquote_plus

from starlette.datastructures import FormData, Secret
from starlette.middleware import Middleware
from starlette.requests import HTTPConnection, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Match, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from deploy.demo.console_auth import (
    ASSERTION_HEADER,
    AssertionRejected,
    AssertionVerifier,
    AuthScheme,
    ConsoleGuard,
    ConsoleRejection,
)
from deploy.demo.effects import IDEMPOTENCY_HEADER, REMEMBERED_KEYS, EffectRecorder, Effects

TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
JWT_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:jwt"
ACCESS_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:access_token"
SUPPORTED_SCOPES = frozenset({"console"})
DEFAULT_SCOPE = "console"
#: RFC 6749 §5.1: responses carrying tokens must not be cached.
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}
REALM = 'realm="console"'

TokenKind = Literal["access_token", "refresh_token"]


class OAuthError(Exception):
    """An RFC 6749 §5.2 error: JSON ``error`` + ``error_description``; 401 with a Basic challenge for a client
    that failed to authenticate."""

    def __init__(self, error: str, description: str, status: int = 400) -> None:
        super().__init__(description)
        self.error = error
        self.description = description
        self.status = status

    def response(self) -> JSONResponse:
        headers = dict(NO_STORE)
        if self.status == 401:
            headers["WWW-Authenticate"] = f"Basic {REALM}"
        body = {"error": self.error, "error_description": self.description}
        return JSONResponse(body, status_code=self.status, headers=headers)


class InvalidToken(ConsoleRejection):
    """RFC 6750 §3.1 ``invalid_token``: expired, revoked, unknown, or issued to another agent."""

    code: ClassVar[str] = "invalid_token"

    def __init__(self, detail: str) -> None:
        super().__init__(detail, f'Bearer {REALM}, error="invalid_token", error_description="{detail}"')


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(eq=False)
class Grant:
    """One token exchange and every token refreshed from it; revoking its refresh token ends all of them."""

    grant_id: str
    subject: str
    user_name: str
    client_id: str
    scope: str
    access: set[str] = field(default_factory=set)
    revoked: bool = False


@dataclass(eq=False)
class Issued:
    kind: TokenKind
    grant: Grant
    issued_at: float
    expires_at: float
    revoked: bool = False
    #: A refresh token already exchanged for a new one (RFC 6749 §6 rotation): dead, and a reuse is an alarm.
    rotated: bool = False

    def live(self, now: float) -> bool:
        return not (self.revoked or self.rotated or self.grant.revoked) and now < self.expires_at


@dataclass(frozen=True)
class Revoked:
    """What one revocation ended, for the console's effects log."""

    user_name: str
    detail: str


class TokenStore:
    """Grants and tokens in memory, keyed by token digest. Single event loop: no await inside a change."""

    def __init__(self, access_lifetime: int, refresh_lifetime: int, clock: Callable[[], float]) -> None:
        self.access_lifetime = access_lifetime
        self.refresh_lifetime = refresh_lifetime
        self.clock = clock
        self.tokens: dict[str, Issued] = {}
        #: Token exchanges granted: the tests count them to prove the gateway caches.
        self.exchanges = 0

    def _mint(self, kind: TokenKind, grant: Grant, lifetime: int) -> str:
        token = secrets.token_urlsafe(32)
        now = self.clock()
        self.tokens[_digest(token)] = Issued(kind, grant, now, now + lifetime)
        return token

    def _issue(self, grant: Grant) -> dict[str, Any]:
        """RFC 8693 §2.2.1 / RFC 6749 §5.1 token response for a fresh access and refresh token of ``grant``."""
        access = self._mint("access_token", grant, self.access_lifetime)
        grant.access.add(_digest(access))
        return {
            "access_token": access,
            "issued_token_type": ACCESS_TOKEN_TYPE,
            "token_type": "Bearer",
            "expires_in": self.access_lifetime,
            "refresh_token": self._mint("refresh_token", grant, self.refresh_lifetime),
            "scope": grant.scope,
        }

    def exchange(self, subject: str, user_name: str, client_id: str, scope: str) -> dict[str, Any]:
        self.exchanges += 1
        self._sweep()
        return self._issue(Grant(secrets.token_hex(8), subject, user_name, client_id, scope))

    def refresh(self, token: str, client_id: str, scope: str | None) -> dict[str, Any]:
        """RFC 6749 §6 with rotation; reusing a rotated refresh token revokes its grant (RFC 9700 §4.14.2)."""
        issued = self.tokens.get(_digest(token))
        if issued is None or issued.kind != "refresh_token" or issued.grant.client_id != client_id:
            raise OAuthError("invalid_grant", "unknown refresh token")
        if issued.rotated:
            issued.grant.revoked = True
            raise OAuthError("invalid_grant", "refresh token already used; the grant is revoked")
        if not issued.live(self.clock()):
            raise OAuthError("invalid_grant", "refresh token expired or revoked")
        if scope is not None and not set(scope.split()) <= set(issued.grant.scope.split()):
            raise OAuthError("invalid_scope", "a refresh cannot widen the original scope (RFC 6749 §6)")
        issued.rotated = True
        return self._issue(issued.grant)

    def live_access(self, token: str) -> Issued | None:
        issued = self.tokens.get(_digest(token))
        return issued if issued is not None and issued.kind == "access_token" and issued.live(self.clock()) else None

    def revoke(self, token: str) -> Revoked | None:
        """RFC 7009 §2.1: a refresh token takes its grant's access tokens with it. None when nothing was live."""
        issued = self.tokens.get(_digest(token))
        if issued is None or not issued.live(self.clock()):
            return None
        grant = issued.grant
        if issued.kind == "access_token":
            issued.revoked = True
            return Revoked(grant.user_name, f"access token of grant {grant.grant_id}")
        grant.revoked = True
        now = self.clock()
        ended = sum(1 for digest in grant.access if (a := self.tokens.get(digest)) is not None and now < a.expires_at)
        return Revoked(grant.user_name, f"refresh token of grant {grant.grant_id} and its {ended} live access tokens")

    def introspect(self, token: str) -> dict[str, Any]:
        """RFC 7662 §2.2: ``active: false`` and nothing else for a token that is unknown, expired or revoked."""
        issued = self.tokens.get(_digest(token))
        if issued is None or not issued.live(self.clock()):
            return {"active": False}
        grant = issued.grant
        answer: dict[str, Any] = {
            "active": True,
            "scope": grant.scope,
            "client_id": grant.client_id,
            "username": grant.user_name,
            "sub": grant.subject,
            "iat": int(issued.issued_at),
            "exp": int(issued.expires_at),
        }
        if issued.kind == "access_token":
            answer["token_type"] = "Bearer"  # RFC 7662 §2.2 names the access token type; a refresh token has none
        return answer

    def _sweep(self) -> None:
        """Forget tokens long past expiry, so a demo run of thousands of agents stays small."""
        horizon = self.clock() - 3600
        for digest in [d for d, issued in self.tokens.items() if issued.expires_at < horizon]:
            issued = self.tokens.pop(digest)
            issued.grant.access.discard(digest)


def _single(form: FormData, name: str, *, required: bool = False) -> str | None:
    """A form parameter; RFC 6749 §3.2 forbids repeating one, and a missing required one is invalid_request."""
    values = form.getlist(name)
    if len(values) > 1:
        raise OAuthError("invalid_request", f"parameter {name!r} is repeated")
    value = values[0] if values else None
    if value is not None and not isinstance(value, str):
        raise OAuthError("invalid_request", f"parameter {name!r} must be a form field, not a file")
    if required and not value:
        raise OAuthError("invalid_request", f"parameter {name!r} is required")
    return value or None


def _scope(requested: str | None) -> str:
    if requested is None:
        return DEFAULT_SCOPE
    scopes = requested.split()
    if not scopes or not set(scopes) <= SUPPORTED_SCOPES:
        raise OAuthError("invalid_scope", f"supported scopes: {' '.join(sorted(SUPPORTED_SCOPES))}")
    return " ".join(sorted(set(scopes)))


class OAuthServer:
    """The token, revocation and introspection endpoints, and the guard of the console's agent routes."""

    def __init__(
        self,
        client_secret: Secret,
        verifier: AssertionVerifier,
        *,
        client_id: str = "channelgate",
        access_token_lifetime: int = 300,
        refresh_token_lifetime: int = 8 * 3600,
        effects: EffectRecorder | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.client_id = client_id
        self._client_secret = client_secret
        self.verifier = verifier
        self.tokens = TokenStore(access_token_lifetime, refresh_token_lifetime, clock)
        #: The console's effects log (``create_app`` shares one per console and serves it at ``GET /_effects``).
        self.effects: EffectRecorder = effects if effects is not None else Effects()
        #: Idempotency-Key → digest of the token it revoked. Kept here rather than in the console's
        #: ``IdempotencyKeys``, which reads JSON bodies: RFC 7009 requests are form-encoded.
        self._keys: OrderedDict[str, str] = OrderedDict()
        #: Replayed keys answered from memory: the tests check a retried step reached the console as a replay.
        self.replays = 0
        self.routes: list[BaseRoute] = [
            Route("/oauth/token", self._endpoint(self.token), methods=["POST"]),
            Route("/oauth/revoke", self._endpoint(self.revoke), methods=["POST"]),
            Route("/oauth/introspect", self._endpoint(self.introspect), methods=["POST"]),
        ]

    def guard(self, scheme: AuthScheme, verifier: AssertionVerifier, service_routes: Sequence[BaseRoute]) -> Middleware:
        return Middleware(
            AccessTokenGuard, scheme=scheme, verifier=verifier, service_routes=service_routes, server=self
        )

    @staticmethod
    def _endpoint(handler: Callable[[Request], Awaitable[Response]]) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            try:
                return await handler(request)
            except OAuthError as error:
                return error.response()

        return endpoint

    def _authenticate(self, request: Request) -> str:
        """RFC 6749 §2.3.1 client_secret_basic: id and secret form-urlencoded, then Basic (RFC 7617)."""
        scheme, _, encoded = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "basic":
            raise OAuthError("invalid_client", "client authentication required (client_secret_basic)", 401)
        try:
            user, colon, password = base64.b64decode(encoded.strip(), validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            raise OAuthError("invalid_client", "malformed Basic credentials", 401) from None
        id_ok = hmac.compare_digest(unquote_plus(user).encode(), self.client_id.encode())
        secret_ok = hmac.compare_digest(unquote_plus(password).encode(), str(self._client_secret).encode())
        if not (colon and id_ok and secret_ok):
            raise OAuthError("invalid_client", "client authentication failed", 401)
        return self.client_id

    async def _form(self, request: Request) -> FormData:
        if request.headers.get("content-type", "").split(";")[0].strip() != "application/x-www-form-urlencoded":
            raise OAuthError("invalid_request", "the body must be application/x-www-form-urlencoded")
        form = await request.form()
        if "client_secret" in form:
            raise OAuthError("invalid_request", "one client authentication method per request (RFC 6749 §2.3)")
        return form

    async def token(self, request: Request) -> Response:
        client_id = self._authenticate(request)
        form = await self._form(request)
        grant_type = _single(form, "grant_type", required=True)
        if grant_type == TOKEN_EXCHANGE:
            body = await self._exchange(form, client_id)
        elif grant_type == "refresh_token":
            token = _single(form, "refresh_token", required=True)
            assert token is not None
            body = self.tokens.refresh(token, client_id, _single(form, "scope"))
        else:
            raise OAuthError("unsupported_grant_type", f"grant_type {grant_type!r} is not supported")
        return JSONResponse(body, headers=NO_STORE)

    async def _exchange(self, form: FormData, client_id: str) -> dict[str, Any]:
        """RFC 8693 §2.1; an invalid or unacceptable subject token is ``invalid_request`` (§2.2.2)."""
        subject_token = _single(form, "subject_token", required=True)
        if _single(form, "subject_token_type", required=True) != JWT_TOKEN_TYPE:
            raise OAuthError("invalid_request", f"subject_token_type must be {JWT_TOKEN_TYPE}")
        if _single(form, "actor_token") is not None:
            raise OAuthError("invalid_request", "delegation (actor_token) is not supported")
        requested = _single(form, "requested_token_type")
        if requested not in {None, ACCESS_TOKEN_TYPE}:
            raise OAuthError("invalid_request", f"only {ACCESS_TOKEN_TYPE} can be issued")
        scope = _scope(_single(form, "scope"))
        try:
            agent = await self.verifier.verify(subject_token)
        except AssertionRejected as rejection:
            raise OAuthError("invalid_request", f"subject_token rejected: {rejection.detail}") from None
        return self.tokens.exchange(agent.sub, agent.username, client_id, scope)

    async def revoke(self, request: Request) -> Response:
        """RFC 7009 §2: 200 whether or not the token was live; ``token_type_hint`` only speeds up a lookup
        (§2.1), and this store finds every kind by digest, so it is read and ignored, as §2.2 allows."""
        self._authenticate(request)
        form = await self._form(request)
        token = _single(form, "token", required=True)
        _single(form, "token_type_hint")
        assert token is not None
        key = request.headers.get(IDEMPOTENCY_HEADER)
        if key is not None:
            seen = self._keys.get(key)
            if seen is not None:
                if not hmac.compare_digest(seen, _digest(token)):
                    raise OAuthError(
                        "idempotency_key_reused", f"this {IDEMPOTENCY_HEADER} was used for another token", 422
                    )
                self.replays += 1
                return Response(status_code=200, headers=NO_STORE)
        revoked = self.tokens.revoke(token)
        if revoked is not None:
            self.effects.record("token_revoked", revoked.user_name, revoked.detail, key)
        if key is not None:
            self._keys[key] = _digest(token)
            if len(self._keys) > REMEMBERED_KEYS:
                self._keys.popitem(last=False)
        return Response(status_code=200, headers=NO_STORE)

    async def introspect(self, request: Request) -> Response:
        """RFC 7662 §2.1: only the authenticated client may ask (§4: otherwise a token-scanning oracle)."""
        self._authenticate(request)
        form = await self._form(request)
        token = _single(form, "token", required=True)
        _single(form, "token_type_hint")
        assert token is not None
        return JSONResponse(self.tokens.introspect(token), headers=NO_STORE)


class AccessTokenGuard(ConsoleGuard):
    """The OAuth mode's guard: agent routes need one of this server's live access tokens (RFC 6750 §2.1) and the
    gateway's assertion of the agent it was issued to. The OAuth endpoints authenticate the client themselves
    (so their errors are RFC 6749 §5.2 JSON); other service routes keep the static credential check."""

    def __init__(
        self,
        app: ASGIApp,
        scheme: AuthScheme,
        verifier: AssertionVerifier,
        service_routes: Sequence[BaseRoute] = (),
        *,
        server: OAuthServer,
    ) -> None:
        super().__init__(app, scheme, verifier, service_routes)
        self.server = server

    @staticmethod
    def _matches(routes: Sequence[BaseRoute], scope: Scope) -> bool:
        return any(route.matches(scope)[0] is not Match.NONE for route in routes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in {"http", "websocket"} or self._matches(self.server.routes, scope):
            await self.app(scope, receive, send)
            return
        if self._matches(self.service_routes, scope):
            await super().__call__(scope, receive, send)
            return
        connection = HTTPConnection(scope)
        try:
            scheme, _, token = connection.headers.get("authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                # RFC 6750 §3.1: a request without a token gets the challenge and no error code.
                raise ConsoleRejection("an access token is required", f"Bearer {REALM}")
            issued = self.server.tokens.live_access(token.strip())
            if issued is None:
                raise InvalidToken("the access token is unknown, expired or revoked")
            agent = await self.verifier.verify(connection.headers.get(ASSERTION_HEADER))
            if not hmac.compare_digest(issued.grant.subject.encode(), agent.sub.encode()):
                raise InvalidToken("the access token was issued to another agent")
            scope.setdefault("state", {})["agent"] = agent
        except ConsoleRejection as rejection:
            await self._refuse(rejection, scope, receive, send)
            return
        await self.app(scope, receive, send)
