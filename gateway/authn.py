"""Who is asking: the session behind the request's cookie, or a refusal that says why.

A missing, malformed or unknown cookie is "not signed in" (401); an expired one is audited as an expiry. A store
that cannot be reached raises SessionStoreUnavailable, which the edge renders as 503: never a pass (fail closed).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from starlette.requests import HTTPConnection

from gateway.errors import AuthenticationRequired, SessionExpired
from gateway.scope import RequestScope
from gateway.services import Services
from gateway.sessions.base import Session, SessionState
from gateway.storage.access_log import AccessRecord
from gateway.timeutil import utcnow

#: What our ids look like (base64url of 32 bytes); anything else is rejected before touching the store.
_SESSION_ID = re.compile(r"[A-Za-z0-9_-]{43}")


class DuplicateSessionCookie(AuthenticationRequired):
    """More than one copy of the session cookie. The gateway sets one; another was planted on a narrower path
    or a sibling domain (cookie tossing), and the order a browser sends them in (RFC 6265 §5.4) says nothing
    about which is ours, so neither is believed."""

    code = "duplicate_session_cookie"


def session_cookies(headers: Sequence[tuple[bytes, bytes]], name: str) -> list[str]:
    """Every value of the cookie ``name`` in the ``Cookie`` header(s), in the order sent. A quoted value is not
    unquoted: our ids never are."""
    values: list[str] = []
    raw: bytes
    for key, raw in headers:
        if key == b"cookie":
            for pair in raw.decode("latin-1").split(";"):
                found, equals, text = pair.partition("=")
                if equals and found.strip() == name:
                    values.append(text.strip())
    return values


def session_id_in(headers: Sequence[tuple[bytes, bytes]], name: str) -> str | None:
    """The session id from raw ASGI headers, or None when absent, sent more than once, or not shaped like one of
    ours. Only the gateway's cookie is looked for (consoles behind the gateway may set many cookies on its
    origin)."""
    values = session_cookies(headers, name)
    if len(values) != 1 or not _SESSION_ID.fullmatch(values[0]):
        return None
    return values[0]


async def require_session(connection: HTTPConnection, services: Services, scope: RequestScope) -> Session:
    values = session_cookies(connection.scope["headers"], services.cookies.session_name)
    if len(values) > 1:
        raise DuplicateSessionCookie("Please sign in to continue.")
    if not values or not _SESSION_ID.fullmatch(values[0]):
        raise AuthenticationRequired("Please sign in to continue.")
    session_id = values[0]
    lookup = await services.sessions.lookup(session_id, services.clock())
    if lookup.state is SessionState.VALID and lookup.session is not None:
        # Shortly after a session-store outage, and until the sweep after it completed, a session may be one a
        # restarted Redis brought back: believed only if its agent is still active and no saved logout or kill
        # ended it (gateway/deprovision/revived.py).
        if services.revived.checking() and not await services.revived.believed(lookup.session):
            raise AuthenticationRequired("Please sign in to continue.")
        scope.session = lookup.session
        return lookup.session
    if lookup.state in (SessionState.IDLE_EXPIRED, SessionState.ABSOLUTE_EXPIRED) and lookup.data is not None:
        await services.audit.write(
            AccessRecord(
                time=utcnow(),
                kind="expired",
                request_id=scope.request_id,
                agent_id=lookup.data.agent_id,
                agent_name=lookup.data.user_name,
                source_ip=scope.client_ip,
                reason=lookup.state.value,
            )
        )
        raise SessionExpired("Your session has ended. Please sign in again.")
    raise AuthenticationRequired("Please sign in to continue.")
