"""uvicorn's HTTP protocol, answering a kept forward-auth answer from the parser callback when nothing needs I/O.

nginx asks ``/.channelgate/auth`` before every request through it. For the same question as before, with the
session and the channel credential held in this process (``[sessions] local_cache_seconds``, or the in-process
store; gateway/forward_auth_memo.py says when a kept answer still holds), everything the answer needs is in
memory; what uvicorn does around it — a scope, a request cycle with its event, a task, the ASGI messages, header
checks on send — was then most of the endpoint's CPU per request (docs/benchmarks.md §8: (b3) against (b4)).

So this subclass of uvicorn's own ``HttpToolsProtocol`` (same parser, same connection handling, keep-alive,
pipelining, flow control, timeouts and limits) looks at each request when its headers are complete: a request for
exactly ``/.channelgate/auth`` in nginx's form, without a body, on a keep-alive HTTP/1.1 connection with nothing
else in flight, is offered to ``ForwardAuthMemo.answer_now``; when that gives an answer, it is written at once,
with the same bytes uvicorn would have sent for the ASGI path's answer. Anything else — every other path, a miss,
a session or credential that must be read, a write buffer over its limit — goes on exactly as in uvicorn.

It reads uvicorn's per-connection state (``url``, ``headers``, ``cycle``, ``pipeline``, ``flow``,
``on_response_complete``), which is not a public API: pyproject.toml pins uvicorn's minor version, and
tests/integration/test_forward_auth_protocol.py runs the listener through real nginx and a raw socket.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from starlette.applications import Starlette
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from gateway.app import PROXIED_METHODS
from gateway.forward_auth import MOUNT, ask, caller_allowed

if TYPE_CHECKING:
    from gateway.services import Services

log = logging.getLogger(__name__)

_MOUNT_BYTES = MOUNT.encode()
#: A request carrying a body takes uvicorn's path (nginx's sample sends none: ``proxy_pass_request_body off``).
_BODY_HEADERS = frozenset({b"content-length", b"transfer-encoding"})


class Failures:
    """Logs the first failure of the in-callback answer with its traceback, then at most one line a minute with
    the count: a failure that repeats does so at the proxy's request rate."""

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
            "forward-auth: the in-callback answer failed %d time(s); those requests took the full path",
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
    """``HttpToolsProtocol`` with kept forward-auth answers written from ``on_headers_complete``."""

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
        super().on_headers_complete()

    def _answer_now(self) -> bool:
        services = self.services_of()
        cycle = self.cycle
        parser = self.parser
        if (
            services is None
            or self.limit_concurrency is not None  # uvicorn's 503 past its limit, and a root path it prepends,
            or self.root_path  # are for its own path to apply (`channelgate serve` sets neither)
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
        content = [STATUS_LINE[200]]
        for name, value in (*self.server_state.default_headers, *sent):
            content += (name, b": ", value, b"\r\n")
        content.append(b"\r\n")
        self.transport.write(b"".join(content))
        self.cycle = _ANSWERED
        self.on_response_complete()
        return True


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
