"""Fault injection for the demo consoles: a channel that answers 503, hangs, or answers normally.

The deprovisioning pipeline must finish the other channels when one fails, retry the failing one until it comes
back, and dead-letter it when the budget is spent (issue 4). Tests flip a console's :class:`FaultSwitch`
(``app.state.faults``); a console run as its own process takes the same switch over HTTP at ``PUT /_faults``
(JSON ``{"mode": "ok" | "unavailable" | "hang", "path_prefix": "/admin/"}``) when started with a fault-control
token. "Refusing connections" needs no switch: stop the console.
"""

from __future__ import annotations

import asyncio
import hmac
import json
from dataclasses import dataclass
from typing import Literal

from starlette.types import ASGIApp, Receive, Scope, Send

FaultMode = Literal["ok", "unavailable", "hang"]
CONTROL_PATH = "/_faults"


@dataclass
class FaultSwitch:
    mode: FaultMode = "ok"
    #: Only requests under this path prefix are affected ("" = all, except the control endpoint itself).
    path_prefix: str = ""
    #: Requests answered with a fault so far (tests check the pipeline really called).
    faulted: int = 0

    def set(self, mode: FaultMode, path_prefix: str = "") -> None:
        self.mode = mode
        self.path_prefix = path_prefix

    def applies(self, path: str) -> bool:
        return self.mode != "ok" and path != CONTROL_PATH and path.startswith(self.path_prefix)


class FaultInjection:
    """Outermost middleware of a console: answers 503 with ``Retry-After`` or never answers, per the switch."""

    def __init__(self, app: ASGIApp, switch: FaultSwitch, control_token: str | None = None) -> None:
        self.app = app
        self.switch = switch
        self._token = control_token

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        if path == CONTROL_PATH and self._token is not None:
            await self._control(scope, receive, send)
            return
        if not self.switch.applies(path):
            await self.app(scope, receive, send)
            return
        self.switch.faulted += 1
        if self.switch.mode == "hang":
            # Holds the connection open without a byte: the caller's timeout is what ends it.
            await asyncio.Event().wait()
        body = b'{"error": "temporarily_unavailable"}'
        await send(
            {
                "type": "http.response.start",
                "status": 503,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"retry-after", b"1"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})

    async def _control(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = dict(scope["headers"])
        scheme, _, token = headers.get(b"authorization", b"").decode("latin-1").partition(" ")
        assert self._token is not None
        status, answer = 200, b'{"ok": true}'
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.encode(), self._token.encode()):
            status, answer = 401, b'{"error": "fault control needs its bearer token"}'
        elif scope["method"] != "PUT":
            status, answer = 405, b'{"error": "PUT a JSON body"}'
        else:
            raw = b""
            while True:
                message = await receive()
                raw += message.get("body", b"")
                if not message.get("more_body") or len(raw) > 4096:
                    break
            try:
                body = json.loads(raw)
                mode = body["mode"]
                if mode not in ("ok", "unavailable", "hang"):
                    raise ValueError(mode)
                self.switch.set(mode, str(body.get("path_prefix", "")))
            except (ValueError, KeyError, TypeError):
                status, answer = 400, b'{"error": "send {\\"mode\\": \\"ok\\" | \\"unavailable\\" | \\"hang\\"}"}'
        await send(
            {"type": "http.response.start", "status": status, "headers": [(b"content-type", b"application/json")]}
        )
        await send({"type": "http.response.body", "body": answer})
