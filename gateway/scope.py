"""One typed object carries per-request state (oauth2-proxy's RequestScope), not loose dict keys."""

from __future__ import annotations

import secrets
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
    extra: dict[str, object] = field(default_factory=dict)


def scope_of(connection: HTTPConnection, trusted_proxies: tuple[str, ...]) -> RequestScope:
    """The request's scope, created on first use; the request id is ours, never the client's."""
    existing = getattr(connection.state, "channelgate", None)
    if isinstance(existing, RequestScope):
        return existing
    peer = connection.client.host if connection.client else "0.0.0.0"  # noqa: S104 - an address, not a bind
    created = RequestScope(
        request_id=secrets.token_hex(8),
        client_ip=client_address(peer, connection.headers.raw, trusted_proxies),
        started=time.perf_counter(),
    )
    connection.state.channelgate = created
    return created
