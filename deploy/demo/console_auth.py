"""How a demo console decides who is calling: its own API credential, then the gateway's identity assertion.

Each console demands its credential in its own way (an :class:`AuthScheme`); the gateway injects it, so an agent
who reaches a console around the gateway gets a 401. The ``X-Channelgate-Assertion`` JWT then says which agent
the gateway let through; it is verified against the gateway's JWKS with the channel name as audience, so an
assertion minted for one console cannot be replayed at another.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol
from urllib.parse import urlsplit

import anyio
import anyio.to_thread
from jose import jwt
from jose.exceptions import JOSEError
from starlette.datastructures import Headers, Secret
from starlette.requests import HTTPConnection
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.websockets import WebSocket

ASSERTION_HEADER = "X-Channelgate-Assertion"
#: Algorithms the gateway signs with; the key's own type picks one, so a token cannot choose its algorithm.
ALGORITHM_BY_KEY_TYPE = {"EC": "ES256", "RSA": "RS256"}


class ConsoleRejection(Exception):
    """A request the console refuses; rendered once, as a JSON 401, by :class:`ConsoleGuard`."""

    status: ClassVar[int] = 401
    code: ClassVar[str] = "unauthorized"

    def __init__(self, detail: str, challenge: str | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.challenge = challenge


class CredentialRejected(ConsoleRejection):
    code = "invalid_credential"


class AssertionRejected(ConsoleRejection):
    code = "invalid_assertion"


class AuthScheme(Protocol):
    """How one console's API credential travels. ``challenge`` is its ``WWW-Authenticate`` value, if any."""

    @property
    def challenge(self) -> str | None: ...

    def accepts(self, headers: Headers) -> bool: ...


def _same(given: str, expected: Secret) -> bool:
    return hmac.compare_digest(given.encode(), str(expected).encode())


@dataclass(frozen=True)
class BearerToken:
    """RFC 6750 §2.1: ``Authorization: Bearer <token>``."""

    credential: Secret
    challenge: str | None = 'Bearer realm="console"'

    def accepts(self, headers: Headers) -> bool:
        scheme, _, token = headers.get("authorization", "").partition(" ")
        return scheme.lower() == "bearer" and _same(token.strip(), self.credential)


@dataclass(frozen=True)
class ApiKeyHeader:
    """A vendor-style key header, ``X-Api-Key: <token>``."""

    credential: Secret
    header: str = "X-Api-Key"
    challenge: str | None = None

    def accepts(self, headers: Headers) -> bool:
        return _same(headers.get(self.header, ""), self.credential)


@dataclass(frozen=True)
class BasicAuth:
    """RFC 7617: ``Authorization: Basic base64(user:password)``, the password being the credential."""

    credential: Secret
    username: str = "channelgate"
    challenge: str | None = 'Basic realm="console", charset="UTF-8"'

    def accepts(self, headers: Headers) -> bool:
        scheme, _, encoded = headers.get("authorization", "").partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            user, colon, password = base64.b64decode(encoded.strip(), validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return False
        user_ok = hmac.compare_digest(user.encode(), self.username.encode())
        return bool(colon) & user_ok & _same(password, self.credential)


@dataclass(frozen=True)
class Agent:
    """The agent the gateway vouches for, from the assertion's ``sub``, ``preferred_username`` and ``groups``."""

    sub: str
    username: str
    groups: tuple[str, ...]


def agent_of(connection: HTTPConnection) -> Agent:
    """The verified agent of this request or WebSocket; set by the guard before any route runs."""
    agent: Agent = connection.scope["state"]["agent"]
    return agent


def _fetch_json(url: str) -> Any:
    if urlsplit(url).scheme not in {"http", "https"}:
        raise ValueError(f"the gateway JWKS URL must be http(s): {url}")
    with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 - scheme checked above
        return json.load(response)


class GatewayKeys:
    """The gateway's JWKS, fetched on first use and again when a token names an unknown ``kid`` (key rotation).

    Re-fetches are at most one per ``min_refresh_seconds``, so tokens with made-up ``kid`` values cannot turn
    the console into a request amplifier against the gateway.
    """

    def __init__(self, jwks_url: str, min_refresh_seconds: float = 5.0) -> None:
        self.jwks_url = jwks_url
        self.min_refresh_seconds = min_refresh_seconds
        self._keys: dict[str, dict[str, Any]] = {}
        self._fetched_at: float | None = None
        self._lock = anyio.Lock()

    async def key(self, kid: str) -> dict[str, Any] | None:
        if kid in self._keys:
            return self._keys[kid]
        async with self._lock:
            recently = self._fetched_at is not None and time.monotonic() - self._fetched_at < self.min_refresh_seconds
            if kid not in self._keys and not recently:
                await self._refresh()
        return self._keys.get(kid)

    async def _refresh(self) -> None:
        document = await anyio.to_thread.run_sync(_fetch_json, self.jwks_url)
        self._fetched_at = time.monotonic()
        keys = document.get("keys", []) if isinstance(document, dict) else []
        self._keys = {key["kid"]: key for key in keys if isinstance(key, dict) and isinstance(key.get("kid"), str)}


class AssertionVerifier:
    """Verify ``X-Channelgate-Assertion``: signature by a gateway key, ``iss``, ``aud`` = channel, ``exp``."""

    def __init__(self, keys: GatewayKeys, issuer: str, channel: str) -> None:
        self.keys = keys
        self.issuer = issuer
        self.channel = channel

    async def verify(self, token: str | None) -> Agent:
        if not token:
            raise AssertionRejected(f"missing {ASSERTION_HEADER} header")
        try:
            kid = jwt.get_unverified_header(token).get("kid")
        except JOSEError as exc:
            raise AssertionRejected("malformed assertion") from exc
        if not isinstance(kid, str):
            raise AssertionRejected("assertion has no 'kid'")
        try:
            key = await self.keys.key(kid)
        except (OSError, ValueError) as exc:
            raise AssertionRejected("the gateway's keys cannot be fetched") from exc
        algorithm = ALGORITHM_BY_KEY_TYPE.get(str(key.get("kty"))) if key else None
        if key is None or algorithm is None:
            raise AssertionRejected(f"unknown signing key {kid!r}")
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=[algorithm],
                audience=self.channel,
                issuer=self.issuer,
                options={"require_exp": True, "require_sub": True, "require_iss": True, "require_aud": True},
            )
        except JOSEError as exc:
            raise AssertionRejected(f"assertion rejected: {exc}") from exc
        groups = claims.get("groups", [])
        username = claims.get("preferred_username")
        if not isinstance(username, str) or not isinstance(groups, list):
            raise AssertionRejected("assertion lacks 'preferred_username' or 'groups'")
        return Agent(sub=str(claims["sub"]), username=username, groups=tuple(str(group) for group in groups))


class ConsoleGuard:
    """ASGI middleware: every HTTP request and WebSocket handshake needs the credential, then a valid assertion.

    ``service_routes`` (gateway-to-console calls such as token revocation) need the credential only: no agent
    is behind them. A refused WebSocket gets the JSON 401 as a handshake denial where the server supports it
    (ASGI ``websocket.http.response``), otherwise a close with 1008 (policy violation, RFC 6455 §7.4.1).
    """

    def __init__(
        self, app: ASGIApp, scheme: AuthScheme, verifier: AssertionVerifier, service_routes: Sequence[BaseRoute] = ()
    ) -> None:
        self.app = app
        self.scheme = scheme
        self.verifier = verifier
        self.service_routes = service_routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in {"http", "websocket"}:
            await self.app(scope, receive, send)
            return
        connection = HTTPConnection(scope)
        try:
            if not self.scheme.accepts(connection.headers):
                raise CredentialRejected("missing or wrong console API credential", self.scheme.challenge)
            if not any(route.matches(scope)[0] is not Match.NONE for route in self.service_routes):
                agent = await self.verifier.verify(connection.headers.get(ASSERTION_HEADER))
                scope.setdefault("state", {})["agent"] = agent
        except ConsoleRejection as rejection:
            await self._refuse(rejection, scope, receive, send)
            return
        await self.app(scope, receive, send)

    @staticmethod
    async def _refuse(rejection: ConsoleRejection, scope: Scope, receive: Receive, send: Send) -> None:
        await send_refusal(rejection_response(rejection), scope, receive, send)


def rejection_response(rejection: ConsoleRejection) -> Response:
    """The JSON 401/403 of a refusal, with its ``WWW-Authenticate`` challenge when it has one."""
    headers = {"WWW-Authenticate": rejection.challenge} if rejection.challenge else None
    body = {"error": rejection.code, "error_description": rejection.detail}
    return JSONResponse(body, status_code=rejection.status, headers=headers)


async def send_refusal(response: Response, scope: Scope, receive: Receive, send: Send) -> None:
    """Send a refusal on HTTP; on a WebSocket as a denial response where the server supports it, else close 1008."""
    if scope["type"] == "http":
        await response(scope, receive, send)
        return
    websocket = WebSocket(scope, receive, send)
    if "websocket.http.response" in scope.get("extensions", {}):
        await websocket.send_denial_response(response)
    else:
        await websocket.close(code=1008)
