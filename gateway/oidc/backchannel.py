"""OIDC Back-Channel Logout 1.0: the provider tells the gateway, server to server, that a user's session ended.

``POST /.channelgate/backchannel-logout`` with the form field ``logout_token`` (§2.5). The token is validated as
§2.6 requires: the signature with the provider's keys and the ID-token algorithm allowlist; ``iss`` exactly the
configured issuer; ``aud`` our client id and no one else; ``iat`` recent; ``events`` holding the back-channel
logout event; ``sub`` or ``sid``; no ``nonce`` (so an ID token can never pass as a logout token); ``typ``, when
present, ``logout+jwt`` (§2.4, RFC 8725 §3.11); and a ``jti`` not acted on before by any replica (a replay is
refused). Then ``sub`` and ``sid`` end the agent's sessions of that IdP session, ``sub`` alone every session of
the agent, and ``sid`` alone (§2.4: a token carries either, or both) the sessions of that IdP session, found
through the session store's index of them (``SessionStore.sessions_of_idp_session``) and ended agent by agent as
with ``sub`` (normally one agent: an IdP session is one user's). ``sub`` and a ``sid`` from which none of the
subject's sessions here came end nothing, but that end is saved all the same (``SessionEndings.end_unseen``): a
sign-in of that ``sid`` still on its way from the provider — the agent's first here in that IdP session — is then
refused when it reaches the callback (gateway/oidc/routes.py); so is any sign-in of the agent on its way when
``sub`` comes alone, whether or not the agent has a session here yet. The ``jti`` counts as used only once that
succeeded (``gateway/sessions/single_use.py``): a provider retrying after a 503 is served, not refused as a replay.

This is a logout, not a deprovisioning: the agent stays enabled and may sign in again. What it ended is written to
the database before the answer (``SessionEndings.end_sessions``, gateway/deprovision/endings.py), so a restarted
Redis that brings the sessions back has them ended again; when that write fails the answer is a 503 (the sessions
are ended all the same, the write retried by the replica), and a ``sid`` naming several agents has every agent's
sessions ended before that one write. The provider's resend of the token then finds no session of that ``sid`` left
and is answered 200 when an end of it is saved, or kept to be, within a token's lifetime. The answer is 200 with
``Cache-Control: no-store``, 400 with an OAuth error body (§2.8), or 503 when the database or the session store
does not answer (the same token may be sent again); every answer leaves an access-log record. A ``sid`` alone that
matches no live session is a 400 (nothing was logged out here, §2.8, and no agent is named to save its end for),
its ``jti`` left unused.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Final
from urllib.parse import parse_qs

from joserfc import jwt
from joserfc.errors import JoseError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from gateway.errors import BadRequest, ChannelgateError
from gateway.scope import scope_of
from gateway.services import Services
from gateway.sessions.single_use import run_once
from gateway.small_bodies import read_small_body
from gateway.storage.access_log import AccessRecord
from gateway.timeutil import utcnow

LOGOUT_EVENT: Final = "http://schemas.openid.net/event/backchannel-logout"
#: Oldest ``iat`` accepted (seconds). A ``jti`` is remembered a little longer than this, so a token old enough
#: to be forgotten is refused by its age instead.
MAX_AGE_SECONDS: Final = 300
LEEWAY_SECONDS: Final = 60
#: Largest request body read; a logout token is a few hundred bytes.
MAX_BODY_BYTES: Final = 16 * 1024


class InvalidLogoutToken(BadRequest):
    """§2.8: the logout token or request is not valid; the provider gets ``invalid_request``."""

    code = "invalid_request"


@dataclass(frozen=True, slots=True)
class LogoutRequest:
    issuer: str
    jti: str
    subject: str | None
    session_id: str | None


def logout_request(token: jwt.Token, *, issuer: str, client_id: str, now: float) -> LogoutRequest:
    """The checks of §2.6 steps 3-7 on a token whose signature is already verified; raises InvalidLogoutToken."""
    header, claims = token.header, token.claims
    typ = header.get("typ")
    if typ is not None and str(typ).lower() not in ("logout+jwt", "application/logout+jwt"):
        raise InvalidLogoutToken(f"the token's typ is {typ!r}, not logout+jwt")
    if header.get("crit"):
        raise InvalidLogoutToken("the token uses critical header extensions")
    if claims.get("iss") != issuer:
        raise InvalidLogoutToken("the token was not issued by the configured provider")
    audience = claims.get("aud")
    if audience != client_id and audience != [client_id]:
        raise InvalidLogoutToken("the token is not addressed to this gateway alone")
    iat = claims.get("iat")
    if not isinstance(iat, int | float) or isinstance(iat, bool):
        raise InvalidLogoutToken("the token has no iat")
    if iat > now + LEEWAY_SECONDS or iat < now - MAX_AGE_SECONDS:
        raise InvalidLogoutToken(f"the token's iat is outside the last {MAX_AGE_SECONDS} seconds")
    exp = claims.get("exp")
    if exp is not None and (not isinstance(exp, int | float) or exp < now - LEEWAY_SECONDS):
        raise InvalidLogoutToken("the token has expired")
    events = claims.get("events")
    if not isinstance(events, dict) or not isinstance(events.get(LOGOUT_EVENT), dict):
        raise InvalidLogoutToken(f"the token's events claim has no {LOGOUT_EVENT} member")
    if "nonce" in claims:
        raise InvalidLogoutToken("the token has a nonce: an ID token is not a logout token")
    jti, subject, session_id = claims.get("jti"), claims.get("sub"), claims.get("sid")
    if not isinstance(jti, str) or not jti:
        raise InvalidLogoutToken("the token has no jti")
    if (subject is not None and not isinstance(subject, str)) or (
        session_id is not None and not isinstance(session_id, str)
    ):
        raise InvalidLogoutToken("the token's sub and sid must be strings")
    if subject == "":
        raise InvalidLogoutToken("the token's sub is empty")
    if not subject and not session_id:
        raise InvalidLogoutToken("the token has neither sub nor sid")
    return LogoutRequest(issuer, jti, subject, session_id or None)


async def _logout_token(request: Request) -> str:
    body = await read_small_body(
        request, expected_type="application/x-www-form-urlencoded", max_bytes=MAX_BODY_BYTES, refuse=InvalidLogoutToken
    )
    values = parse_qs(body.decode("latin-1"), keep_blank_values=True).get("logout_token", [])
    if len(values) != 1 or not values[0]:
        raise InvalidLogoutToken("the request must carry exactly one logout_token")
    return values[0]


async def _apply(services: Services, logout: LogoutRequest) -> dict[str, Any]:
    if logout.subject is None:
        return await _apply_by_sid(services, logout)
    agent = await services.agents.find_by_oidc(logout.issuer, logout.subject)
    if agent is None:
        raise InvalidLogoutToken("no agent signed in with this subject")
    endings = services.killer.endings
    ended = await endings.end_sessions(agent.id, logout.session_id)
    if ended is None:
        assert logout.session_id is not None  # a logout of every session always ends (and broadcasts)
        done = {"agent_id": agent.id, "agent_name": agent.user_name, "sessions": 0, "sid": logout.session_id}
        if await _ended_already(services, logout.session_id, agent.id):
            return done
        # No session here came from that sid, yet: a sign-in of it may still be on its way from the provider
        # (the agent's first here in that IdP session). Its end is saved, so that sign-in is refused when it lands.
        return done | {"sign_ins_in_flight_refused": await endings.end_unseen(agent.id, logout.session_id)}
    if not ended.count and logout.session_id is None:
        # No session of the agent here, yet: its first sign-in may be on its way from the provider. Likewise saved.
        return {"agent_id": agent.id, "agent_name": agent.user_name, "sessions": 0,
                "sign_ins_in_flight_refused": await endings.end_unseen(agent.id)}  # fmt: skip
    return {
        "agent_id": agent.id,
        "agent_name": agent.user_name,
        "sessions": ended.count,
        "sid": logout.session_id,
        "replicas_confirmed": sorted(ended.confirmed),
        "replicas_missing": sorted(ended.missing),
    }


async def _apply_by_sid(services: Services, logout: LogoutRequest) -> dict[str, Any]:
    """§2.4 ``sid`` without ``sub``: end every session of that IdP session, on every replica, agent by agent
    through the same ``end_sessions`` as a token that names the subject too."""
    assert logout.session_id is not None
    found = await services.sessions.sessions_of_idp_session(logout.issuer, logout.session_id, services.clock())
    agents = {session.data.agent_id: session.data.user_name for session in found}
    count, confirmed, missing = 0, set[str](), set[str]()
    # Every agent's sessions are ended before the one write that saves them: a failed write (503) leaves none valid.
    # An agent missing from the result had none left (a logout, a timeout meanwhile).
    for ended in (await services.killer.endings.end_sessions_of(sorted(agents), logout.session_id)).values():
        count += ended.count
        confirmed |= ended.confirmed
        missing |= ended.missing
    if count == 0:
        if await _ended_already(services, logout.session_id):
            return {"sessions": 0, "sid": logout.session_id}
        raise InvalidLogoutToken("no session came from that sid")
    who: dict[str, Any]
    if len(agents) == 1:
        ((agent_id, agent_name),) = agents.items()
        who = {"agent_id": agent_id, "agent_name": agent_name}
    else:  # a sid the provider gave several subjects: each one's sessions from it ended
        who = {"agents": sorted(agents.values())}
    return who | {
        "sessions": count,
        "sid": logout.session_id,
        "replicas_confirmed": sorted(confirmed - missing),
        "replicas_missing": sorted(missing),
    }


async def _ended_already(services: Services, sid: str, agent_id: str | None = None) -> bool:
    """Whether a logout of ``sid`` (by ``agent_id``'s sessions when given) was done here within a token's lifetime:
    the provider resending a token after our 503 (the sessions ended, their save failed) is answered as done
    (§2.8), not refused because nothing is left to end."""
    since = utcnow() - timedelta(seconds=MAX_AGE_SECONDS + LEEWAY_SECONDS)
    return await services.logouts.ended_idp_session(sid, since, agent_id)


async def backchannel_logout(request: Request) -> Response:
    services: Services = request.app.state.services
    scope = scope_of(request, services.settings.server.trusted_proxies)
    assert services.oidc is not None
    record: dict[str, Any] = {}
    try:
        token = await _logout_token(request)
        try:
            verified = await services.oidc.verify_signature(token)
        except (JoseError, ValueError, TypeError) as exc:
            raise InvalidLogoutToken("the token's signature could not be verified", detail=type(exc).__name__) from None
        logout = logout_request(
            verified, issuer=services.oidc.issuer, client_id=services.oidc.client_id, now=services.clock()
        )
        record = await run_once(
            services.sessions,
            f"bcl:{logout.issuer}:{logout.jti}",
            functools.partial(_apply, services, logout),
            ttl_seconds=MAX_AGE_SECONDS + LEEWAY_SECONDS,
            replayed=InvalidLogoutToken("this logout token was already used"),
        )
    except ChannelgateError as exc:
        await _audit(services, scope.request_id, scope.client_ip, record, exc.status, refused=exc.message)
        body = {
            "error": exc.code if exc.status == 400 else "temporarily_unavailable",
            "error_description": exc.public_message or exc.message,
        }
        return JSONResponse(body, status_code=exc.status, headers={"Cache-Control": "no-store"})
    await _audit(services, scope.request_id, scope.client_ip, record, 200, refused=None)
    return Response(status_code=200, headers={"Cache-Control": "no-store"})


async def _audit(
    services: Services, request_id: str, source_ip: str, record: dict[str, Any], status: int, *, refused: str | None
) -> None:
    await services.audit.write(
        AccessRecord(
            time=utcnow(),
            kind="backchannel_logout",
            request_id=request_id,
            agent_id=record.get("agent_id"),
            agent_name=record.get("agent_name"),
            source_ip=source_ip,
            method="POST",
            path="/.channelgate/backchannel-logout",
            status=status,
            decision="refused" if refused else "revoked",
            reason=refused,
            actor="idp",
            detail={k: v for k, v in record.items() if k not in ("agent_id", "agent_name")} or None,
        )
    )
