"""The push endpoint of a Shared Signals receiver (RFC 8935): ``POST /.channelgate/ssf/events``.

A configured transmitter (``[[ssf.transmitters]]``) authenticates with its bearer token, compared in constant
time, and posts one SET as ``application/secevent+jwt``. Its signature is checked against that transmitter's
JWKS with the same asymmetric allowlist as ID tokens; ``gateway.signals.events`` checks the claims. Then the
strongest action the events ask for runs before the answer: RISC ``account-disabled`` deprovisions the agent
(``SessionKiller``), CAEP ``session-revoked`` and ``credential-change`` end all of the agent's sessions. Each
``jti`` is acted on once across replicas, and counts as received only once its action succeeded
(``gateway/sessions/single_use.py``), so a retry after a 503 is served, not refused as a replay.

A transmitter speaks only for its own issuer and the ``subject_issuers`` its settings list: a SET naming an
account of any other issuer (``gateway.signals.events.authorize``) is refused with a 400 ``access_denied`` before
its ``jti`` is claimed, and recorded with the issuers it had no right to name.

An ``email`` subject that several live agents share is ambiguous: a logout ends the sessions of every one of them
(low harm, and the one meant is among them), a deprovisioning is refused with a 400 (RFC 8935 §2.3) that says
it was not acted on, since disabling a guess could shut out the wrong person and leave the right one working.

A SET is acted on up to its transmitter's ``max_set_age_seconds`` after its ``iat`` (the transmitter retries
what the gateway could not take); a late ``account-disabled`` about an agent changed here since is refused
(``_stale``): it could undo a later re-enable.

The answer is 202 (accepted, including events about an unknown subject or of a type we ignore, so the
transmitter does not retry them), 400 with an RFC 8935 §2.4 error object, 401, or 503 (try again); every SET
leaves an access-log record.
"""

from __future__ import annotations

import functools
import hmac
import math
from datetime import UTC, datetime
from typing import Any, Final

from joserfc import jwt
from joserfc.errors import InvalidKeyIdError, JoseError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from gateway.deprovision.endings import EndedSessions, EndsNotSaved
from gateway.errors import ChannelgateError
from gateway.oidc.discovery import ProviderKeys
from gateway.scope import scope_of
from gateway.services import Services
from gateway.sessions.single_use import run_once
from gateway.settings import SsfTransmitterSettings
from gateway.signals.events import (
    LEEWAY_SECONDS,
    RECENT_SECONDS,
    Action,
    InvalidSet,
    NotSpokenFor,
    SecurityEvent,
    Subject,
    authorize,
    security_event,
)
from gateway.small_bodies import read_small_body
from gateway.storage.access_log import AccessRecord
from gateway.storage.agents import Agent
from gateway.timeutil import utcnow

MAX_BODY_BYTES: Final = 64 * 1024
_PATH: Final = "/.channelgate/ssf/events"


class Unauthenticated(ChannelgateError):
    status = 401
    code = "authentication_failed"


def _transmitter(services: Services, request: Request) -> SsfTransmitterSettings:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and token:
        for transmitter in services.settings.ssf.transmitters:
            if hmac.compare_digest(transmitter.token.get_secret_value().encode(), token.strip().encode()):
                return transmitter
    raise Unauthenticated("send a configured transmitter's token as 'Authorization: Bearer <token>'")


def _keys(services: Services, transmitter: SsfTransmitterSettings) -> ProviderKeys:
    cache: dict[str, ProviderKeys] = services.signal_keys
    uri = str(transmitter.jwks_uri)
    if uri not in cache:
        assert services.idp_http is not None
        cache[uri] = ProviderKeys(services.idp_http, uri)
    return cache[uri]


async def _verified(services: Services, transmitter: SsfTransmitterSettings, token: str) -> jwt.Token:
    keys = _keys(services, transmitter)
    algorithms = list(services.settings.oidc.allowed_algorithms)
    try:
        try:
            return jwt.decode(token, await keys.key_set(), algorithms=algorithms)
        except InvalidKeyIdError:  # the transmitter may have rotated its keys
            return jwt.decode(token, await keys.key_set(refresh=True), algorithms=algorithms)
    except (JoseError, ValueError, TypeError) as exc:
        raise InvalidSet("the SET's signature could not be verified", err="invalid_key") from exc


async def _read(request: Request) -> str:
    # RFC 8935 §2: one SET per request, as application/secevent+jwt.
    body = await read_small_body(
        request, expected_type="application/secevent+jwt", max_bytes=MAX_BODY_BYTES, refuse=InvalidSet
    )
    try:
        return body.decode("ascii").strip()
    except UnicodeDecodeError:
        raise InvalidSet("a SET is a compact JWS: ASCII only") from None


async def _agents(services: Services, event: SecurityEvent) -> list[Agent]:
    """The live agents the subject names: one, none, or (an email several agents share) more, by userName. A SET
    naming its subject in a second form too (an ``iss_sub`` and an email) is acted on only if both name them."""
    found = await _agents_named(services, event.subject)
    for other in event.also_named:
        if {a.id for a in await _agents_named(services, other)} != {a.id for a in found}:
            raise InvalidSet(
                "the SET names its subject in two forms that are not the same agent here (RFC 8417 §2.2: a SET is "
                "about one subject); send one SET per account"
            )
    return found


async def _agents_named(services: Services, subject: Subject) -> list[Agent]:
    if subject.issuer is not None and subject.subject is not None:
        agent = await services.agents.find_by_oidc(subject.issuer, subject.subject)
        return [agent] if agent is not None and not agent.deleted else []
    if subject.email is not None:
        return await services.agents.find_by_email(subject.email)
    return []


def _ambiguous(event: SecurityEvent, found: list[Agent]) -> InvalidSet:
    """RFC 8935 §2.3: a deprovisioning that names no single agent is not acknowledged; the transmitter's
    administrator reads the description, the gateway's finds the candidates in the access-log record."""
    return InvalidSet(
        f"not acted on: {len(found)} agents at this gateway have the email {event.subject.email!r}, so which "
        "account to disable is ambiguous. Send the event with an iss_sub subject, or have the gateway's "
        "administrator deprovision the right agent (its security_event access-log record names the candidates)."
    )


def _late(services: Services, event: SecurityEvent) -> bool:
    """Issued more than ``RECENT_SECONDS`` ago: pushed again after the gateway could not take it (RFC 8935 §2.3)."""
    return services.clock() - event.issued_at > RECENT_SECONDS


def _when(moment: float) -> str:
    return datetime.fromtimestamp(moment, UTC).isoformat(timespec="seconds")


async def _stale(services: Services, event: SecurityEvent, agent: Agent) -> InvalidSet | None:
    """A late ``account-disabled`` about an agent that is active again since it was issued is not acted on: disabling
    now would undo that and revoke, hand over and delete at the channels of an active agent. Active again since
    means either of what says so: the gateway made it active (SCIM, the directory, an admin: ``enabled_at``, or its
    creation), or the IdP let it sign in (one of its sessions began after the SET was issued). Anything else — a
    rename, a group, a profile update — is not a re-enable, and the disable is acted on. A recent SET is acted on
    whatever happened: the IdP's own updates arrive just before its disable. The refusal is recorded; an
    administrator who finds the account still disabled at the IdP deprovisions the agent by hand."""
    if not _late(services, event) or not agent.active:
        return None
    since = agent.active_since.timestamp()
    if since > event.issued_at:
        why = f"was made active here at {_when(since)}"
    else:
        sessions = await services.sessions.sessions_of(agent.id, services.clock())
        later = [s.created_at for s in sessions if s.created_at > event.issued_at]
        if not later:
            return None
        why = f"signed in through the identity provider at {_when(min(later))}"
    minutes = (services.clock() - event.issued_at) / 60
    return InvalidSet(
        f"not acted on: this account-disabled SET was issued at {_when(event.issued_at)}, {minutes:.0f} minutes ago, "
        f"and the agent {agent.user_name!r} {why}, after it: acting on it late would undo that. If the account is "
        "still disabled at the IdP, have the gateway's administrator deprovision the agent (the SET's "
        "security_event access-log record names it)."
    )


def _ended(outcome: dict[str, Any], ended: dict[str, EndedSessions], result: str) -> None:
    missing = sorted({replica for each in ended.values() for replica in each.missing})
    count = sum(each.count for each in ended.values())
    outcome |= {"result": result, "sessions": count, "replicas_missing": missing}


async def _signed_in_before(services: Services, agent: Agent, issued_at: float) -> bool:
    """Whether one of the agent's sessions began before the SET was issued: a late session-revoked or
    credential-change is about those (all of the agent's sessions end then, as for a recent one); sessions that all
    began after it were opened with what the event was about already settled, and are spared."""
    sessions = await services.sessions.sessions_of(agent.id, services.clock())
    return any(session.created_at <= issued_at for session in sessions)


async def _apply(
    services: Services, transmitter: SsfTransmitterSettings, event: SecurityEvent, outcome: dict[str, Any]
) -> None:
    """Run the event's action and fill ``outcome`` (the access log's detail), also when it fails halfway."""
    outcome |= {"events": [name for name, _ in event.events], "action": event.action.value}
    found = await _agents(services, event)
    if not found:
        outcome["result"] = "no such agent"
        return
    if len(found) == 1:
        outcome |= {"agent_id": found[0].id, "agent_name": found[0].user_name}
    else:
        outcome["candidates"] = [agent.user_name for agent in found]
    if event.action is Action.DEPROVISION:
        if len(found) > 1:
            outcome["result"] = "ambiguous subject: several agents share this email"
            raise _ambiguous(event, found)
        if stale := await _stale(services, event, found[0]):
            outcome["result"] = "stale: the agent is active again since the SET was issued"
            raise stale
        kill = await services.killer.deprovision(
            found[0].id, reason=f"account disabled at {transmitter.issuer} (RISC)", actor="ssf", source="ssf"
        )
        outcome |= {"result": "deprovisioned", "sessions": kill.sessions_revoked}
    elif event.action is Action.END_SESSIONS:
        # Every agent the subject names: for an ambiguous email that ends the right one's sessions too.
        ending, spared = list[str](), list[str]()
        for agent in found:
            if _late(services, event) and not await _signed_in_before(services, agent, event.issued_at):
                spared.append(agent.user_name)  # a late logout ends what it was about, not the sign-ins since
            else:
                ending.append(agent.id)
        if spared:
            outcome["spared"] = spared
        # Every agent's sessions end first, then what ended is saved once: a failed save (503, the transmitter
        # retries) leaves no agent's sessions valid.
        try:
            ended = await services.killer.endings.end_sessions_of(ending) if ending else {}
        except EndsNotSaved as exc:
            _ended(outcome, exc.ended, "sessions ended, their end not yet saved")
            raise
        _ended(outcome, ended, "sessions ended")
    else:
        outcome["result"] = "ignored"


async def receive_event(request: Request) -> Response:
    services: Services = request.app.state.services
    scope = scope_of(request, services.settings.server.trusted_proxies)
    audience = services.settings.ssf.audience or services.public_url
    outcome: dict[str, Any] = {}
    transmitter: SsfTransmitterSettings | None = None
    try:
        transmitter = _transmitter(services, request)
        token = await _read(request)
        verified = await _verified(services, transmitter, token)
        now = services.clock()
        event = security_event(
            verified.header,
            verified.claims,
            issuer=transmitter.issuer,
            audience=audience,
            now=now,
            email_issuer=services.settings.oidc.issuer,
            max_age=transmitter.max_set_age_seconds,
        )
        try:
            authorize(event, transmitter=transmitter.issuer, speaks_for=transmitter.speaks_for)
        except NotSpokenFor as exc:
            outcome |= {
                "events": [name for name, _ in event.events],
                "action": event.action.value,
                "foreign_issuers": exc.issuers,
            }
            raise
        await run_once(
            services.sessions,
            f"set:{transmitter.issuer}:{event.jti}",
            functools.partial(_apply, services, transmitter, event, outcome),
            # Until the SET is too old to be accepted at all (counted from its iat, not from now).
            ttl_seconds=max(1, math.ceil(event.issued_at + transmitter.max_set_age_seconds + LEEWAY_SECONDS - now)),
            replayed=InvalidSet("this SET was already received"),
        )
    except ChannelgateError as exc:
        await _audit(services, scope.request_id, scope.client_ip, transmitter, outcome, exc.status, exc.message)
        body = {
            "err": exc.code if exc.status < 500 else "temporarily_unavailable",
            "description": exc.public_message or exc.message,
        }
        return JSONResponse(body, status_code=exc.status, headers={"Cache-Control": "no-store"})
    await _audit(services, scope.request_id, scope.client_ip, transmitter, outcome, 202, None)
    return Response(status_code=202)


async def _audit(
    services: Services,
    request_id: str,
    source_ip: str,
    transmitter: SsfTransmitterSettings | None,
    outcome: dict[str, Any],
    status: int,
    refused: str | None,
) -> None:
    detail = {k: v for k, v in outcome.items() if k not in ("agent_id", "agent_name")}
    await services.audit.write(
        AccessRecord(
            time=utcnow(),
            kind="security_event",
            request_id=request_id,
            agent_id=outcome.get("agent_id"),
            agent_name=outcome.get("agent_name"),
            source_ip=source_ip,
            method="POST",
            path=_PATH,
            status=status,
            decision="refused" if refused else str(outcome.get("result", "accepted")),
            reason=refused,
            actor=f"ssf:{transmitter.issuer}" if transmitter is not None else None,
            detail=detail or None,
        )
    )
