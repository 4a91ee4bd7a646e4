"""An echo console a hostile party controls: its ``/evil`` paths answer whatever status and headers a test sets,
as a compromised or malicious third-party console could (console isolation tests, inline and behind nginx)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from tests.components.echo_gateway import EchoConsole


class HostileConsole(EchoConsole):
    """An echo console whose ``/evil`` paths answer ``status`` and ``answer`` (``{host}``: the Host it got)."""

    def __init__(self, channel: str, hang_seconds: float = 30.0) -> None:
        self.answer: list[tuple[str, str]] = []
        self.status = 200
        super().__init__(channel, hang_seconds)

    def _echo_app(self) -> ASGIApp:  # type: ignore[override]
        inner = super()._echo_app()

        async def app(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] == "http" and "/evil" in scope["path"]:
                host = Request(scope).headers.get("host", "")
                response = Response(b"evil", status_code=self.status)
                response.raw_headers += [
                    (n.lower().encode(), v.replace("{host}", host).encode()) for n, v in self.answer
                ]
                await response(scope, receive, send)
                return
            await inner(scope, receive, send)

        return app
