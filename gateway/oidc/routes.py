"""The login endpoints: ``/.channelgate/login``, ``/.channelgate/callback``, ``/.channelgate/logout``.

A new session id is issued at every login and any session the browser already had is ended (ASVS 7.2.4, session
fixation: Keycloak CVE-2026-7507). Logout is a POST (no state change on GET), deletes the server-side session and
clears the cookie so a replayed cookie finds nothing (oauth2-proxy CVE-2026-34454), and is remembered in the
database so a Redis that loses the deletion does not bring the session back for good (gateway/deprovision/
logouts.py).
"""

from __future__ import annotations

import secrets
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from gateway.errors import AgentDisabled, BadRequest, ChannelgateError, LoginFailed
from gateway.oidc.client import Identity
from gateway.oidc.redirects import safe_return_to
from gateway.scope import RequestScope, scope_of
from gateway.services import Services
from gateway.sessions.base import PendingLogin, SessionData, session_key
from gateway.storage.access_log import AccessRecord
from gateway.storage.agents import DIRECTORY_SOURCES, AmbiguousLink, UserNameConflict
from gateway.storage.limits import fit_text, length_of, unstorable
from gateway.storage.schema import agents
from gateway.storage.session_ends import EndKind, SessionEnd
from gateway.timeutil import utcnow

PENDING_LOGIN_TTL = 600
_LOGIN_ID_BYTES = 32


def _services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


def _redirect(url: str) -> RedirectResponse:
    response = RedirectResponse(url, status_code=302)
    response.headers["Cache-Control"] = "no-store"
    return response


async def login(request: Request) -> Response:
    services = _services(request)
    assert services.oidc is not None
    return_to = safe_return_to(request.query_params.get("rd"))
    authorize_url, pending = await services.oidc.begin(return_to, services.clock())
    login_id = secrets.token_urlsafe(_LOGIN_ID_BYTES)
    await services.sessions.put_pending_login(login_id, pending, PENDING_LOGIN_TTL)
    response = _redirect(authorize_url)
    services.cookies.set(response, services.cookies.login_name, login_id, max_age=PENDING_LOGIN_TTL)
    return response


async def _audit_login(services: Services, scope: RequestScope, kind: str, outcome: str, **fields: Any) -> None:
    """One record per login attempt, whatever its outcome (ASVS 16.3.1)."""
    services.metrics.logins.labels(outcome).inc()
    await services.audit.write(
        AccessRecord(time=utcnow(), kind=kind, request_id=scope.request_id, source_ip=scope.client_ip, **fields)
    )


async def _authenticate(request: Request, services: Services) -> tuple[PendingLogin, Identity]:
    """Check the callback against the pending login bound to this browser and validate the provider's answer."""
    assert services.oidc is not None
    if any(len(request.query_params.getlist(name)) > 1 for name in ("state", "code", "iss", "error")):
        raise LoginFailed("The sign-in response repeats a parameter; refusing it.", reason="repeated_parameter")
    login_id = request.cookies.get(services.cookies.login_name)
    pending = await services.sessions.take_pending_login(login_id) if login_id else None
    if pending is None:
        raise LoginFailed(
            "This sign-in was not started here, was already used, or took too long. Please sign in again.",
            reason="unknown_state",
        )
    params = dict(request.query_params.items())
    return pending, await services.oidc.complete(params, pending, services.clock())


async def callback(request: Request) -> Response:
    services = _services(request)
    scope = scope_of(request, services.settings.server.trusted_proxies)
    try:
        pending, identity = await _authenticate(request, services)
    except LoginFailed as exc:
        detail = {"detail": exc.detail} if exc.detail else None
        await _audit_login(services, scope, "login_failed", "failed", reason=exc.reason, detail=detail)
        raise
    problem = unstorable(agents, _IDENTITY_CLAIMS, _identity_columns(identity))
    if problem is not None:
        await _audit_login(
            services, scope, "login_refused", "refused", agent_name=identity.user_name, reason="unstorable_identity",
            detail={"detail": problem, "subject": identity.subject},
        )  # fmt: skip
        raise LoginFailed(
            f"Your organisation's identity provider sent an account the gateway cannot keep: {problem}. Ask your "
            "administrator to correct it there.",
            reason="unstorable_identity",
        )
    display_name = identity.display_name
    try:
        agent = await services.agents.link_or_create_from_login(
            issuer=identity.issuer,
            subject=identity.subject,
            user_name=identity.user_name,
            email=identity.email,
            # Shown to people only: a name too long for its column is cut rather than the sign-in refused.
            display_name=fit_text(display_name, _DISPLAY_NAME_LENGTH) if display_name is not None else None,
            now=utcnow(),
            link_by=services.settings.scim.link_by,
            email_verified=identity.email_verified,
        )
    except (UserNameConflict, AmbiguousLink) as exc:
        await _audit_login(
            services, scope, "login_refused", "refused", agent_name=identity.user_name, reason=exc.code,
            detail={"detail": exc.detail, "subject": identity.subject},
        )  # fmt: skip
        raise
    old_session = request.cookies.get(services.cookies.session_name)
    replaced = await services.sessions.delete(old_session) if old_session else None
    if old_session and replaced is not None:
        # Ended as a logout is, so remembered as one (gateway/deprovision/logouts.py): its agent may stay active.
        end = SessionEnd(utcnow(), EndKind.LOGOUT, replaced.agent_id, session_key=session_key(old_session))
        await services.logouts.remember([end])
    session = None
    # The directory is authoritative for its agents: a group it removed must not come back from the ID token.
    groups = await services.groups.names_of(agent.id) if agent.source in DIRECTORY_SOURCES else identity.groups
    if agent.active:
        data = _session_data(agent.id, agent.user_name, identity, groups)
        # Read before creating: the ends saved so far cannot have ended this session (gateway/deprovision/revived.py).
        data = replace(data, after_ends=await services.revived.ends_before_login(agent.id))
        session = await services.sessions.create(data, services.clock())
        # A deprovisioning that committed while this login was in flight must win: re-read after creating.
        current = await services.agents.get(agent.id)
        if current is None or not current.active:
            await services.sessions.delete(session.id)
            session = None
        elif agent.source in DIRECTORY_SOURCES:
            # Likewise a SCIM group change that pushed to live sessions before this one existed.
            fresh = await services.groups.names_of(agent.id)
            if fresh != groups:
                await services.sessions.update_agent_groups(agent.id, fresh)
                groups = fresh
    ended: EndKind | None = None
    if session is not None:
        try:
            ended = await _ended_on_its_way(services, identity, agent.id, pending)
        except ChannelgateError:
            await services.sessions.delete(session.id)  # its cookie was never sent: no session is left behind
            raise
    if session is not None and ended is not None:
        await services.sessions.delete(session.id)
        reason, names_sid, message = _ENDED_ON_ITS_WAY[ended]
        await _audit_login(
            services, scope, "login_refused", "refused", agent_id=agent.id, agent_name=agent.user_name,
            reason=reason, detail={"sid": identity.idp_session_id} if names_sid else None,
        )  # fmt: skip
        raise LoginFailed(message, reason=reason)
    if session is None:
        await _audit_login(
            services, scope, "login_refused", "refused", agent_id=agent.id, agent_name=agent.user_name,
            reason="agent_disabled",
        )  # fmt: skip
        raise AgentDisabled(
            "Your access to the consoles has been ended by your organisation. "
            "If you think this is a mistake, contact your supervisor."
        )
    await _audit_login(
        services, scope, "login", "ok", agent_id=agent.id, agent_name=agent.user_name, decision="allow",
        detail={"groups": sorted(groups), "source": agent.source, "acr": identity.acr, "amr": list(identity.amr)},
    )  # fmt: skip
    response = _redirect(pending.return_to)
    services.cookies.set(
        response, services.cookies.session_name, session.id, max_age=services.settings.sessions.absolute_timeout_seconds
    )
    services.cookies.clear(response, services.cookies.login_name)
    return response


#: The ID token's claims an agent's row keeps, by column: one the database cannot hold (too long, a NUL) refuses
#: the sign-in with a message naming it, as SCIM and the directory sync refuse such values, rather than a failed
#: write reported as the database not answering.
_IDENTITY_CLAIMS = {
    "user_name": "the user name (preferred_username)",
    "email": "the email",
    "oidc_subject": "the subject (sub)",
    "oidc_issuer": "the issuer (iss)",
}
_DISPLAY_NAME_LENGTH = length_of(agents.c.display_name)


def _identity_columns(identity: Identity) -> dict[str, str | None]:
    return {
        "user_name": identity.user_name,
        "email": identity.email,
        "oidc_subject": identity.subject,
        "oidc_issuer": identity.issuer,
    }


#: A sign-in refused because its sessions were ended on its way here: the record's reason, whether its detail names
#: the ``sid``, and what the agent reads.
_ENDED_ON_ITS_WAY = {
    EndKind.IDP_SESSION: (
        "idp_session_ended",
        True,
        "Your sign-in at your organisation's identity provider was ended while it was on its way here. "
        "Please sign in again.",
    ),
    EndKind.AGENT: (
        "sessions_ended",
        False,
        "Your sessions were ended by your organisation while this sign-in was on its way here. Please sign in again.",
    ),
}


async def _ended_on_its_way(
    services: Services, identity: Identity, agent_id: str, pending: PendingLogin
) -> EndKind | None:
    """Whether the agent's sessions were ended while this login was on its way — those of the login's own IdP
    session (a back-channel logout naming its ``sid``, OIDC Back-Channel Logout 1.0 §2.7) or every one (a
    back-channel logout naming ``sub`` alone, a CAEP session revocation, the console's "end sessions") — and which:
    the logout ended the sessions that existed, and saved its end, but the session this login has just created did
    not exist yet. Read after creating it: a logout whose end is saved later ends the sessions once more after
    saving it (gateway/deprovision/endings.py), so the session is caught either way. Ends from when the login started
    at the gateway, or from the user's authentication at the provider if that came later (the provider vouched for
    the session after an end before it: a provider that keeps the ``sid`` across a new sign-in).

    An end of the ``sid`` counts from the replicas' clock margin before that (it is stamped by the replica that took
    the logout, whose clock may differ): a new sign-in rarely comes back with the same ``sid``. An end of every
    session counts from the start itself, so the agent may sign in again at once after a logout (it stays enabled);
    with replicas' clocks apart, a sign-in that started less than their difference before such an end may pass,
    unless the second revocation after the save ended its session."""
    started = max(pending.created_at or services.clock(), identity.auth_time or 0.0)
    return await services.logouts.ended_for_sign_in(
        agent_id,
        identity.idp_session_id,
        since=datetime.fromtimestamp(started - services.revived.clock_margin, UTC),
        agent_wide_since=datetime.fromtimestamp(started, UTC),
    )


def _session_data(agent_id: str, user_name: str, identity: Identity, groups: frozenset[str]) -> SessionData:
    return SessionData(
        agent_id=agent_id,
        user_name=user_name,
        issuer=identity.issuer,
        subject=identity.subject,
        groups=groups,
        idp_session_id=identity.idp_session_id,
        id_token=identity.id_token,
        acr=identity.acr,
        amr=identity.amr,
        auth_time=identity.auth_time,
    )


async def logout(request: Request) -> Response:
    services = _services(request)
    assert services.oidc is not None
    scope = scope_of(request, services.settings.server.trusted_proxies)
    origin = request.headers.get("origin")
    if origin is not None and origin != services.public_url:
        raise BadRequest("Sign-out must come from the gateway's own pages.")
    session_id = request.cookies.get(services.cookies.session_name)
    data = await services.sessions.delete(session_id) if session_id else None
    if session_id and data is not None:
        # Remembered with its record before the answer, by storage key (never the id): a restarted Redis that
        # brings the session back has it ended again (gateway/deprovision/logouts.py). A failed write is a 503;
        # the session is ended all the same.
        now = utcnow()
        end = SessionEnd(now, EndKind.LOGOUT, data.agent_id, session_key=session_key(session_id))
        record = AccessRecord(
            time=now,
            kind="logout",
            request_id=scope.request_id,
            agent_id=data.agent_id,
            agent_name=data.user_name,
            source_ip=scope.client_ip,
        )
        await services.logouts.remember([end], [record])
    target = await services.oidc.logout_url(data.id_token if data else None, services.public_url + "/")
    response = _redirect(target or "/")
    response.status_code = 303
    services.cookies.clear(response, services.cookies.session_name)
    return response
