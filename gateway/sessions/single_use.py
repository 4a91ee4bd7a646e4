"""Single-use tokens (a logout token's or a SET's ``jti``) that count as used only once their effect committed.

A receiver refuses a token it already acted on (OIDC Back-Channel Logout 1.0 §2.6, RFC 8417 §2.2). Marking the
``jti`` before the action runs turns a passing failure into a lost event: the database does not answer, the
gateway says 503, the sender retries the same token as it should (RFC 8935 §2.3, Back-Channel Logout §2.8), and
the retry is refused as a replay with a 400, which the sender takes as final. So the key is only held while the
action runs (a concurrent duplicate gets a 503 and comes back, it never acts twice), released when the action
raises, and kept for the token's whole lifetime once the action returned.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Final, TypeVar

from gateway.errors import ChannelgateError, SessionStoreUnavailable
from gateway.sessions.base import SessionStore, UseState

log = logging.getLogger(__name__)

T = TypeVar("T")

#: How long a claim holds a key while its action runs: longer than an action takes (a deprovisioning waits for
#: every replica's acknowledgement, seconds), short enough that after a crash mid-action the sender's retry is
#: served well inside the token's acceptance window (a logout token's five minutes, a SET's transmitter's
#: ``max_set_age_seconds``).
HOLD_SECONDS: Final = 60


class TokenInProgress(ChannelgateError):
    """Another request is acting on this very token: not a replay (yet), so the sender should try again."""

    status = 503
    code = "token_in_progress"


async def run_once(
    store: SessionStore,
    key: str,
    action: Callable[[], Awaitable[T]],
    *,
    ttl_seconds: int,
    replayed: ChannelgateError,
) -> T:
    """Run ``action`` for the single-use ``key`` and mark the key used for ``ttl_seconds`` only once it returned;
    raise ``replayed`` when an earlier request's action already did, ``TokenInProgress`` while one runs."""
    claim = await store.claim_use(key, HOLD_SECONDS)
    if claim.state is UseState.USED:
        raise replayed
    if claim.state is UseState.IN_PROGRESS:
        raise TokenInProgress("another request is acting on this token right now; send it again in a minute")
    try:
        result = await action()
    except BaseException:
        with contextlib.suppress(SessionStoreUnavailable):  # else the hold lapses by itself
            await store.release_use(claim)
        raise
    try:
        await store.confirm_use(claim, ttl_seconds)
    except SessionStoreUnavailable:
        # The effect committed, so the answer stays a success. Once the hold lapses, a replay inside the token's
        # lifetime could repeat it: the same logout or deprovisioning the sender asked for, nothing else.
        log.warning("could not mark single-use key %s used: the session store is unreachable", key)
    return result
