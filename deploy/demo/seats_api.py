"""A vendor-style seats admin API: one seat per agent, each with its own API key (``--auth seats``).

Admin calls carry ``Authorization: Bearer <admin key>`` (the console's configured credential, which only the
gateway holds) and may carry ``Idempotency-Key``:

    POST   {admin}seats                    {userName, displayName?, email?}
           → 201 {id, userName, active, created, apiKey}; an existing seat → 409 {error, seat} (no key)
    POST   {admin}seats/{userName}/keys    → 200 {..., apiKey}: a new key, the previous one stops working
    GET    {admin}seats/{userName}         → 200 {id, userName, active, created, disabledAt?} | 404
    PATCH  {admin}seats/{userName}         {active: false | true} → 200 {seat}
    DELETE {admin}seats/{userName}         → 204 | 404

An API key (256 random bits) is shown only in the answer that made it (and to a replay of that request); the
console keeps its SHA-256 only. In this mode the console's agent routes accept a live seat's key as
``Authorization: Bearer`` plus the gateway's assertion, and the seat must belong to the asserted agent: another
agent's key is refused even with a valid assertion, so a key that leaks cannot act for anyone else. A disabled
seat's key gets 403 ``seat_disabled``; a rotated or deleted seat's key gets 401. ``GET /api/me`` answers 200 to a
live key alone (no assertion, no data beyond the seat's name, as Slack's ``auth.test``): the gateway's check
that a revoked key is refused, with no side effect.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from starlette.datastructures import Headers
from starlette.requests import HTTPConnection, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Match, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from deploy.demo.console_auth import (
    ASSERTION_HEADER,
    AssertionVerifier,
    AuthScheme,
    ConsoleGuard,
    ConsoleRejection,
    CredentialRejected,
)
from deploy.demo.effects import Answer, Call, EffectRecorder, IdempotencyKeys

ADMIN_BASE = "/admin/"
KEY_CHECK_PATH = "/api/me"
KEY_PREFIX = "cgs_"
KEY_BYTES = 32
#: RFC 6750 §2.1 b64token: what a key may look like on the wire.
_B64TOKEN = re.compile(r"[A-Za-z0-9\-._~+/]+=*")
_USER_NAME = re.compile(r"[^/\s\x00-\x1f\x7f]{1,256}")

CREATED, ROTATED, DISABLED, ENABLED, DELETED = (
    "seat created",
    "seat key rotated",
    "seat disabled",
    "seat enabled",
    "seat deleted",
)


class SeatDisabled(ConsoleRejection):
    status = 403
    code = "seat_disabled"


class SeatMismatch(ConsoleRejection):
    status = 403
    code = "seat_mismatch"


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def _new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(KEY_BYTES)


@dataclass(frozen=True, slots=True)
class Seat:
    id: str
    user_name: str
    display_name: str | None
    email: str | None
    active: bool
    created: str
    disabled_at: str | None
    key_digest: bytes

    def document(self, api_key: str | None = None) -> dict[str, Any]:
        document: dict[str, Any] = {
            "id": self.id,
            "userName": self.user_name,
            "displayName": self.display_name,
            "email": self.email,
            "active": self.active,
            "created": self.created,
        }
        if self.disabled_at is not None:
            document["disabledAt"] = self.disabled_at
        if api_key is not None:
            document["apiKey"] = api_key
        return document


def _refusal(status: int, code: str, message: str, **extra: Any) -> Answer:
    return Answer(status, {"error": code, "error_description": message, **extra})


def _not_found(user_name: str) -> Answer:
    return _refusal(404, "not_found", f"there is no seat for {user_name!r}")


class SeatRegistry:
    """The console's seats: admin routes that change them, and the key check the guard asks on every request."""

    def __init__(self, effects: EffectRecorder, keys: IdempotencyKeys, base: str = ADMIN_BASE) -> None:
        if not base.startswith("/") or not base.endswith("/"):
            raise ValueError("the seats admin base must start and end with '/'")
        self._effects = effects
        self._keys = keys
        self._base = base
        self._seats: dict[str, Seat] = {}
        self._by_key: dict[bytes, str] = {}
        #: Keys of deleted seats, so their refusal can say why.
        self._deleted: set[bytes] = set()

    def seat(self, user_name: str) -> Seat | None:
        return self._seats.get(user_name)

    def admin_routes(self) -> list[BaseRoute]:
        one = f"{self._base}seats/{{user_name}}"
        return [
            Route(f"{self._base}seats", self._keys.endpoint(self._create), methods=["POST"]),
            Route(f"{one}/keys", self._keys.endpoint(self._rotate), methods=["POST"]),
            Route(one, self._read, methods=["GET"]),
            Route(one, self._keys.endpoint(self._patch), methods=["PATCH"]),
            Route(one, self._keys.endpoint(self._delete), methods=["DELETE"]),
        ]

    def key_routes(self) -> list[BaseRoute]:
        """Routes a live seat key opens without an assertion (the gateway's side-effect-free key check)."""

        async def me(request: Request) -> JSONResponse:
            seat: Seat = request.scope["state"]["seat"]
            return JSONResponse({"id": seat.id, "userName": seat.user_name, "active": seat.active})

        return [Route(KEY_CHECK_PATH, me, methods=["GET"])]

    def authenticate(self, headers: Headers) -> Seat:
        """The live seat whose key this request presents as ``Authorization: Bearer``, or a rejection."""
        scheme, _, key = headers.get("authorization", "").partition(" ")
        key = key.strip()
        challenge = 'Bearer realm="console", error="invalid_token"'
        if scheme.lower() != "bearer" or not _B64TOKEN.fullmatch(key):
            raise CredentialRejected("send the seat's API key as Authorization: Bearer", 'Bearer realm="console"')
        digest = _digest(key)
        user_name = self._by_key.get(digest)
        if user_name is None:
            if digest in self._deleted:
                raise CredentialRejected("this API key belonged to a seat that was deleted", challenge)
            raise CredentialRejected("unknown API key (it may have been rotated)", challenge)
        seat = self._seats[user_name]
        if not seat.active:
            raise SeatDisabled(f"the seat of {seat.user_name} is disabled; an administrator has to enable it")
        return seat

    def _put(self, seat: Seat) -> None:
        self._seats[seat.user_name] = seat

    def _create(self, call: Call) -> Answer:
        payload = call.payload
        unknown = sorted(set(payload) - {"userName", "displayName", "email"})
        user_name = payload.get("userName")
        if unknown or not isinstance(user_name, str) or not _USER_NAME.fullmatch(user_name):
            return _refusal(
                422,
                "invalid_seat",
                "send {userName, displayName?, email?}; userName is 1-256 characters without '/', spaces or controls",
            )
        if not all(isinstance(payload.get(name), str | None) for name in ("displayName", "email")):
            return _refusal(422, "invalid_seat", "displayName and email must be strings")
        existing = self._seats.get(user_name)
        if existing is not None:
            return _refusal(409, "seat_exists", f"{user_name!r} already has a seat", seat=existing.document())
        key = _new_key()
        seat = Seat(
            "seat_" + secrets.token_hex(8),
            user_name,
            payload.get("displayName"),
            payload.get("email"),
            True,
            _now(),
            None,
            _digest(key),
        )
        self._put(seat)
        self._by_key[seat.key_digest] = user_name
        self._effects.record(CREATED, user_name, seat.id, call.idempotency_key)
        return Answer(201, seat.document(key))

    def _target(self, call: Call) -> Seat | Answer:
        user_name: str = call.request.path_params["user_name"]
        return self._seats.get(user_name) or _not_found(user_name)

    def _rotate(self, call: Call) -> Answer:
        seat = self._target(call)
        if isinstance(seat, Answer):
            return seat
        if not seat.active:
            return _refusal(
                409, "seat_disabled", "a disabled seat gets no new key; enable it first", seat=seat.document()
            )
        key = _new_key()
        del self._by_key[seat.key_digest]
        seat = replace(seat, key_digest=_digest(key))
        self._put(seat)
        self._by_key[seat.key_digest] = seat.user_name
        self._effects.record(ROTATED, seat.user_name, seat.id, call.idempotency_key)
        return Answer(200, seat.document(key))

    async def _read(self, request: Request) -> Response:
        user_name: str = request.path_params["user_name"]
        seat = self._seats.get(user_name)
        return (_not_found(user_name) if seat is None else Answer(200, seat.document())).response()

    def _patch(self, call: Call) -> Answer:
        seat = self._target(call)
        if isinstance(seat, Answer):
            return seat
        active = call.payload.get("active")
        if set(call.payload) != {"active"} or not isinstance(active, bool):
            return _refusal(422, "invalid_seat", "send {active: false} to disable the seat or {active: true}")
        if seat.active != active:
            seat = replace(seat, active=active, disabled_at=None if active else _now())
            self._put(seat)
            self._effects.record(ENABLED if active else DISABLED, seat.user_name, seat.id, call.idempotency_key)
        return Answer(200, seat.document())

    def _delete(self, call: Call) -> Answer:
        seat = self._target(call)
        if isinstance(seat, Answer):
            return seat
        del self._seats[seat.user_name]
        del self._by_key[seat.key_digest]
        self._deleted.add(seat.key_digest)
        self._effects.record(DELETED, seat.user_name, seat.id, call.idempotency_key)
        return Answer(204)


class SeatsGuard:
    """ASGI middleware of a console in seats mode (in place of ``ConsoleGuard``).

    Service routes (the seats admin API, the ticket API, ``/_effects``) need the admin key. Every other route
    needs a live seat's key; the key-check routes need nothing more, all others also the gateway's assertion
    for the very agent who owns the seat. The key is checked first, so a caller without one costs no JWKS work.
    """

    def __init__(
        self,
        app: ASGIApp,
        admin: AuthScheme,
        seats: SeatRegistry,
        verifier: AssertionVerifier,
        service_routes: Sequence[BaseRoute] = (),
    ) -> None:
        self.app = app
        self.admin = admin
        self.seats = seats
        self.verifier = verifier
        self.service_routes = service_routes
        self.key_routes = seats.key_routes()

    @staticmethod
    def _matches(routes: Sequence[BaseRoute], scope: Scope) -> bool:
        return any(route.matches(scope)[0] is not Match.NONE for route in routes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in {"http", "websocket"}:
            await self.app(scope, receive, send)
            return
        connection = HTTPConnection(scope)
        state = scope.setdefault("state", {})
        try:
            if self._matches(self.service_routes, scope):
                if not self.admin.accepts(connection.headers):
                    raise CredentialRejected("missing or wrong admin key", self.admin.challenge)
            else:
                seat = self.seats.authenticate(connection.headers)
                state["seat"] = seat
                if not self._matches(self.key_routes, scope):
                    agent = await self.verifier.verify(connection.headers.get(ASSERTION_HEADER))
                    if agent.username != seat.user_name:
                        raise SeatMismatch(f"this API key is the seat of another agent, not of {agent.username}")
                    state["agent"] = agent
        except ConsoleRejection as rejection:
            await ConsoleGuard._refuse(rejection, scope, receive, send)
            return
        await self.app(scope, receive, send)
