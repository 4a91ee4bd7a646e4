"""uvicorn's HTTP protocol, writing kept forward-auth answers itself: from the parser callback when nothing needs
I/O, else from the request's task once the session is read, without the ASGI application either way.

nginx asks ``/.channelgate/auth`` before every request through it, mostly the same question as before
(gateway/forward_auth_memo.py says when a kept answer still holds). What uvicorn and the application do around
such an answer — a scope, a request cycle with its event, a task, the ASGI messages, header checks on send, the
application's dispatch — was most of the endpoint's CPU per request (docs/benchmarks.md §8: (b3) against (b4)).

So this subclass of uvicorn's own ``HttpToolsProtocol`` (same parser, same connection handling, keep-alive,
pipelining, flow control, timeouts and limits) looks at each request when its headers are complete: a request for
exactly ``/.channelgate/auth`` in nginx's form, without a body, on a keep-alive HTTP/1.1 connection with nothing
else in flight, is offered to ``ForwardAuthMemo.answer_now``:

* with the session and the credential held in this process (``[sessions] local_cache_seconds``, or the embedded
  store), the answer is written at once, with the bytes uvicorn would have sent for the ASGI path's answer;
* when the session must be read (Redis alone) or the credential prepared, uvicorn builds its request cycle as
  usual, but the cycle's task asks ``ForwardAuthMemo.answer_later`` and writes the answer as uvicorn's ``send``
  would; if the kept answer no longer holds (or the read failed), the same task runs the ASGI application on the
  same cycle, which decides on the full path and fails closed on its own.

Anything else — every other path, a miss, a write buffer over its limit — goes on exactly as in uvicorn.

It reads uvicorn's per-connection state (``url``, ``headers``, ``cycle``, ``pipeline``, ``flow``,
``on_response_complete``, ``_start_asgi_task``) and its request cycle's (``response_started``,
``response_complete``, ``disconnected``, ``keep_alive``, ``on_response``), which are not a public API:
pyproject.toml pins uvicorn's minor version, and tests/integration/test_forward_auth_protocol.py runs the listener
through a raw socket, tests/e2e/test_forward_auth_nginx.py through real nginx.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

from starlette.applications import Starlette
from starlette.types import Scope
from uvicorn._types import ASGI3Application
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol, RequestResponseCycle

from gateway.app import PROXIED_METHODS
from gateway.forward_auth import MOUNT, Asked, ask, caller_allowed, memo_missed
from gateway.forward_auth_memo import Later

if TYPE_CHECKING:
    from gateway.services import Services

log = logging.getLogger(__name__)

_MOUNT_BYTES = MOUNT.encode()
#: A request carrying a body takes uvicorn's path (nginx's sample sends none: ``proxy_pass_request_body off``).
_BODY_HEADERS = frozenset({b"content-length", b"transfer-encoding"})


class Failures:
    """Logs the first failure of the protocol's own answer (from the parser callback, or after the read) with its
    traceback, then at most one line a minute with the count: a failure that repeats does so at the proxy's
    request rate."""

    def __init__(self, every: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        self._every = every
        self._clock = clock
        self._next = 0.0
        self._since = 0

    def log(self) -> None:
        self._since += 1
        now = self._clock()
        if now < self._next:
            return
        self._next = now + self._every
        log.error(
            "forward-auth: the protocol's own answer failed %d time(s); those requests took the full path",
            self._since,
            exc_info=True,
        )
        self._since = 0


_failures = Failures()


class _Answered:
    """Stands for a request answered here, where uvicorn keeps its request cycle: complete, nothing to wait for."""

    response_complete = True
    disconnected = False
    keep_alive = True

    class _Event:
        def set(self) -> None:
            return None

    message_event = _Event()


_ANSWERED: Any = _Answered()


class ForwardAuthProtocol(HttpToolsProtocol):
    """``HttpToolsProtocol`` with kept forward-auth answers written from ``on_headers_complete``, or by the
    request's task once the session is read, without the ASGI application."""

    #: Set by ``_answer_now`` for the request cycle uvicorn starts next, inside ``on_headers_complete`` only: the
    #: question whose kept answer may hold once the session is read (``ForwardAuthMemo.answer_later``).
    _later: tuple[Asked, bool, Later] | None = None

    @staticmethod
    def services_of() -> Services | None:
        """The gateway's services once its lifespan has built them (``forward_auth_protocol`` says where)."""
        return None

    def on_headers_complete(self) -> None:
        # A request is under way: no keep-alive timer may run. uvicorn stops it when data arrives, before parsing;
        # an answer written here restarts it (on_response_complete) while the same data may hold another request.
        self._unset_keepalive_if_required()
        if self.url == _MOUNT_BYTES and self._answer_now():
            return
        try:
            super().on_headers_complete()  # which starts the request's task: _start_asgi_task
        finally:
            self._later = None

    def _start_asgi_task(self, cycle: RequestResponseCycle, app: ASGI3Application) -> None:
        later = self._later
        if later is None or cycle is not self.cycle or app is not self.app:  # only the request just parsed, as usual
            super()._start_asgi_task(cycle, app)
            return
        self._later = None
        task = self.loop.create_task(self._answer_later(cycle, app, *later))
        task.add_done_callback(self.tasks.discard)
        self.tasks.add(task)  # as uvicorn's own: waited for at shutdown

    def _answer_now(self) -> bool:
        services = self.services_of()
        cycle = self.cycle
        parser = self.parser
        if (
            services is None
            or self.limit_concurrency is not None  # uvicorn's 503 past its limit, and a root path it prepends,
            or self.root_path  # are for its own path to apply (`channelgate serve` sets neither)
            or self.config.reset_contextvars  # its tasks' context, likewise
            or (cycle is not None and not cycle.response_complete)
            or self.pipeline
            or self.flow.write_paused
            or self.expect_100_continue
            or parser.should_upgrade()
            or not parser.should_keep_alive()
            or parser.get_http_version() != "1.1"
        ):
            return False
        method = parser.get_method().decode("ascii")
        if method not in PROXIED_METHODS:  # the router answers those (405), as gateway/app.py sends them there
            return False
        headers = self.headers
        for name, _ in headers:
            if name in _BODY_HEADERS:
                return False
        # What ask() reads of a scope, no more.
        scope: dict[str, Any] = {"raw_path": _MOUNT_BYTES, "headers": headers, "client": self.client, "method": method}
        try:
            asked = ask(scope, services)
            if asked is None:
                return False
            allowed = caller_allowed(services, asked.peer, asked.secret)
            sent = services.forward_auth_memo.answer_now(asked, headers, services, allowed)
        except Exception:  # the ASGI path decides instead, and fails closed on its own
            _failures.log()
            return False
        if sent is None:
            return False
        if isinstance(sent, Later):
            self._later = (asked, allowed, sent)
            return False
        self.transport.write(self._response(sent, keep_alive=True))
        self.cycle = _ANSWERED
        self.on_response_complete()
        return True

    async def _answer_later(
        self, cycle: RequestResponseCycle, app: ASGI3Application, asked: Asked, allowed: bool, later: Later
    ) -> None:
        """The request's task: the kept answer once the session is read, written as uvicorn's ``send`` would;
        else the ASGI application decides, in this same task, the memo known to have missed."""
        services = self.services_of()
        assert services is not None  # _answer_now had them
        memo = services.forward_auth_memo
        scope = cast(Scope, cycle.scope)
        try:
            try:
                sent = await memo.answer_later(asked, scope["headers"], services, allowed, later.session)
            except Exception:
                _failures.log()
                sent = None
            if sent is not None:
                memo.awaited_hits += 1
                await self._send(cycle, sent)
                cycle.on_response = _nothing  # as run_asgi leaves it
                return
        except BaseException as exc:  # cancelled (uvicorn's graceful shutdown timed out), or a bug: as run_asgi does
            log.error("forward-auth: the answer after the session's read was not written", exc_info=exc)
            if not cycle.response_started and not cycle.disconnected:
                await cycle.send_500_response()
            else:
                self.transport.close()
            cycle.on_response = _nothing
            return
        memo_missed(scope, asked)
        await cycle.run_asgi(app)  # which completes the cycle, or closes the connection, whatever happens

    async def _send(self, cycle: RequestResponseCycle, sent: list[tuple[bytes, bytes]]) -> None:
        """Write the 200 with ``sent`` and complete ``cycle``, as uvicorn's ``send`` does for the ASGI path."""
        if self.flow.write_paused and not cycle.disconnected:
            await self.flow.drain()
        if cycle.disconnected:  # the client left while the session was read: nothing to write, as uvicorn
            return
        cycle.response_started = True
        self.transport.write(self._response(sent, keep_alive=cycle.keep_alive))
        cycle.response_complete = True
        cycle.message_event.set()
        if not cycle.keep_alive:  # the server is shutting down (uvicorn's shutdown() cleared it)
            self.transport.close()
        cycle.on_response()

    def _response(self, sent: list[tuple[bytes, bytes]], *, keep_alive: bool) -> bytes:
        """A 200 with ``sent``, as uvicorn's ``send`` writes it (its default headers first)."""
        content = [STATUS_LINE[200]]
        for name, value in (*self.server_state.default_headers, *sent):
            content += (name, b": ", value, b"\r\n")
        if not keep_alive:
            content.append(b"connection: close\r\n")
        content.append(b"\r\n")
        return b"".join(content)


def _nothing() -> None:
    return None


def forward_auth_protocol(app: Starlette) -> type[ForwardAuthProtocol]:
    """The protocol class for ``uvicorn.run(app, http=...)``: ``app.state.services``, once its lifespan built them
    (they stay for the process's life)."""
    built: list[Services] = []

    def services_of() -> Services | None:
        if not built:
            services = getattr(app.state, "services", None)
            if services is None:
                return None
            built.append(services)
        return built[0]

    return type("ForwardAuthProtocol", (ForwardAuthProtocol,), {"services_of": staticmethod(services_of)})
