"""One typed object carries per-request state (oauth2-proxy's RequestScope), not loose dict keys."""

from __future__ import annotations

import os
import random
import time
from dataclasses import dataclass, field

from starlette.requests import HTTPConnection

from gateway.proxy.headers import client_address
from gateway.sessions.base import Session
from policies.decision import Decision


@dataclass
class RequestScope:
    request_id: str
    client_ip: str
    started: float
    session: Session | None = None
    decision: Decision | None = None
    channel: str | None = None
    #: Whose personal data the request touches and what it does with it (``gateway.audit.data_access``).
    subject: str | None = None
    action: str | None = None
    extra: dict[str, object] = field(default_factory=dict)


_KEY = "channelgate.scope"
#: Request ids correlate log lines and error pages; they need to be unique, not secret. A generator seeded from
#: the OS once per process avoids a getrandom(2) system call per request (~9 µs in the proxy's profile).
_REQUEST_IDS = random.Random(os.urandom(32))  # noqa: S311 - not a security token


def new_request_id() -> str:
    return f"{_REQUEST_IDS.getrandbits(64):016x}"


def scope_of(connection: HTTPConnection, trusted_proxies: tuple[str, ...]) -> RequestScope:
    """The request's scope, created on first use; the request id is ours, never the client's."""
    asgi = connection.scope
    existing = asgi.get(_KEY)
    if existing is not None:
        return existing  # type: ignore[no-any-return]
    client = asgi.get("client")
    peer = client[0] if client else "0.0.0.0"  # noqa: S104 - an address, not a bind
    created = RequestScope(
        request_id=new_request_id(),
        # Forwarding headers count only from configured proxies; with none, the TCP peer is the client.
        client_ip=client_address(peer, connection.headers.raw, trusted_proxies) if trusted_proxies else peer,
        started=time.perf_counter(),
    )
    asgi[_KEY] = created
    return created
