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
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

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
from deploy.demo.effects import EffectRecorder, Effects, IdempotencyKeys
from deploy.demo.faults import FaultInjection, FaultSwitch
from deploy.demo.form_login import DEFAULT_SESSION_SECONDS, SESSION_PANEL, FormLogin, load_accounts
from deploy.demo.oauth_server import OAuthServer
from deploy.demo.seats_api import SeatRegistry, SeatsGuard
from deploy.demo.tickets_api import Ticket, TicketBoard, demo_tickets, load_tickets

LOOPBACK = "127.0.0.1"
CREDENTIAL_ENV = "CHANNELGATE_CONSOLE_CREDENTIAL"
#: When set, ``PUT /_faults`` with this bearer token switches the console's injected faults (tests, fault runs).
FAULT_TOKEN_ENV = "CHANNELGATE_CONSOLE_FAULT_TOKEN"

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
    guard: Middleware | None = None,
) -> Starlette:
    """A console: its home page plus ``routes`` for agents, ``service_routes`` for the gateway, all guarded
    (by ``guard`` when given: the OAuth 2.0 mode's access-token guard)."""

    async def home(request: Request) -> HTMLResponse:
        return HTMLResponse(render_page(channel, title, agent_of(request), panel))

    guard = guard or Middleware(ConsoleGuard, scheme=scheme, verifier=verifier, service_routes=service_routes)
    # Outermost, so a faulted console fails before it authenticates anything (deploy/demo/faults.py).
    switch = FaultSwitch()
    faults = Middleware(FaultInjection, switch=switch, control_token=os.environ.get(FAULT_TOKEN_ENV) or None)
    app = Starlette(routes=[Route("/", home), *routes, *service_routes], middleware=[faults, guard])
    app.state.faults = switch
    return app


def create_app(
    channel: str,
    credential: str,
    gateway_jwks_url: str,
    gateway_issuer: str,
    *,
    jwks_min_refresh_seconds: float = 5.0,
    auth: Literal["static", "oauth2", "seats", "form"] = "static",
    client_id: str = "channelgate",
    token_lifetime_seconds: int = 300,
    tickets: Sequence[Ticket] | None = None,
    accounts: Mapping[str, str] | None = None,
    session_seconds: float = DEFAULT_SESSION_SECONDS,
) -> Starlette:
    """The console for ``channel`` (chat, phone or mail), trusting assertions from ``gateway_issuer``.

    ``auth = "oauth2"`` makes it its own OAuth 2.0 authorization server (deploy/demo/oauth_server.py, reachable
    as ``app.state.oauth``): agent routes then take per-agent access tokens, and ``credential`` is the gateway's
    client secret.

    ``auth = "seats"`` serves a seats admin API (deploy/demo/seats_api.py, ``app.state.seats``): ``credential`` is
    then the admin key (``Authorization: Bearer``) and agent routes take only a live seat's own key. ``tickets``
    (seed tickets, possibly none) adds the ticket API (deploy/demo/tickets_api.py), guarded like every service
    route by the console's credential. Every mode's effects are served at ``GET /_effects``.

    ``auth = "form"`` makes it a legacy console with its own login form and session cookie for the ``accounts``
    (userName → password; deploy/demo/form_login.py, ``app.state.form_login``), sessions lasting
    ``session_seconds``: agent routes then need a console session of the asserted agent, and ``credential`` is
    the service credential (``Authorization: Bearer``) of its service routes."""
    kind = CHANNELS[channel]
    verifier = AssertionVerifier(GatewayKeys(gateway_jwks_url, jwks_min_refresh_seconds), gateway_issuer, channel)
    scheme = kind.scheme(Secret(credential))
    log = Effects()
    effects: EffectRecorder = log
    server = (
        OAuthServer(
            Secret(credential), verifier, client_id=client_id, access_token_lifetime=token_lifetime_seconds, effects=log
        )
        if auth == "oauth2"
        else None
    )
    keys = IdempotencyKeys()
    routes, service_routes = list(kind.routes), list(kind.service_routes)
    if tickets is not None:
        board = TicketBoard(tickets, effects, keys)
        routes += board.agent_routes()
        service_routes += board.service_routes()
    if server is not None:
        service_routes.append(log.route())
        app = console_app(
            channel,
            kind.title,
            scheme,
            verifier,
            routes,
            [*service_routes, *server.routes],
            kind.panel,
            guard=server.guard(scheme, verifier, service_routes),
        )
        app.state.oauth = server
        return app
    if tickets is not None or auth in ("seats", "form"):
        service_routes.append(log.route())
    if auth == "form":
        login = FormLogin(kind.title, accounts or {}, effects, keys, session_seconds=session_seconds)
        service = BearerToken(Secret(credential))
        app = console_app(
            channel,
            kind.title,
            service,
            verifier,
            [*routes, *login.public_routes, *login.agent_routes],
            [*service_routes, *login.service_routes],
            kind.panel + SESSION_PANEL,
            login.guard(service, verifier, service_routes),
        )
        app.state.form_login = login
        return app
    if auth == "seats":
        seats = SeatRegistry(effects, keys)
        service_routes += seats.admin_routes()
        admin = BearerToken(Secret(credential))
        guard = Middleware(SeatsGuard, admin=admin, seats=seats, verifier=verifier, service_routes=service_routes)
        app = console_app(
            channel, kind.title, admin, verifier, [*routes, *seats.key_routes()], service_routes, kind.panel, guard
        )
        app.state.seats = seats
        return app
    return console_app(channel, kind.title, scheme, verifier, routes, service_routes, kind.panel)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m deploy.demo.consoles", description="A demo channel console.")
    parser.add_argument("--channel", choices=sorted(CHANNELS), required=True)
    parser.add_argument("--host", default=LOOPBACK)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--credential", default=os.environ.get(CREDENTIAL_ENV), help=f"or set {CREDENTIAL_ENV}")
    parser.add_argument("--gateway-jwks", required=True, help="the gateway's JWKS URL")
    parser.add_argument("--gateway-issuer", required=True, help="the gateway's public URL, the assertions' iss")
    parser.add_argument(
        "--auth",
        choices=["static", "oauth2", "seats", "form"],
        default="static",
        help="static: the credential itself on every request; oauth2: per-agent OAuth 2.0 tokens (RFC 8693 token "
        "exchange, RFC 7009 revocation, RFC 7662 introspection), the credential being the gateway's client secret; "
        "seats: a seats admin API (the credential is its Bearer admin key) and per-seat API keys for agents; "
        "form: a legacy login form and session cookie per agent (--accounts), the credential guarding the "
        "service routes as a Bearer token",
    )
    parser.add_argument("--client-id", default="channelgate", help="the gateway's OAuth client_id (--auth oauth2)")
    parser.add_argument("--token-lifetime", type=int, default=300, help="access-token lifetime, s (--auth oauth2)")
    seed = parser.add_mutually_exclusive_group()
    seed.add_argument(
        "--tickets", action="store_true", help="serve the ticket API with open tickets for alice, bob, carol"
    )
    seed.add_argument("--tickets-file", type=Path, help="serve the ticket API with the tickets in this JSON file")
    parser.add_argument(
        "--accounts",
        type=Path,
        help='the console\'s own accounts, a JSON file {"alice": "password", ...} (--auth form)',
    )
    parser.add_argument(
        "--session-seconds",
        type=float,
        default=DEFAULT_SESSION_SECONDS,
        help="how long a console session lives (--auth form)",
    )
    parser.add_argument("--log-level", default="info")
    args = parser.parse_args(argv)
    if not args.credential:
        parser.error(f"--credential or {CREDENTIAL_ENV} is required")
    if args.token_lifetime < 1:
        parser.error("--token-lifetime must be at least 1 second")
    tickets: list[Ticket] | None = demo_tickets(args.channel) if args.tickets else None
    if args.tickets_file is not None:
        try:
            tickets = load_tickets(args.tickets_file)
        except (OSError, ValueError) as exc:
            parser.error(f"--tickets-file {args.tickets_file}: {exc}")
    accounts: dict[str, str] | None = None
    if args.auth == "form":
        if args.accounts is None:
            parser.error("--auth form needs --accounts FILE")
        try:
            accounts = load_accounts(args.accounts)
        except (OSError, ValueError) as exc:
            parser.error(f"--accounts {args.accounts}: {exc}")
    if args.session_seconds <= 0:
        parser.error("--session-seconds must be positive")
    app = create_app(
        args.channel,
        args.credential,
        args.gateway_jwks,
        args.gateway_issuer,
        auth=args.auth,
        client_id=args.client_id,
        token_lifetime_seconds=args.token_lifetime,
        tickets=tickets,
        accounts=accounts,
        session_seconds=args.session_seconds,
    )
    # The sans-I/O websockets protocol: uvicorn's older one is deprecated in websockets 14+.
    uvicorn.run(app, host=args.host, port=args.port, ws="websockets-sansio", log_level=args.log_level)


if __name__ == "__main__":
    main()
