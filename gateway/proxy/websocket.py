"""WebSocket pass-through, and the registry that lets revocation close an agent's open sockets.

The upstream is connected first (with the injected credential, the assertion and the client's requested
subprotocols); only then is the client accepted, with the subprotocol the upstream chose, so a refused upstream
becomes a refused handshake (403/502 via the ASGI denial-response extension, or close 1008/1011 otherwise).
Frames are relayed both ways unchanged and close codes are propagated (RFC 6455 §7.4).

A session revoked while a console is open must not keep its socket: ``WebSocketRegistry.close_agent`` closes
both sides of every socket of that agent, including sockets still in their handshake, and waits for them;
``close_session`` does the same for the sockets opened under one session (a logout, an expiry).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from multidict import CIMultiDict
from starlette.responses import PlainTextResponse
from starlette.websockets import WebSocket, WebSocketState
from yarl import URL

from gateway.proxy.headers import HOP_BY_HOP, normalise_header_name

#: RFC 6455 §7.4.1 policy violation: the default code when access is revoked.
CLOSE_POLICY_VIOLATION = 1008
CLOSE_GOING_AWAY = 1001
CLOSE_INTERNAL_ERROR = 1011


def sendable_close_code(code: int | None, fallback: int = 1000) -> int:
    """``code`` if it may appear in a Close frame (RFC 6455 §7.4.1-2), else ``fallback``.

    1005, 1006 and 1015 are reserved for reporting and must never be sent."""
    if code is None:
        return fallback
    if code in {1000, 1001, 1002, 1003} or 1007 <= code <= 1014 or 3000 <= code <= 4999:
        return code
    return fallback


def _short_reason(reason: str) -> str:
    """Close reasons are limited to 123 bytes of UTF-8 (RFC 6455 §5.5)."""
    return reason.encode("utf-8")[:123].decode("utf-8", errors="ignore")


@dataclass(eq=False)
class _ProxiedSocket:
    agent_id: str
    #: The storage key of the session it was opened under (``gateway.sessions.base.session_key``), if any.
    session: str | None = None
    revoked: asyncio.Event = field(default_factory=asyncio.Event)
    done: asyncio.Event = field(default_factory=asyncio.Event)
    close_code: int = CLOSE_POLICY_VIOLATION
    close_reason: str = ""
    #: The agent's side once accepted: a revocation closes it at once, from the revoking task (below).
    client: WebSocket | None = None

    def revoke(self, code: int, reason: str) -> None:
        self.close_code = sendable_close_code(code, CLOSE_POLICY_VIOLATION)
        self.close_reason = _short_reason(reason)
        self.revoked.set()


class WebSocketRegistry:
    """Open proxied sockets per agent id, for revocation and metrics. One per process, event-loop bound."""

    def __init__(self) -> None:
        self._sockets: dict[str, set[_ProxiedSocket]] = {}
        self._by_session: dict[str, set[_ProxiedSocket]] = {}

    def _register(self, agent_id: str, session: str | None = None) -> _ProxiedSocket:
        entry = _ProxiedSocket(agent_id, session)
        self._sockets.setdefault(agent_id, set()).add(entry)
        if session is not None:
            self._by_session.setdefault(session, set()).add(entry)
        return entry

    def _unregister(self, entry: _ProxiedSocket) -> None:
        _forget(self._sockets, entry.agent_id, entry)
        if entry.session is not None:
            _forget(self._by_session, entry.session, entry)
        entry.done.set()

    def agents(self) -> dict[str, int]:
        """Agent id → number of open sockets."""
        return {agent: len(sockets) for agent, sockets in self._sockets.items()}

    def count(self) -> int:
        return sum(len(sockets) for sockets in self._sockets.values())

    async def close_agent(
        self,
        agent_id: str,
        code: int = CLOSE_POLICY_VIOLATION,
        reason: str = "access revoked",
        *,
        wait_seconds: float = 5.0,
    ) -> int:
        """Close both sides of every socket of ``agent_id``; return how many. Waits up to ``wait_seconds`` for
        the closes to finish so the caller can report them as done."""
        entries = list(self._sockets.get(agent_id, ()))
        return await self._close(entries, code, reason, wait_seconds)

    async def close_session(
        self,
        session: str,
        code: int = CLOSE_POLICY_VIOLATION,
        reason: str = "session ended",
        *,
        wait_seconds: float = 5.0,
    ) -> int:
        """Close both sides of every socket opened under the session whose storage key is ``session``."""
        entries = list(self._by_session.get(session, ()))
        return await self._close(entries, code, reason, wait_seconds)

    async def close_all(
        self, code: int = CLOSE_GOING_AWAY, reason: str = "gateway shutting down", *, wait_seconds: float = 5.0
    ) -> int:
        entries = [entry for sockets in self._sockets.values() for entry in sockets]
        return await self._close(entries, code, reason, wait_seconds)

    @staticmethod
    async def _close(entries: list[_ProxiedSocket], code: int, reason: str, wait_seconds: float) -> int:
        for entry in entries:
            entry.revoke(code, reason)
        # The agent's side is closed here and now, not by the relay once it has woken up, cancelled its two
        # directions and waited for them: each of those steps waits for a turn of the event loop, and in a storm
        # of deprovisionings, with the loop's turns long, they added ~4 turns to every revoked socket. Sending the
        # close frame from this task is safe: uvicorn writes each frame whole, and a relay direction that sends
        # after it fails and is cancelled. The relay then closes the upstream and skips the closed client side.
        await asyncio.gather(
            *(_close_client(e.client, e.close_code, e.close_reason) for e in entries if e.client is not None)
        )
        if entries:
            waiters = [asyncio.ensure_future(entry.done.wait()) for entry in entries]
            _, pending = await asyncio.wait(waiters, timeout=wait_seconds)
            for waiter in pending:
                waiter.cancel()
        return len(entries)


def _forget(index: dict[str, set[_ProxiedSocket]], key: str, entry: _ProxiedSocket) -> None:
    sockets = index.get(key)
    if sockets is not None:
        sockets.discard(entry)
        if not sockets:
            del index[key]


async def _deny(websocket: WebSocket, status: int, close_code: int, message: str) -> None:
    if "websocket.http.response" in websocket.scope.get("extensions", {}):
        await websocket.send_denial_response(PlainTextResponse(message, status_code=status))
    else:
        await websocket.close(close_code, _short_reason(message))


async def _connect(
    websocket: WebSocket,
    upstream_url: str,
    headers: list[tuple[str, str]],
    session: aiohttp.ClientSession,
    connect_timeout: float,
    max_message_bytes: int,
) -> aiohttp.ClientWebSocketResponse | None:
    """Open the upstream socket, or refuse the client's handshake and return ``None``."""
    protocols = tuple(websocket.scope.get("subprotocols", ()))
    forwarded = CIMultiDict((n, v) for n, v in headers if normalise_header_name(n) not in HOP_BY_HOP)
    try:
        async with asyncio.timeout(connect_timeout):
            return await session.ws_connect(
                URL(upstream_url, encoded=True),
                headers=forwarded,
                protocols=protocols,
                autoclose=False,
                autoping=True,
                heartbeat=30.0,
                max_msg_size=max_message_bytes,
            )
    except aiohttp.WSServerHandshakeError as exc:
        if exc.status in {401, 403}:
            await _deny(websocket, 403, CLOSE_POLICY_VIOLATION, "The channel console refused the connection.")
        else:
            await _deny(websocket, 502, CLOSE_INTERNAL_ERROR, "The channel console refused the WebSocket.")
    except (aiohttp.ClientError, OSError, TimeoutError):
        await _deny(websocket, 502, CLOSE_INTERNAL_ERROR, "The channel console could not be reached.")
    return None


async def _client_to_upstream(
    websocket: WebSocket, upstream: aiohttp.ClientWebSocketResponse, used: Callable[[], None] | None
) -> tuple[int, str]:
    while True:
        message = await websocket.receive()
        if message["type"] == "websocket.disconnect":
            return int(message.get("code", 1000)), str(message.get("reason") or "")
        if used is not None:
            used()
        if message.get("text") is not None:
            await upstream.send_str(message["text"])
        elif message.get("bytes") is not None:
            await upstream.send_bytes(message["bytes"])


async def _upstream_to_client(websocket: WebSocket, upstream: aiohttp.ClientWebSocketResponse) -> tuple[int, str]:
    while True:
        message = await upstream.receive()
        if message.type is aiohttp.WSMsgType.TEXT:
            await websocket.send_text(message.data)
        elif message.type is aiohttp.WSMsgType.BINARY:
            await websocket.send_bytes(message.data)
        elif message.type is aiohttp.WSMsgType.CLOSE:
            return sendable_close_code(message.data, CLOSE_INTERNAL_ERROR), str(message.extra or "")
        elif message.type in {aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR}:
            return CLOSE_INTERNAL_ERROR, "upstream connection lost"


async def _close_client(websocket: WebSocket, code: int, reason: str) -> None:
    if websocket.application_state is WebSocketState.CONNECTED:
        with contextlib.suppress(RuntimeError, OSError):
            await websocket.close(sendable_close_code(code), _short_reason(reason))


async def _close_upstream(upstream: aiohttp.ClientWebSocketResponse, code: int, reason: str) -> None:
    if not upstream.closed:
        with contextlib.suppress(aiohttp.ClientError, OSError, TimeoutError):
            await upstream.close(code=sendable_close_code(code), message=_short_reason(reason).encode())


async def _relay(
    websocket: WebSocket,
    upstream: aiohttp.ClientWebSocketResponse,
    entry: _ProxiedSocket,
    used: Callable[[], None] | None,
) -> None:
    from_client = asyncio.ensure_future(_client_to_upstream(websocket, upstream, used))
    from_upstream = asyncio.ensure_future(_upstream_to_client(websocket, upstream))
    revoked = asyncio.ensure_future(entry.revoked.wait())
    tasks: list[asyncio.Future[Any]] = [from_client, from_upstream, revoked]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        results = await asyncio.gather(*tasks, return_exceptions=True)
    client_result, upstream_result = results[0], results[1]
    if entry.revoked.is_set():
        # Both at once: the upstream's close waits for the console's reply, and the agent's socket must not wait
        # for that round trip (revocation latency counts until the agent's side is closed).
        await asyncio.gather(
            _close_client(websocket, entry.close_code, entry.close_reason),
            _close_upstream(upstream, entry.close_code, entry.close_reason),
        )
    elif isinstance(client_result, tuple):
        # The client closed: pass its code on (1005/1006 are not sendable and become 1000).
        await _close_upstream(upstream, client_result[0], client_result[1])
    elif isinstance(upstream_result, tuple):
        await _close_upstream(upstream, upstream_result[0], upstream_result[1])
        await _close_client(websocket, upstream_result[0], upstream_result[1])
    elif from_client.done() and not from_client.cancelled() and isinstance(client_result, BaseException):
        # Sending upstream failed: the upstream is gone.
        await _close_client(websocket, CLOSE_INTERNAL_ERROR, "upstream connection lost")
        await _close_upstream(upstream, CLOSE_GOING_AWAY, "")
    else:
        # Sending to the client failed: the client is gone.
        await _close_upstream(upstream, CLOSE_GOING_AWAY, "client went away")


async def proxy_websocket(
    websocket: WebSocket,
    upstream_url: str,
    headers: list[tuple[str, str]],
    session_client: aiohttp.ClientSession,
    registry: WebSocketRegistry,
    agent_id: str,
    *,
    connect_timeout: float = 10.0,
    max_message_bytes: int = 4 * 1024 * 1024,
    session: str | None = None,
    used: Callable[[], None] | None = None,
) -> None:
    """Proxy one WebSocket for ``agent_id`` until either side closes or the agent (or ``session``, the storage
    key of the session it was opened under) is revoked.

    ``headers`` are the sanitised request headers with the credential and assertion already added; ``used`` is
    called for each message the client sends (the agent's activity, for the session's idle clock).
    """
    entry = registry._register(agent_id, session)
    try:
        upstream = await _connect(websocket, upstream_url, headers, session_client, connect_timeout, max_message_bytes)
        if upstream is None:
            return
        try:
            if entry.revoked.is_set():
                await _deny(websocket, 403, entry.close_code, "Access was revoked.")
                return
            await websocket.accept(subprotocol=upstream.protocol)
            entry.client = websocket
            await _relay(websocket, upstream, entry, used)
        finally:
            await _close_upstream(upstream, CLOSE_GOING_AWAY, "")
    finally:
        registry._unregister(entry)


__all__: list[str] = [
    "CLOSE_POLICY_VIOLATION",
    "WebSocketRegistry",
    "proxy_websocket",
    "sendable_close_code",
]
