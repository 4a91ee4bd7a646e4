"""An ASGI wrapper that sends every answer's body in two parts with a pause between them, as a real network (an
answer bigger than a segment) or a server that flushes as it writes delivers it: a client must read until the end
of the body, not take what the first read returns."""

from __future__ import annotations

import asyncio

from starlette.types import ASGIApp, Message, Receive, Scope, Send

PAUSE_SECONDS = 0.05


class SplitAnswers:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def split(message: Message) -> None:
            body = message.get("body", b"")
            if message["type"] != "http.response.body" or len(body) < 2:
                await send(message)
                return
            half = len(body) // 2
            await send({"type": "http.response.body", "body": body[:half], "more_body": True})
            await asyncio.sleep(PAUSE_SECONDS)
            await send({**message, "body": body[half:]})

        await self.app(scope, receive, split)
