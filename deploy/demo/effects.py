"""What a demo console remembers of the gateway's state-changing calls: the effects log and idempotency keys.

Every real effect (a seat created or disabled, a ticket reassigned, a token revoked, a console session logged
out) is recorded once in :class:`Effects` and served at ``GET /_effects`` behind the console's service
credential, so tests and fault runs can count effects per agent. :class:`IdempotencyKeys` answers a replayed
``Idempotency-Key`` with the original answer and no second effect (draft-ietf-httpapi-idempotency-key-header
§2.6: 422 when the key comes back with a different request). A handler applies its effect without awaiting, so
a key is never "in flight" and the draft's 409 for concurrent copies is not needed.

One ``Effects`` and one ``IdempotencyKeys`` per console app: ``create_app`` makes them and hands them to every
protocol it mounts, so the console has one log and one key space whatever mix of protocols it speaks.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

IDEMPOTENCY_HEADER = "Idempotency-Key"
#: Vendors keep keys for a day or so (Stripe: 24 h); a demo console keeps the most recent ones instead.
REMEMBERED_KEYS = 100_000
#: Largest request body an admin or ticket call may carry.
MAX_BODY_BYTES = 64 * 1024


@dataclass(frozen=True, slots=True)
class Effect:
    time: float
    effect: str
    #: The userName the effect is about (the seat's owner, the ticket's previous assignee).
    subject: str
    detail: str
    idempotency_key: str | None


class EffectRecorder(Protocol):
    """Where a protocol records its effects (:class:`Effects`, or the log of a mode that keeps its own)."""

    def record(self, effect: str, subject: str, detail: str, idempotency_key: str | None) -> None: ...


@dataclass
class Effects:
    """The console's log of real effects, in order. A replayed request adds nothing."""

    entries: list[Effect] = field(default_factory=list)

    def record(self, effect: str, subject: str, detail: str, idempotency_key: str | None) -> None:
        self.entries.append(Effect(time.time(), effect, subject, detail, idempotency_key))

    def route(self) -> Route:
        """``GET /_effects[?subject=U][&since=N]``: a service route (the console's service credential only)."""

        async def list_effects(request: Request) -> JSONResponse:
            subject = request.query_params.get("subject")
            try:
                since = max(0, int(request.query_params.get("since", "0")))
            except ValueError:
                return error(400, "invalid_request", "since must be a whole number (an index into the log)")
            chosen = [asdict(e) for e in self.entries[since:] if subject is None or e.subject == subject]
            return JSONResponse({"effects": chosen, "next": len(self.entries)})

        return Route("/_effects", list_effects, methods=["GET"])


def error(status: int, code: str, message: str, **extra: Any) -> JSONResponse:
    """The consoles' JSON error shape (the one ``console_auth.ConsoleGuard`` uses too)."""
    return JSONResponse({"error": code, "error_description": message, **extra}, status_code=status)


@dataclass(frozen=True, slots=True)
class Answer:
    """What a state-changing handler answers: remembered under the request's idempotency key."""

    status: int
    body: dict[str, Any] | None = None

    def response(self) -> Response:
        if self.body is None:
            return Response(status_code=self.status)
        return JSONResponse(self.body, status_code=self.status)


class Call:
    """One state-changing request as a handler sees it: its JSON body (an object) and idempotency key."""

    def __init__(self, request: Request, payload: dict[str, Any], idempotency_key: str | None) -> None:
        self.request = request
        self.payload = payload
        self.idempotency_key = idempotency_key


#: A handler runs without awaiting anything, so checking the key, applying the effect and remembering the
#: answer happen in one step of the event loop: two copies of a request cannot both apply.
Handler = Callable[[Call], Answer]


@dataclass(frozen=True, slots=True)
class _Remembered:
    fingerprint: str
    answer: Answer


class IdempotencyKeys:
    """Remembered answers by ``Idempotency-Key``; one key space per console."""

    def __init__(self, capacity: int = REMEMBERED_KEYS) -> None:
        self._capacity = capacity
        self._answers: OrderedDict[str, _Remembered] = OrderedDict()

    def endpoint(self, handler: Handler) -> Callable[[Request], Awaitable[Response]]:
        """A Starlette endpoint running ``handler`` at most once per idempotency key."""

        async def endpoint(request: Request) -> Response:
            body = await request.body()
            if len(body) > MAX_BODY_BYTES:
                return error(413, "request_too_large", f"the body may carry at most {MAX_BODY_BYTES} bytes")
            try:
                payload = json.loads(body) if body.strip() else {}
            except (ValueError, UnicodeDecodeError):
                return error(400, "invalid_json", "the body is not JSON")
            if not isinstance(payload, dict):
                return error(400, "invalid_json", "the body must be a JSON object")
            key = request.headers.get(IDEMPOTENCY_HEADER)
            if key is not None and not 1 <= len(key) <= 255:
                return error(400, "invalid_idempotency_key", f"{IDEMPOTENCY_HEADER} must be 1 to 255 characters")
            fingerprint = hashlib.sha256(b"\0".join([request.method.encode(), request.url.path.encode(), body]))
            if key is not None and (remembered := self._answers.get(key)) is not None:
                if remembered.fingerprint != fingerprint.hexdigest():
                    return error(
                        422,
                        "idempotency_key_reused",
                        f"this {IDEMPOTENCY_HEADER} was already used for a different request; use a new key",
                    )
                return remembered.answer.response()
            answer = handler(Call(request, payload, key))
            # Server errors are not remembered: the client is expected to retry them with the same key.
            if key is not None and answer.status < 500:
                self._answers[key] = _Remembered(fingerprint.hexdigest(), answer)
                while len(self._answers) > self._capacity:
                    self._answers.popitem(last=False)
            return answer.response()

        return endpoint
