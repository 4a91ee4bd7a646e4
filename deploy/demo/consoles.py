"""Three demo channel consoles (chat, phone, mail), one Starlette app each, that trust only channelgate.

Each demands its own API credential (see :data:`CHANNELS`) and the gateway's identity assertion, then shows
the agent the gateway vouched for. The chat console adds a WebSocket echo at ``/ws`` and a Server-Sent Events
tick at ``/events``. New routes go in a channel's ``routes`` (agent-facing) or ``service_routes`` (called by
the gateway itself, credential only) and are guarded like the rest.

    python -m deploy.demo.consoles --channel chat --port 8101 --credential TOKEN \\
        --gateway-jwks http://127.0.0.1:8000/.channelgate/jwks.json --gateway-issuer http://127.0.0.1:8000
"""

from __future__ import annotations

import argparse
import html
import os
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass

import anyio
import uvicorn
from starlette.applications import Starlette
from starlette.datastructures import Secret
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, StreamingResponse
from starlette.routing import BaseRoute, Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from deploy.demo.console_auth import (
    Agent,
    ApiKeyHeader,
    AssertionVerifier,
    AuthScheme,
    BasicAuth,
    BearerToken,
    ConsoleGuard,
    GatewayKeys,
    agent_of,
)

LOOPBACK = "127.0.0.1"
CREDENTIAL_ENV = "CHANNELGATE_CONSOLE_CREDENTIAL"

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title></head>
<body style="font-family: sans-serif; max-width: 40rem; margin: 2rem auto">
<h1>{title}</h1>
<p>Channel: <strong>{channel}</strong></p>
<p id="agent">You are <strong>{username}</strong> (groups {groups}) — as asserted by channelgate.</p>
<p>This console received its API credential from the gateway; agents never see it.</p>
{extra}
</body></html>
"""

CHAT_PANEL = """<section>
<h2>Live chat</h2>
<p>Status: <span id="ws-status">connecting…</span></p>
<ul id="messages"></ul>
<form id="send"><input id="text" autocomplete="off" aria-label="Message"> <button>Send</button></form>
<p><a href="events">Event stream</a> (a tick every second)</p>
</section>
<script>
(() => {
  // The page is /chat/ behind the gateway and / when reached directly: the socket lives beside it.
  const base = location.pathname.endsWith("/") ? location.pathname : location.pathname + "/";
  const socket = new WebSocket((location.protocol === "https:" ? "wss://" : "ws://") + location.host + base + "ws");
  const status = document.getElementById("ws-status");
  const list = document.getElementById("messages");
  socket.onopen = () => { status.textContent = "connected"; };
  socket.onmessage = (event) => {
    const item = document.createElement("li");
    item.textContent = event.data;
    list.append(item);
  };
  socket.onclose = (event) => { status.textContent = "connection closed (code " + event.code + ")"; };
  document.getElementById("send").addEventListener("submit", (event) => {
    event.preventDefault();
    const input = document.getElementById("text");
    if (socket.readyState === WebSocket.OPEN && input.value) { socket.send(input.value); input.value = ""; }
  });
})();
</script>
"""


@dataclass(frozen=True)
class Channel:
    """One console kind: how it wants its credential, and what it serves beyond its home page."""

    title: str
    scheme: Callable[[Secret], AuthScheme]
    routes: Sequence[BaseRoute] = ()
    service_routes: Sequence[BaseRoute] = ()
    panel: str = ""


def render_page(channel: str, title: str, agent: Agent, extra: str = "") -> str:
    return PAGE.format(
        title=html.escape(title),
        channel=html.escape(channel),
        username=html.escape(agent.username),
        groups=html.escape(", ".join(agent.groups) or "none"),
        extra=extra,
    )


async def chat_echo(websocket: WebSocket) -> None:
    """Echo each message back, prefixed with the agent's name."""
    agent = agent_of(websocket)
    await websocket.accept()
    try:
        while True:
            text = await websocket.receive_text()
            await websocket.send_text(f"{agent.username}: {text}")
    except WebSocketDisconnect:
        return


async def chat_events(request: Request) -> StreamingResponse:
    """A Server-Sent Events stream (HTML Living Standard §9.2): one tick at once, then one a second."""

    async def ticks() -> AsyncIterator[str]:
        count = 0
        while True:
            yield f"id: {count}\ndata: tick {count}\n\n"
            count += 1
            await anyio.sleep(1)

    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return StreamingResponse(ticks(), media_type="text/event-stream", headers=headers)


CHANNELS: dict[str, Channel] = {
    "chat": Channel(
        "Chat console",
        BearerToken,
        routes=[WebSocketRoute("/ws", chat_echo), Route("/events", chat_events)],
        panel=CHAT_PANEL,
    ),
    "phone": Channel("Phone (CTI) console", ApiKeyHeader),
    "mail": Channel("Mail console", BasicAuth),
}


def console_app(
    channel: str,
    title: str,
    scheme: AuthScheme,
    verifier: AssertionVerifier,
    routes: Sequence[BaseRoute] = (),
    service_routes: Sequence[BaseRoute] = (),
    panel: str = "",
) -> Starlette:
    """A console: its home page plus ``routes`` for agents, ``service_routes`` for the gateway, all guarded."""

    async def home(request: Request) -> HTMLResponse:
        return HTMLResponse(render_page(channel, title, agent_of(request), panel))

    guard = Middleware(ConsoleGuard, scheme=scheme, verifier=verifier, service_routes=service_routes)
    return Starlette(routes=[Route("/", home), *routes, *service_routes], middleware=[guard])


def create_app(
    channel: str,
    credential: str,
    gateway_jwks_url: str,
    gateway_issuer: str,
    *,
    jwks_min_refresh_seconds: float = 5.0,
) -> Starlette:
    """The console for ``channel`` (chat, phone or mail), trusting assertions from ``gateway_issuer``."""
    kind = CHANNELS[channel]
    verifier = AssertionVerifier(GatewayKeys(gateway_jwks_url, jwks_min_refresh_seconds), gateway_issuer, channel)
    return console_app(
        channel, kind.title, kind.scheme(Secret(credential)), verifier, kind.routes, kind.service_routes, kind.panel
    )


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m deploy.demo.consoles", description="A demo channel console.")
    parser.add_argument("--channel", choices=sorted(CHANNELS), required=True)
    parser.add_argument("--host", default=LOOPBACK)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--credential", default=os.environ.get(CREDENTIAL_ENV), help=f"or set {CREDENTIAL_ENV}")
    parser.add_argument("--gateway-jwks", required=True, help="the gateway's JWKS URL")
    parser.add_argument("--gateway-issuer", required=True, help="the gateway's public URL, the assertions' iss")
    parser.add_argument("--log-level", default="info")
    args = parser.parse_args(argv)
    if not args.credential:
        parser.error(f"--credential or {CREDENTIAL_ENV} is required")
    app = create_app(args.channel, args.credential, args.gateway_jwks, args.gateway_issuer)
    # The sans-I/O websockets protocol: uvicorn's older one is deprecated in websockets 14+.
    uvicorn.run(app, host=args.host, port=args.port, ws="websockets-sansio", log_level=args.log_level)


if __name__ == "__main__":
    main()
