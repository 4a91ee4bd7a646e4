"""Forward one HTTP request to a channel console and stream the answer back.

One ``aiohttp.ClientSession`` per process: httpx's pool collapses under proxy concurrency (encode/httpx#3215),
aiohttp's does not. The session follows no redirects (a 3xx belongs to the browser), keeps no cookie jar (the
cookies of one agent must never be replayed for another), does not decompress (bytes pass through with their
``Content-Encoding``) and adds no ``Accept-Encoding``/``User-Agent`` of its own.

Bodies are streamed: the request body upstream as it arrives, the response body chunk by chunk (Server-Sent
Events flush per event). Only a request body announced at no more than ``REPLAY_BODY_BYTES`` is read whole first
when the caller may resend the request (``resend``: the connector's one refresh after a 401, the httpx ``Auth``
flow shape), since a streamed body cannot be sent twice. The upstream connection is released when the body ends
and closed when the client goes away early, so a disconnect never leaks a pooled connection.
"""

from __future__ import annotations

import functools
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Protocol
from urllib.parse import urlsplit

import aiohttp
from multidict import CIMultiDict
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response, StreamingResponse
from starlette.types import Receive, Scope, Send
from yarl import URL

from gateway.errors import UpstreamError
from gateway.proxy.console_scope import ConsoleScope
from gateway.proxy.headers import sanitise_response_headers

#: Headers aiohttp would otherwise invent; the client's own copies (if any) are forwarded instead.
_SKIP_AUTO_HEADERS = ("User-Agent", "Accept", "Accept-Encoding", "Content-Type")


class UpstreamTimeout(UpstreamError):
    """The channel console did not answer (connect or first byte) within the route's timeout."""

    status = 504
    code = "upstream_timeout"


@dataclass(slots=True)
class ForwardStats:
    """What the access log needs about one forwarded request. Filled in as the exchange progresses."""

    status: int = 0
    #: Request body bytes sent upstream.
    bytes_in: int = 0
    #: Response body bytes relayed to the client.
    bytes_out: int = 0
    #: Seconds from sending the request until the upstream's status line and headers arrived.
    upstream_latency: float = 0.0
    #: Seconds from sending the request until the response body ended (or was abandoned).
    duration: float = 0.0
    #: True when the whole response body reached the client.
    completed: bool = False
    #: Short, credential-free reason when the body did not complete (``client_disconnected``, ...).
    error: str | None = None


StatsCallback = Callable[[ForwardStats], Awaitable[None]]
#: Sees every upstream answer's status and (sanitised) headers before the client does, and may edit the headers
#: in place: a cookie-jar connector takes the console's ``Set-Cookie`` out here.
ResponseHook = Callable[[int, list[tuple[str, str]]], Awaitable[None]]


class Resend(Protocol):
    """One request's chance to be sent again with a refreshed credential (``Connector.on_upstream_unauthorized``)."""

    def wanted(self, status: int, headers: Mapping[str, str]) -> bool:
        """Whether this answer means "the credential was refused" (a 401, a redirect to a login form)."""
        ...

    async def fresh_headers(self) -> list[tuple[str, str]] | None:
        """The headers to send the request again with, or None to pass the refusal on to the client."""
        ...

    def not_replayable(self) -> None:
        """The refusal is passed on because the request body was streamed and cannot be sent twice."""
        ...


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname}:{parts.port or ''}".rstrip(":")


class ProxyResponse(StreamingResponse):
    """A ``StreamingResponse`` relaying an upstream body; releases the upstream connection whatever happens."""

    def __init__(
        self,
        upstream: aiohttp.ClientResponse,
        headers: list[tuple[str, str]],
        stats: ForwardStats,
        started: float,
        on_complete: StatsCallback | None,
    ) -> None:
        super().__init__(self._relay(), status_code=upstream.status)
        self.raw_headers = [(n.encode("latin-1"), v.encode("latin-1")) for n, v in headers]
        self.stats = stats
        self._upstream = upstream
        self._started = started
        self._on_complete = on_complete

    async def _relay(self) -> AsyncIterator[bytes]:
        async for chunk in self._upstream.content.iter_any():
            self.stats.bytes_out += len(chunk)
            yield chunk
        self.stats.completed = True

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        except (aiohttp.ClientError, TimeoutError) as exc:
            self.stats.error = self.stats.error or "upstream_failed_mid_body"
            # Headers are already sent: re-raising makes the server abort the connection, so the client sees
            # a truncated body instead of a well-formed but incomplete one.
            raise UpstreamError(
                "The channel console stopped in the middle of its response.", detail=type(exc).__name__
            ) from None
        finally:
            self._finish()
            if self._on_complete is not None:
                await self._on_complete(self.stats)

    def abort(self, reason: str = "revoked") -> None:
        """Cut the relay now (the agent's access was revoked): closing the upstream connection ends the body
        mid-stream, so the client's connection is aborted rather than finished cleanly."""
        if not self.stats.completed:
            self.stats.error = reason
            self._upstream.close()

    def _finish(self) -> None:
        self.stats.duration = time.monotonic() - self._started
        if self.stats.completed:
            self._upstream.release()
        else:
            self.stats.error = self.stats.error or "client_disconnected"
            self._upstream.close()


#: A request body announced at most this large is read whole before it is sent when a refused request may be
#: resent; a larger or chunked one is streamed, and its refusal goes back to the client.
REPLAY_BODY_BYTES = 64 * 1024

#: Responses that announce at most this many bytes are read whole and sent as one body: no streaming task group
#: per response (Starlette's StreamingResponse listens for disconnects in a task group), which halves the cost
#: of the small JSON/HTML answers consoles mostly send. Anything larger, or without Content-Length (SSE,
#: chunked downloads), is streamed.
SMALL_BODY_BYTES = 64 * 1024


class BufferedProxyResponse(Response):
    """A small upstream answer, read whole; already complete when returned (nothing left to abort)."""

    def __init__(self, body: bytes, status: int, headers: list[tuple[str, str]], stats: ForwardStats) -> None:
        super().__init__(body, status_code=status)
        self.raw_headers = [(n.encode("latin-1"), v.encode("latin-1")) for n, v in headers]
        self.stats = stats

    def abort(self, reason: str = "revoked") -> None:
        """Nothing to cut: the body was complete before the response started."""


class UpstreamClient:
    """Owns the process's upstream connection pools. ``start()`` at application start-up, ``close()`` at
    shutdown (or use ``async with``).

    WebSockets have a session of their own, without a connection limit: an open socket holds its upstream
    connection for as long as the agent keeps the console open, so in the HTTP pool 128 open sockets to one
    console would take every connection ``limit_per_host`` allows and stall that console's HTTP requests (and
    further sockets) until the route's timeout. Each relayed socket already holds the client's own connection,
    so the sockets a replica can hold are bounded where its client connections are.
    """

    def __init__(
        self,
        *,
        limit: int = 512,
        limit_per_host: int = 128,
        keepalive_seconds: float = 30.0,
        max_response_header_bytes: int = 16384,
    ) -> None:
        self._limit = limit
        self._limit_per_host = limit_per_host
        self._keepalive = keepalive_seconds
        self._max_field_size = max_response_header_bytes
        self._session: aiohttp.ClientSession | None = None
        self._websockets: aiohttp.ClientSession | None = None

    def _new_session(self, connector: aiohttp.TCPConnector) -> aiohttp.ClientSession:
        return aiohttp.ClientSession(
            connector=connector,
            cookie_jar=aiohttp.DummyCookieJar(),
            auto_decompress=False,
            trust_env=False,
            skip_auto_headers=_SKIP_AUTO_HEADERS,
            requote_redirect_url=False,
            max_field_size=self._max_field_size,
            timeout=aiohttp.ClientTimeout(total=None),
        )

    async def start(self) -> None:
        if self._session is not None:
            return
        self._session = self._new_session(
            aiohttp.TCPConnector(
                limit=self._limit,
                limit_per_host=self._limit_per_host,
                keepalive_timeout=self._keepalive,
                ttl_dns_cache=60,
            )
        )
        self._websockets = self._new_session(aiohttp.TCPConnector(limit=0, ttl_dns_cache=60))

    async def close(self) -> None:
        sessions, self._session, self._websockets = (self._session, self._websockets), None, None
        for session in sessions:
            if session is not None:
                await session.close()

    async def __aenter__(self) -> UpstreamClient:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    @property
    def session(self) -> aiohttp.ClientSession:
        """The shared session of HTTP requests."""
        if self._session is None:
            raise RuntimeError("UpstreamClient.start() has not been called")
        return self._session

    @property
    def websocket_session(self) -> aiohttp.ClientSession:
        """The session the WebSocket proxy connects through (no connection limit; see the class)."""
        if self._websockets is None:
            raise RuntimeError("UpstreamClient.start() has not been called")
        return self._websockets

    async def forward(
        self,
        request: Request,
        upstream_url: str,
        headers: list[tuple[str, str]],
        timeout: float,  # noqa: ASYNC109 - bounds each connect/read gap, not the whole (streamed) exchange
        *,
        gateway_cookie_names: tuple[str, ...] = (),
        console: ConsoleScope | None = None,
        on_complete: StatsCallback | None = None,
        on_response: ResponseHook | None = None,
        resend: Resend | None = None,
    ) -> ProxyResponse | BufferedProxyResponse:
        """Send ``request`` to ``upstream_url`` with ``headers`` (already sanitised and injected) and return a
        streaming response (or, for a small body of known length, the whole body). ``timeout`` bounds the
        connect and every read gap, including the wait for headers. ``console`` keeps the answer's cookies and
        redirects under the route's prefix (``headers.ConsoleScope``).

        ``on_response`` sees each upstream answer's headers first. When ``resend`` wants it and the body can be
        sent again (none, or read whole), a refused request is sent once more with ``resend``'s fresh headers;
        the refused answer never reaches the client.

        Raises ``UpstreamTimeout`` (504) or ``UpstreamError`` (502); messages name the failure, never a header,
        a credential or the query string. ``ClientDisconnect`` propagates if the client leaves mid-upload.
        """
        stats = ForwardStats()
        body_state = {"disconnected": False}
        data: bytes | AsyncIterator[bytes] | None = None
        replayable = True
        if _has_body(request):
            if resend is not None and _announced_length(request) <= REPLAY_BODY_BYTES:
                data = await request.body()
                stats.bytes_in = len(data)
            else:
                data, replayable = self._request_body(request, stats, body_state), False
        started = time.monotonic()
        upstream, response_headers = await self._exchange(
            request.method, upstream_url, headers, data, timeout, body_state, gateway_cookie_names, console, on_response
        )
        if resend is not None and resend.wanted(upstream.status, upstream.headers):
            fresh = await _fresh_headers(resend, upstream) if replayable else None
            if not replayable:
                resend.not_replayable()
            if fresh is not None:
                await _discard(upstream)
                upstream, response_headers = await self._exchange(
                    request.method,
                    upstream_url,
                    fresh,
                    data,
                    timeout,
                    body_state,
                    gateway_cookie_names,
                    console,
                    on_response,
                )
        stats.status = upstream.status
        stats.upstream_latency = time.monotonic() - started
        length = upstream.content_length
        if length is not None and length <= SMALL_BODY_BYTES:
            try:
                body = await upstream.read()
            except (aiohttp.ClientError, TimeoutError) as exc:
                upstream.close()
                raise UpstreamError(
                    "The channel console stopped in the middle of its response.", detail=type(exc).__name__
                ) from None
            upstream.release()
            stats.bytes_out = len(body)
            stats.completed = True
            stats.duration = time.monotonic() - started
            if on_complete is not None:
                await on_complete(stats)
            return BufferedProxyResponse(body, upstream.status, response_headers, stats)
        return ProxyResponse(upstream, response_headers, stats, started, on_complete)

    async def _exchange(
        self,
        method: str,
        upstream_url: str,
        headers: list[tuple[str, str]],
        data: bytes | AsyncIterator[bytes] | None,
        timeout: float,  # noqa: ASYNC109 - bounds each connect/read gap, as in ``forward``
        body_state: dict[str, bool],
        gateway_cookie_names: tuple[str, ...],
        console: ConsoleScope | None,
        on_response: ResponseHook | None,
    ) -> tuple[aiohttp.ClientResponse, list[tuple[str, str]]]:
        """One request/answer with the upstream: the answer's status line and its headers, sanitised and shown to
        ``on_response``; the body is not read yet."""
        try:
            upstream = await self.session.request(
                method,
                URL(upstream_url, encoded=True),
                headers=CIMultiDict(headers),
                data=data,
                allow_redirects=False,
                timeout=_client_timeout(timeout),
            )
        except (TimeoutError, aiohttp.ServerTimeoutError) as exc:
            raise UpstreamTimeout(
                f"The channel console did not answer within {timeout:g} seconds.",
                detail=f"{type(exc).__name__} from {_origin(upstream_url)}",
            ) from None
        except (aiohttp.ClientError, OSError) as exc:
            if body_state["disconnected"]:
                raise ClientDisconnect() from None
            raise UpstreamError(
                "The channel console could not be reached.",
                detail=f"{type(exc).__name__} from {_origin(upstream_url)}",
            ) from None
        response_headers = sanitise_response_headers(
            ((k.decode("latin-1"), v.decode("latin-1")) for k, v in upstream.raw_headers),
            gateway_cookie_names=gateway_cookie_names,
            console=console,
            request_path=urlsplit(upstream_url).path,
        )
        if on_response is not None:
            try:
                await on_response(upstream.status, response_headers)
            except BaseException:
                upstream.close()
                raise
        return upstream, response_headers

    @staticmethod
    async def _request_body(request: Request, stats: ForwardStats, state: dict[str, bool]) -> AsyncIterator[bytes]:
        try:
            async for chunk in request.stream():
                if chunk:
                    stats.bytes_in += len(chunk)
                    yield chunk
        except ClientDisconnect:
            state["disconnected"] = True
            raise


@functools.lru_cache(maxsize=64)
def _client_timeout(seconds: float) -> aiohttp.ClientTimeout:
    """One (immutable) timeout per route setting, not one per request."""
    return aiohttp.ClientTimeout(total=None, connect=seconds, sock_connect=seconds, sock_read=seconds)


async def _fresh_headers(resend: Resend, refused: aiohttp.ClientResponse) -> list[tuple[str, str]] | None:
    try:
        return await resend.fresh_headers()
    except BaseException:
        refused.close()
        raise


async def _discard(refused: aiohttp.ClientResponse) -> None:
    """Drop a refused answer: a small body is read so its connection goes back to the pool, a large one closed."""
    length = refused.content_length
    if length is None or length > SMALL_BODY_BYTES:
        refused.close()
        return
    try:
        await refused.read()
    except (aiohttp.ClientError, TimeoutError):
        refused.close()
        return
    refused.release()


def _announced_length(request: Request) -> int:
    """The request's ``Content-Length``; unbounded when chunked (RFC 9112 §6.3: Transfer-Encoding wins) or
    not a number."""
    length = request.headers.get("content-length", "").strip()
    if "transfer-encoding" in request.headers or not length.isdigit():
        return REPLAY_BODY_BYTES + 1
    return int(length)


def _has_body(request: Request) -> bool:
    """RFC 9112 §6.3: a request has a body only with Transfer-Encoding or a non-zero Content-Length. Sending an
    empty chunked body for a GET makes some servers wait for a body or reject the request."""
    if "transfer-encoding" in request.headers:
        return True
    length = request.headers.get("content-length", "0").strip()
    return length != "0" and length != ""


__all__ = [
    "REPLAY_BODY_BYTES",
    "ForwardStats",
    "ProxyResponse",
    "Resend",
    "ResponseHook",
    "StatsCallback",
    "UpstreamClient",
    "UpstreamTimeout",
]
