"""The ASGI application: wires settings → services → endpoints, and renders every error once, here at the edge.

Request path: ``/.channelgate/*`` (login, callback, logout, admin API, health, metrics, JWKS) is served by the
gateway itself; every other path goes through the inline proxy (session → decision → connector → upstream),
with the access log written beside it.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable

from starlette.applications import Starlette
from starlette.requests import HTTPConnection, Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.types import Receive, Scope, Send

from gateway import admin_api, ops
from gateway.audit.forwarder import start_forwarders
from gateway.authn import require_session
from gateway.collector import FullCollections
from gateway.console.app import mount as console_routes
from gateway.directory.wiring import run_directory_sync
from gateway.errors import AuthenticationRequired, ChannelgateError
from gateway.forward_auth import answer_from_memo, forward_auth
from gateway.inline_proxy import proxy_http, proxy_websocket_endpoint
from gateway.oidc import routes as login_routes
from gateway.oidc.backchannel import backchannel_logout
from gateway.pages import error_response, render
from gateway.policy_reload import watch_policies
from gateway.scope import scope_of
from gateway.services import Services, open_gateway, start_worker
from gateway.sessions.base import Revocation
from gateway.sessions.watch import watch_sessions
from gateway.settings import Settings
from gateway.signals.receiver import receive_event
from policies.decision import Subject, Target
from scim.app import MOUNT_PATH, scim_endpoint

log = logging.getLogger("channelgate")

HEARTBEAT_SECONDS = 5.0


async def home(request: Request) -> Response:
    services: Services = request.app.state.services
    scope = scope_of(request, services.settings.server.trusted_proxies)
    try:
        session = await require_session(request, services, scope)
    except AuthenticationRequired:
        return RedirectResponse("/.channelgate/login?rd=/", status_code=302)
    subject = Subject(session.data.agent_id, session.data.user_name, session.data.groups)
    point = services.policy
    assert point is not None
    client = request.scope.get("client")
    context = point.context(
        client_ip=scope.client_ip,
        peer=client[0] if client else None,
        acr=session.data.acr,
        amr=session.data.amr,
        device_header=None,
        via="inline",
        now=services.clock(),
    )
    channels = []
    for route in services.settings.routes:
        # The home page lists what the agent may open now: the route's entry page, viewed.
        target = Target(route.channel, route.allowed_groups, route.prefix)
        if point.decide(subject, target, "view", context).allowed:
            channel = services.settings.channels[route.channel]
            channels.append({"prefix": route.prefix, "display_name": channel.display_name or route.channel})
    return render("home.html", user_name=session.data.user_name, groups=sorted(session.data.groups), channels=channels)


async def jwks(request: Request) -> Response:
    services: Services = request.app.state.services
    assert services.signer is not None
    return JSONResponse(services.signer.jwks(), headers={"Cache-Control": "public, max-age=300"})


async def _on_error(connection: HTTPConnection, exc: Exception) -> Response:
    services: Services = connection.app.state.services
    scope = scope_of(connection, services.settings.server.trusted_proxies)
    if isinstance(exc, ChannelgateError):
        if exc.status == 503:
            services.metrics.fail_closed.labels(exc.code).inc()
        return error_response(connection, exc, scope.request_id)
    log.exception("unexpected error in request %s", scope.request_id)
    return error_response(connection, ChannelgateError("Something went wrong on our side."), scope.request_id)


#: Seconds before a failed revocation listener is started again, doubling up to the second value; back to the
#: first once it ran for a minute.
LISTENER_RESTART_SECONDS = (0.5, 10.0)


async def _revocation_listener(services: Services) -> None:
    """Follow the revocation broadcast for the replica's lifetime, starting the listener again whenever it fails.

    Restarted, not left dead with the heartbeat stopped: a replica that stops heartbeating still serves requests,
    and every deprovisioning would report it done without waiting for it while it keeps the agent's WebSockets
    open. Kept live, it is reported missing by each revocation until its listener is back (visible, never reported
    done), and the new listener starts with a resync (``revocations(resync=True)``): every open connection is
    checked against the store again and the session cache is emptied, since broadcasts were missed meanwhile.
    """
    applying: set[asyncio.Task[None]] = set()  # outlive a failed feed: what it handed on is still applied
    delay, resync = LISTENER_RESTART_SECONDS[0], False
    try:
        while True:
            started = time.monotonic()
            try:
                await _listen(services, applying, resync=resync)
                await asyncio.gather(*applying)
                return  # the store was closed
            except Exception:
                if time.monotonic() - started > 60:
                    delay = LISTENER_RESTART_SECONDS[0]
                log.exception("the revocation listener failed; starting it again in %.1f s", delay)
            await asyncio.sleep(delay)
            delay, resync = min(delay * 2, LISTENER_RESTART_SECONDS[1]), True
    finally:
        for task in applying:
            task.cancel()


async def _listen(services: Services, applying: set[asyncio.Task[None]], *, resync: bool) -> None:
    """Close this replica's WebSockets of every revoked agent and acknowledge to the revoking replica; close
    those of every session that ended (logout, expiry), unacknowledged: nobody waits for a session's end.

    Each revocation is applied in a task of its own (kept in ``applying``): closing an agent's sockets waits for
    their close handshakes, and one agent's slow close must not hold back the acknowledgement of every revocation
    broadcast after it (in a storm of deprovisionings those would wait in line past the revoking replica's
    acknowledgement timeout). Those tasks never raise, so one revocation that fails cannot end the listener.
    """
    async with contextlib.aclosing(services.sessions.revocations(resync=resync)) as feed:
        async for revocation in feed:
            if revocation.ended_session is not None:
                work = _end_session(services, revocation.ended_session)
            elif not revocation.refresh_only:  # a group change: the session cache (if any) dropped its copies
                work = _apply_revocation(services, revocation)
            else:
                continue
            task = asyncio.create_task(work)
            applying.add(task)
            task.add_done_callback(applying.discard)


async def _end_session(services: Services, key: str) -> None:
    try:
        await services.live.close_session(key)
    except Exception:
        log.exception("could not close the connections of an ended session")


async def _apply_revocation(services: Services, revocation: Revocation) -> None:
    """Unacknowledged when it fails: the revoking replica then reports this one missing, never done."""
    if services.collector is not None:
        services.collector.ending_access()
    try:
        if revocation.agent_id == "*":
            # Resync after the broadcast channel dropped: re-check every open connection against the store (an
            # agent's revocation or a session's end may have been missed meanwhile).
            await _resync(services)
            return
        await services.live.close_agent(revocation.agent_id)
        for connector in services.connectors.values():
            await connector.forget(revocation.agent_id)
        await services.sessions.acknowledge(revocation)
    except ChannelgateError as exc:
        log.error(
            "could not apply revocation %s: %s (%s)", revocation.revocation_id, exc.message, exc.detail or "no detail"
        )
    except Exception:
        log.exception("could not apply revocation %s", revocation.revocation_id)


async def _resync(services: Services) -> None:
    """Close the connections of every agent without a live session, then of every session no longer live."""
    bindings = services.live.sessions()  # taken first: each of these sessions existed before the reads below
    now = services.clock()
    alive: dict[str, set[str]] = {}
    for agent_id in list(services.live.agents()):
        alive[agent_id] = {session.id for session in await services.sessions.sessions_of(agent_id, now)}
        if not alive[agent_id]:
            await services.live.close_agent(agent_id)
    for binding in bindings:
        if binding.agent_id not in alive:
            alive[binding.agent_id] = {s.id for s in await services.sessions.sessions_of(binding.agent_id, now)}
        if binding.key not in alive[binding.agent_id]:
            await services.live.close_session(binding.key)


async def _heartbeat(services: Services) -> None:
    while True:
        try:
            await services.sessions.heartbeat()
        except ChannelgateError as exc:
            log.warning("session store heartbeat failed: %s", exc.message)
        await asyncio.sleep(HEARTBEAT_SECONDS)


async def _revived_sessions(services: Services) -> None:
    """After a session-store outage (and at start), end again what a restarted Redis brought back
    (gateway/deprovision/revived.py). A task of its own: a sweep waiting on Redis must not delay the heartbeat."""
    while True:
        try:
            await services.revived.sweep_if_due()
        except ChannelgateError as exc:
            log.warning("ending sessions a session-store restart may have brought back failed: %s", exc.message)
        except Exception:
            # Anything else (a bug, a row this release cannot read) must not end the task: the sweep would never
            # complete again, and every request would stay checked against its agent's row.
            log.exception("ending sessions a session-store restart may have brought back failed unexpectedly")
        await asyncio.sleep(HEARTBEAT_SECONDS)


#: The methods the inline proxy forwards; anything else goes through the router (and gets its 405).
PROXIED_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_AUTH_PATH = "/.channelgate/auth"
#: A proxy asks /.channelgate/auth with the original method (Envoy) or with GET (nginx, Traefik).
FORWARD_AUTH_METHODS = sorted(PROXIED_METHODS)
#: Paths the router keeps: the home page, the gateway's own endpoints, SCIM. Everything else is proxied.
_NOT_PROXIED = ("/.channelgate", MOUNT_PATH)


class GatewayApp(Starlette):
    """Starlette, with proxied HTTP requests (the hot path) sent straight to the inline proxy.

    A proxied request went through two middlewares, a router matching four patterns and the endpoint wrapper
    before reaching ``proxy_http``: about 6 % of the proxy's CPU per request in the profile of issue 2's
    benchmark. The shortcut applies exactly the router's decision (the catch-all route, its methods) and the same
    error rendering (``_on_error``); WebSockets, lifespan and every other path take the full stack.
    """

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope.get("path", "")
        if scope["type"] == "http" and scope["method"] in PROXIED_METHODS:
            if path != "/" and not path.startswith(_NOT_PROXIED):
                await self._direct(proxy_http, scope, receive, send)
                return
            if path == _AUTH_PATH or path.startswith(_AUTH_PATH + "/"):
                # Forward-auth is a hot path too (every request through nginx / Envoy / Traefik asks it).
                if not await answer_from_memo(self.state.services, scope, send):
                    await self._direct(forward_auth, scope, receive, send)
                return
        await super().__call__(scope, receive, send)

    async def _direct(
        self, endpoint: Callable[[Request], Awaitable[Response]], scope: Scope, receive: Receive, send: Send
    ) -> None:
        scope["app"] = self
        request = Request(scope, receive)
        try:
            response = await endpoint(request)
        except Exception as exc:
            response = await _on_error(request, exc)
        await response(scope, receive, send)


def create_app(settings: Settings, services: Services | None = None, *, freeze_heap: bool = False) -> Starlette:
    """The ASGI app. ``freeze_heap`` (``channelgate serve``) moves everything built at start-up out of the
    cyclic garbage collector's reach (``gc.freeze``): a full collection then walks only what requests created,
    instead of pausing the process for the whole heap (~80 ms here) every few seconds under load."""

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        built = services or open_gateway(settings)
        app.state.services = built
        try:
            # Before anything serves: a Redis that may evict keys is refused (gateway/sessions/redis_eviction.py).
            await built.sessions.verify_server()
        except ChannelgateError:
            await built.close()
            raise
        if built.signer is not None and built.signer.ephemeral:
            log.warning(
                "no assertion signing key is configured: using an ephemeral key; configure "
                "[assertion] private_key_files so every replica signs with the same keys"
            )
        for transmitter in built.settings.ssf.transmitters:
            if built.settings.oidc.issuer not in transmitter.speaks_for:
                # Not an error (a vendor's transmitter names only its own accounts), but an IdP whose signals
                # service signs as another issuer gets every SET about its agents refused until this is set.
                log.warning(
                    "Shared Signals transmitter %s may name only its own accounts, not those of the login IdP %s "
                    "(iss_sub subjects of that issuer, emails): if it sends SETs about the IdP's agents, add "
                    "subject_issuers = [%r] to its [[ssf.transmitters]] table",
                    transmitter.issuer,
                    built.settings.oidc.issuer,
                    built.settings.oidc.issuer,
                )
        if built.upstream is not None:
            await built.upstream.start()
        built.audit.start()
        built.sealer.start()
        forwarders = start_forwarders(built.settings.audit, built.database.engine, built.metrics.registry)
        worker = built.worker or start_worker(built)
        timeouts = built.settings.sessions
        sweeps = watch_sessions(
            built.live,
            built.sessions,
            lambda: built.clock(),
            timeouts.idle_timeout_seconds,
            timeouts.absolute_timeout_seconds,
        )
        tasks = [
            asyncio.create_task(_revocation_listener(built), name="channelgate-revocations"),
            asyncio.create_task(sweeps, name="channelgate-session-watch"),
            asyncio.create_task(_heartbeat(built), name="channelgate-heartbeat"),
            asyncio.create_task(_revived_sessions(built), name="channelgate-revived-sessions"),
            asyncio.create_task(worker.run_forever(), name="channelgate-pipeline"),
        ]
        if built.policy is not None and built.settings.policies.reload_interval_seconds > 0:
            interval = built.settings.policies.reload_interval_seconds
            watch = watch_policies(built.policy, built.audit, built.replica_id, interval)
            tasks.append(asyncio.create_task(watch, name="channelgate-policies"))
        if built.settings.ldap is not None:
            tasks.append(asyncio.create_task(run_directory_sync(built, built.settings.ldap), name="channelgate-ldap"))
        if freeze_heap:
            gc.collect()
            gc.freeze()
            interval = built.settings.server.full_gc_interval_seconds
            if interval > 0:
                built.collector = FullCollections(interval)
                built.killer.on_ending = built.collector.ending_access
                tasks.append(asyncio.create_task(built.collector.run_forever(), name="channelgate-collector"))
        try:
            yield
        finally:
            # First: the forwarders deliver what is sealed while the database is still open.
            await forwarders.stop()
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await built.live.close_all()
            await built.close()

    # The gateway's own endpoints sit under one mount, so a proxied request (the hot path) is matched against
    # three patterns, not eleven, and a wrong method on one of them is a 405, never a request to a console.
    own = [
        Route("/login", login_routes.login, methods=["GET"]),
        Route("/callback", login_routes.callback, methods=["GET"]),
        Route("/logout", login_routes.logout, methods=["POST"]),
        Route("/backchannel-logout", backchannel_logout, methods=["POST"]),
        Route("/ssf/events", receive_event, methods=["POST"]),
        Route("/healthz", ops.healthz, methods=["GET"]),
        Route("/readyz", ops.readyz, methods=["GET"]),
        Route("/metrics", ops.metrics, methods=["GET"]),
        Route("/jwks.json", jwks, methods=["GET"]),
        # Forward-auth for nginx / Traefik / Envoy (gateway/forward_auth.py); Envoy appends the original path.
        Route("/auth", forward_auth, methods=FORWARD_AUTH_METHODS),
        Route("/auth/{path:path}", forward_auth, methods=FORWARD_AUTH_METHODS),
        Route("/admin/agents/{agent}", admin_api.agent_status, methods=["GET"]),
        Route("/admin/agents/{agent}/deprovision", admin_api.deprovision, methods=["POST"]),
        Route("/admin/deprovision/approve", admin_api.approve, methods=["POST"]),
        Route("/admin/deprovision/runs/{run}/retry", admin_api.retry, methods=["POST"]),
        Route("/admin/audit/search", admin_api.audit_search, methods=["GET"]),
        Route("/admin/audit/export", admin_api.audit_export, methods=["GET"]),
        *console_routes(),
    ]
    routes = [
        Route("/", home, methods=["GET"]),
        Mount("/.channelgate", routes=own),
        Mount(MOUNT_PATH, app=scim_endpoint),
        Route("/{path:path}", proxy_http, methods=sorted(PROXIED_METHODS)),
        WebSocketRoute("/{path:path}", proxy_websocket_endpoint),
    ]
    return GatewayApp(
        routes=routes,
        lifespan=lifespan,
        exception_handlers={Exception: _on_error, ChannelgateError: _on_error},
    )
