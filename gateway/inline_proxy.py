"""The inline proxy: request → session → decision → connector → upstream, with the access log beside it.

The path is normalised before anything matches it, so the decision is made for the path the upstream will see
(security-tests items 18-19). The client's identity headers, Authorization and the gateway's cookies are removed
before the connector adds the channel credential and the gateway adds its signed identity assertion; only the
upstream request ever holds the credential. A refused credential (a 401, a cookie jar's login redirect) is
refreshed by the connector and the request resent once (gateway/proxy/connector_flow.py); a cookie-jar
connector takes the console's cookies out of every answer before the browser sees it. Every request — allowed,
denied or failed — leaves one record.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import quote, urlsplit

from starlette.requests import HTTPConnection, Request
from starlette.responses import RedirectResponse, Response
from starlette.websockets import WebSocket

from connectors.base import AgentRef, UpstreamRequest
from gateway.audit.data_access import (
    MAX_BODY,
    UNNAMED_METHOD,
    WEBSOCKET,
    DataAccess,
    classify,
    default_action,
    override_candidates,
    subject_from_body,
)
from gateway.authn import DuplicateSessionCookie, require_session
from gateway.errors import AccessDenied, AuthenticationRequired, BadRequest, ChannelgateError, NotFound
from gateway.pages import error_response, wants_html
from gateway.policy_point import device_value
from gateway.proxy.connector_flow import ChannelPlan, ConnectorResend
from gateway.proxy.console_scope import console_scope
from gateway.proxy.forward import ForwardStats
from gateway.proxy.headers import check_header_size, sanitise_request_headers
from gateway.proxy.method_override import RunsAs, runs_as
from gateway.proxy.paths import normalise_path, strip_query_values
from gateway.proxy.routes import RouteMatch, upstream_url
from gateway.proxy.websocket import proxy_websocket
from gateway.scope import RequestScope, scope_of
from gateway.services import Services
from gateway.sessions.base import Session
from gateway.storage.access_log import AccessRecord
from gateway.timeutil import utcnow
from policies.decision import Decision, Subject, Target


@dataclass(frozen=True, slots=True)
class Admitted:
    """A request that passed every check and may go upstream."""

    match: RouteMatch
    session: Session
    decision: Decision
    path: str
    url: str
    headers: list[tuple[str, str]]
    plan: ChannelPlan | None = None
    agent: AgentRef | None = None
    upstream: UpstreamRequest | None = None


class Forbidden(AccessDenied):
    """Denied by the route's rule; the message explains which group is missing."""

    code = "forbidden"


class MethodOverrideRefused(Forbidden):
    """A POST the console may run as another method (its ``_method``; gateway/proxy/method_override.py) which
    the agent may not do as that method. Decided for POST alone, ``_method=GET`` would fetch what GET is refused
    (a recording a ``[[routes.data]]`` rule makes a download), since Rails, Laravel, Symfony and Spring honour it."""

    code = "method_override_refused"


class UpgradeRefused(MethodOverrideRefused):
    """A GET through forward-auth, which cannot tell a WebSocket upgrade from a plain GET, on a path whose
    ``[[routes.data]]`` rule for ``WEBSOCKET`` the agent's policy refuses."""

    code = "websocket_refused"


class ServiceWorkerRefused(AccessDenied):
    """A console's service worker script (the browser sends ``Service-Worker: script``, W3C Service Workers
    §4.2.1). Every one is refused, not only those asking for a scope wider than their prefix: a worker under
    ``/chat/`` could be scoped to ``/chat/`` alone, but it outlives the session, answers requests offline and
    sees every page of its scope before the gateway does; with one origin shared by all consoles, refusing all
    of them is the fail-closed choice."""

    code = "service_worker_refused"


_HTTP_SCHEME = {"http": "http", "https": "https", "ws": "http", "wss": "https"}


def _services(connection: HTTPConnection) -> Services:
    services: Services = connection.app.state.services
    return services


def channel_plan(connection: HTTPConnection, services: Services, channel: str) -> ChannelPlan:
    """The channel's plan, made on its first request and kept with the app (made again only if the connector
    object was replaced)."""
    state = connection.app.state
    try:
        plans: dict[str, ChannelPlan] = state.channel_plans
    except AttributeError:
        plans = state.channel_plans = {}
    connector = services.connectors[channel]
    plan = plans.get(channel)
    if plan is None or plan.connector is not connector:
        settings = services.settings
        plan = plans[channel] = ChannelPlan.of(
            channel, connector, settings.channels[channel], settings.assertion.header
        )
    return plan


def request_record(scope: RequestScope, method: str, log_path: str, **fields: object) -> AccessRecord:
    """The access-log record of one request to a channel, inline or asked about by a front proxy (forward-auth)."""
    session = scope.session
    return AccessRecord(
        time=utcnow(),
        kind="request",
        request_id=scope.request_id,
        agent_id=session.data.agent_id if session else None,
        agent_name=session.data.user_name if session else None,
        source_ip=scope.client_ip,
        channel=scope.channel,
        method=method,
        path=log_path,
        decision=("allow" if scope.decision.allowed else "deny") if scope.decision else None,
        reason=",".join(scope.decision.policy_ids) if scope.decision else None,
        subject=scope.subject,
        action=scope.action,
        **fields,  # type: ignore[arg-type]
    )


@dataclass(frozen=True, slots=True)
class Checked:
    """A request whose route, session and policy decision are settled (shared with forward-auth)."""

    match: RouteMatch
    session: Session
    decision: Decision
    path: str
    query: str
    access: DataAccess | None


async def check_request(
    connection: HTTPConnection,
    services: Services,
    scope: RequestScope,
    method: str,
    *,
    raw_path: bytes,
    query: str,
    host: str | None,
    via: str,
) -> Checked:
    """Path → route → personal-data class → session → policy, for the path the upstream will see.

    Raises NotFound, BadRequest (an ambiguous path), AuthenticationRequired, SessionStoreUnavailable or
    Forbidden. A match that only redirects (``/chat`` → ``/chat/``) comes back with ``match.redirect`` set and
    no session read.
    """
    check_header_size(connection.headers.raw, services.settings.server.max_header_bytes)
    path = normalise_path(raw_path)
    if via == "forward-auth" and path.encode("latin-1", "replace") != raw_path:
        # The front proxy forwards the path as the client spelled it, not our canonical form: decide only on a
        # path that is already canonical, so the decision is about exactly what the console will see.
        raise BadRequest("The request path was refused: it is not in canonical form (see docs/forward-auth.md).")
    assert services.routes is not None
    match = services.routes.match(host, path)
    if match is None:
        raise NotFound("No console is served at this address.")
    scope.channel = match.route.channel
    if match.redirect:
        return Checked(match, None, None, path, query, None)  # type: ignore[arg-type]
    rules = services.routes.data_rules(match.route)
    access = None
    if rules is None:
        scope.action = default_action(method)
    else:
        access = rules.classify(method, path, query, connection.headers)
        scope.subject, scope.action = access.subject, access.action
    session = await require_session(connection, services, scope)
    decision = decide(connection, services, scope, session, match, access.pii if access else None, via)
    services.metrics.decision(match.route.channel, decision.allowed).inc()
    if not decision.allowed:
        raise Forbidden(decision.explain())
    checked = Checked(match, session, decision, path, query, access)
    await _decide_other_methods(connection, services, scope, checked, method, via)
    return checked


async def _decide_other_methods(
    connection: HTTPConnection, services: Services, scope: RequestScope, checked: Checked, method: str, via: str
) -> None:
    """Decide the request again as each method the console may run it as whose rules give another action or
    data class (each decision is a cached policy lookup); raise MethodOverrideRefused at the first refusal. A
    front proxy's question about a GET may be about a WebSocket upgrade (forward-auth is not told): both."""
    if via == "forward-auth" and method == "GET":
        runs = RunsAs(frozenset({WEBSOCKET}), why="forward-auth cannot tell an upgrade from a GET")
    else:
        runs = await runs_as(connection, method, checked.query, read_body=via == "inline", max_body=MAX_BODY)
    if not runs:
        return
    assert services.routes is not None
    rules = services.routes.data_rules(checked.match.route)
    own = checked.access or DataAccess(None, default_action(method))
    seen = {(own.action, own.pii)}
    for other in sorted(runs.methods | (override_candidates(rules) if runs.any else frozenset())):
        access = classify(rules, other, checked.path, checked.query, connection.headers)
        if (access.action, access.pii) in seen:
            continue
        seen.add((access.action, access.pii))
        decision = decide(connection, services, scope, checked.session, checked.match, access.pii, via, access.action)
        if not decision.allowed:
            name = {UNNAMED_METHOD: "another method", WEBSOCKET: "a WebSocket"}.get(other, other)
            refused = UpgradeRefused if other == WEBSOCKET else MethodOverrideRefused
            raise refused(
                f"{decision.explain()} This {method} could be run as {name} by the console ({runs.why}), and as "
                f"{name} it is refused."
            )
    scope.decision = checked.decision  # the record names the decision made for the request's own method


async def _admit(connection: HTTPConnection, services: Services, scope: RequestScope, method: str) -> Admitted:
    """Every check a request must pass before it may reach a channel console."""
    settings = services.settings
    checked = await check_request(
        connection,
        services,
        scope,
        method,
        raw_path=connection.scope.get("raw_path") or connection.scope["path"].encode(),
        query=connection.scope.get("query_string", b"").decode("latin-1"),
        host=connection.headers.get("host"),
        via="inline",
    )
    match, session, path, access = checked.match, checked.session, checked.path, checked.access
    decision = checked.decision
    if match.redirect:
        return Admitted(match, None, None, path, "", [])  # type: ignore[arg-type]
    services.audit.check_capacity()
    if access is not None and access.body_field is not None and isinstance(connection, Request):
        scope.subject = await _body_subject(connection, access.body_field)
    plan = channel_plan(connection, services, match.route.channel)
    assert services.signer is not None
    headers = sanitise_request_headers(
        connection.headers.raw,
        gateway_cookie_names=services.cookies.names,
        client_ip=scope.client_ip,
        scheme=_HTTP_SCHEME.get(connection.scope.get("scheme", "http"), "http"),
        host=connection.headers.get("host", ""),
        also_remove=plan.strip,
    )
    url = upstream_url(match, path, checked.query)
    upstream = UpstreamRequest(method="GET" if method == WEBSOCKET else method, url=url, headers=headers)
    agent = AgentRef(agent_id=session.data.agent_id, user_name=session.data.user_name, email=None)
    await plan.connector.prepare(agent, upstream)
    upstream.headers.append(
        (
            settings.assertion.header,
            services.signer.sign(
                session.data.agent_id,
                session.data.user_name,
                session.data.groups,
                match.route.channel,
                services.clock(),
            ),
        )
    )
    return Admitted(match, session, decision, path, url, upstream.headers, plan, agent, upstream)


def decide(
    connection: HTTPConnection,
    services: Services,
    scope: RequestScope,
    session: Session,
    match: RouteMatch,
    pii: str | None,
    via: str,
    action: str | None = None,
) -> Decision:
    """The policy decision for this request (gateway/policy_point.py), kept on the scope for the access log;
    for ``scope.action`` unless another ``action`` is asked about."""
    point = services.policy
    action = action or scope.action
    assert point is not None and action is not None
    route = match.route
    data = session.data
    device_header = point.settings.device_header
    client = connection.scope.get("client")
    context = point.context(
        client_ip=scope.client_ip,
        peer=client[0] if client else None,
        acr=data.acr,
        amr=data.amr,
        device_header=device_value(connection.headers.getlist(device_header)) if device_header else None,
        via=via,
        now=services.clock(),
    )
    target = Target(route.channel, route.allowed_groups, route.prefix, pii or "none")
    decision = point.decide(Subject(data.agent_id, data.user_name, data.groups), target, action, context)
    scope.decision = decision
    return decision


async def _body_subject(request: Request, field: str) -> str | None:
    """The data subject named in a small body; the body is kept for the upstream (Starlette caches it)."""
    length = request.headers.get("content-length", "")
    if not length.isdigit() or int(length) > MAX_BODY:
        return None  # chunked or large: streamed on unread, the record says no subject
    return subject_from_body(await request.body(), request.headers.get("content-type", ""), field)


def _log_path(connection: HTTPConnection) -> str:
    """The path as requested, with query keys but no values (read from the ASGI scope: no URL object)."""
    asgi = connection.scope
    return strip_query_values(asgi["path"], asgi.get("query_string", b"").decode("latin-1"))


def _login_redirect(connection: HTTPConnection) -> Response:
    target = connection.url.path + (f"?{connection.url.query}" if connection.url.query else "")
    return RedirectResponse("/.channelgate/login?rd=" + quote(target, safe=""), status_code=302)


async def proxy_http(request: Request) -> Response:
    services = _services(request)
    scope = scope_of(request, services.settings.server.trusted_proxies)
    log_path = _log_path(request)
    try:
        admitted = await _admit(request, services, scope, request.method)
    except ChannelgateError as exc:
        response: Response
        if isinstance(exc, AuthenticationRequired) and request.method in ("GET", "HEAD") and wants_html(request):
            response = _login_redirect(request)
        else:
            response = error_response(request, exc, scope.request_id)
        detail = {"error": exc.code} if isinstance(exc, DuplicateSessionCookie | MethodOverrideRefused) else None
        services.audit.submit(
            request_record(
                scope,
                request.method,
                log_path,
                status=response.status_code,
                duration_ms=_elapsed_ms(scope),
                detail=detail,
            )
        )
        services.metrics.request(scope.channel or "-", response.status_code).inc()
        return response
    if admitted.match.redirect:
        return RedirectResponse(admitted.match.location, status_code=308)
    channel = admitted.match.route.channel

    untrack: list[Callable[[], None]] = []

    async def finished(stats: ForwardStats) -> None:
        for forget in untrack:
            forget()
        services.metrics.latency(channel).observe(stats.upstream_latency)
        services.metrics.request(channel, stats.status).inc()
        services.audit.submit(
            request_record(
                scope,
                request.method,
                log_path,
                status=stats.status,
                bytes_in=stats.bytes_in,
                bytes_out=stats.bytes_out,
                duration_ms=_elapsed_ms(scope),
                detail={"error": stats.error} if stats.error else None,
            )
        )

    assert services.upstream is not None
    assert admitted.plan is not None and admitted.agent is not None and admitted.upstream is not None
    route = admitted.match.route
    try:
        if request.headers.get("service-worker", "").strip().lower() == "script":
            raise ServiceWorkerRefused("A channel console may not install a service worker on the gateway.")
        response = await services.upstream.forward(
            request,
            admitted.url,
            admitted.headers,
            route.timeout_seconds,
            gateway_cookie_names=tuple(services.cookies.names),
            console=console_scope(
                route.prefix,
                route.strip_prefix,
                str(route.upstream),
                services.public_url,
                rewrite_cookies=not admitted.plan.keeps_cookies,
            ),
            on_complete=finished,
            on_response=admitted.plan.response_hook(admitted.agent),
            resend=ConnectorResend(admitted.plan, admitted.agent, admitted.upstream, services.metrics),
        )
        if not response.stats.completed:
            untrack.append(services.live.track_stream(admitted.session, response.abort))
        return response
    except ChannelgateError as exc:
        response = error_response(request, exc, scope.request_id)
        services.audit.submit(
            request_record(
                scope,
                request.method,
                log_path,
                status=response.status_code,
                duration_ms=_elapsed_ms(scope),
                detail={"error": exc.code, "detail": exc.detail},
            )
        )
        services.metrics.request(channel, response.status_code).inc()
        return response


def _elapsed_ms(scope: RequestScope) -> int:
    return round((time.perf_counter() - scope.started) * 1000)


def _public_origin(services: Services) -> str:
    """The gateway's origin (RFC 6454 §6.1) as a browser serialises it in ``Origin``."""
    url = urlsplit(services.public_url)
    return f"{url.scheme}://{url.netloc}".lower()


async def proxy_websocket_endpoint(websocket: WebSocket) -> None:
    """A WebSocket to a console, for as long as its session lives (gateway/sessions/watch.py).

    Browsers send the cookie on a WebSocket handshake whatever page opens it, and SameSite=Lax stops only
    cross-*site* pages: a page on a sibling host of the same site could open the console's socket with the agent's
    cookie (cross-site WebSocket hijacking). A handshake whose ``Origin`` is not the gateway's own is refused (403)
    before the session is read. Without ``Origin`` it passes: browsers always send it on a WebSocket handshake
    (RFC 6455 §4.1, Fetch), so its absence means a client no web page drives, which holds the cookie itself.
    """
    services = _services(websocket)
    scope = scope_of(websocket, services.settings.server.trusted_proxies)
    log_path = _log_path(websocket)
    origin = websocket.headers.get("origin")
    if origin is not None and origin.lower() != _public_origin(services):
        detail = {"error": "cross_origin_websocket", "origin": origin[:200]}
        services.audit.submit(request_record(scope, "WEBSOCKET", log_path, status=403, detail=detail))
        await websocket.close(code=1008)
        return
    try:
        admitted = await _admit(websocket, services, scope, WEBSOCKET)
        if admitted.match.redirect:
            raise NotFound("No console is served at this address.")
    except ChannelgateError as exc:
        services.audit.submit(request_record(scope, "WEBSOCKET", log_path, status=exc.status))
        await websocket.close(code=1008 if exc.status in (401, 403) else 1011)
        return
    assert services.upstream is not None
    binding = services.live.bind(admitted.session)
    if binding is None:  # the session ended after it was read above
        services.audit.submit(request_record(scope, "WEBSOCKET", log_path, status=401))
        await websocket.close(code=1008)
        return
    ws_url = "ws" + admitted.url.removeprefix("http")
    try:
        await proxy_websocket(
            websocket,
            ws_url,
            admitted.headers,
            services.upstream.websocket_session,
            services.live.websockets,
            admitted.session.data.agent_id,
            session=binding.key,
            used=binding.use,
        )
    finally:
        services.live.unbind(binding)
    record = request_record(scope, "WEBSOCKET", log_path, status=101, duration_ms=_elapsed_ms(scope))
    services.audit.submit(record)
