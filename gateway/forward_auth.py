"""``/.channelgate/auth``: the inline proxy's checks for a proxy that forwards the request itself.

nginx ``auth_request``, Traefik ForwardAuth and Envoy's HTTP ``ext_authz`` ask here before they forward a request
to a channel console. The answer comes from exactly the code the inline proxy runs (``check_request``: path
normalisation, route, personal-data class, session, policy) and the same connector and assertion signer; on a 200
the proxy copies the channel credential and the identity assertion from our response headers onto the upstream
request (deploy/nginx/forward-auth.conf, deploy/traefik/, deploy/envoy/).

Who may ask: a peer in ``[forward_auth] trusted_callers`` that sends the shared secret. A 200 carries the channel
credential, so anyone else — including an agent whose request the proxy passes through to /.channelgate/ — gets
a 404, as if the endpoint did not exist.

The original request comes in one of two forms. Asked at ``/.channelgate/auth`` itself, headers describe it:
``X-Original-Method`` / ``X-Original-URI`` (nginx, set in the sample) or ``X-Forwarded-Method`` /
``X-Forwarded-Uri`` (Traefik), and ``X-Forwarded-Host``. When both spellings are present and disagree, one of
them came from the client through a proxy that passes every header: refused. Envoy's HTTP ``ext_authz`` sends
the original request line instead, ``path_prefix`` in front: the original method, ``/.channelgate/auth`` + the
original path, the original query string and Host. In that form the request line is the only description
believed (``X-Original-*``, ``X-Forwarded-Uri``, ``-Method``, ``-Host`` are ignored: a client may have sent them),
and the query string is the console's, never a mode for us. The client address is read from
``X-Forwarded-For`` through ``[server] trusted_proxies`` like any request's.

Three answer modes:

* default (nginx ``auth_request``): 200, or a bare 401 / 403 that nginx turns into its ``error_page``;
* ``redirect`` (``X-Channelgate-Auth-Mode: redirect``, or ``?mode=redirect`` on ``/.channelgate/auth`` itself;
  Traefik and Envoy pass non-2xx answers to the client): a browser that is not signed in gets the login
  redirect back to the original URI, a refusal gets the 403 page with its explanation, an API client JSON;
* ``explain`` (nginx's ``error_page`` locations): the same pages, but never a credential: when the request is
  allowed by now, a redirect back to the original URI so it goes through ``auth_request`` again.

What the inline proxy does and this cannot: read a body for the data subject (no body reaches us), resend once
after a console's 401 with a refreshed credential, and keep a cookie-jar console's cookies from the browser, so
``cookie_jar`` channels are refused here (500, naming the channel).
"""

from __future__ import annotations

import functools
import hmac
import ipaddress
from dataclasses import dataclass
from urllib.parse import quote

from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response
from starlette.types import Scope, Send

from connectors.base import AgentRef, UpstreamRequest
from gateway.addresses import parse_address, within
from gateway.authn import session_id_in
from gateway.errors import AuthenticationRequired, BadRequest, ChannelgateError, NotFound
from gateway.forward_auth_memo import Answer, Question, row_tail
from gateway.inline_proxy import Checked, channel_plan, check_request, request_record
from gateway.pages import error_response, wants_html
from gateway.proxy.headers import client_address, identity_header_value
from gateway.proxy.paths import strip_query_values
from gateway.proxy.routes import upstream_url
from gateway.scope import RequestScope, scope_of
from gateway.services import Services

MOUNT = "/.channelgate/auth"
SECRET_HEADER = "x-channelgate-auth-secret"  # noqa: S105 - a header name
MODE_HEADER = "x-channelgate-auth-mode"
_MODES = frozenset({"", "redirect", "explain"})
_MOUNT_BYTES = MOUNT.encode()
_SECRET_BYTES = SECRET_HEADER.encode()
_MODE_BYTES = MODE_HEADER.encode()
#: Where ``answer_from_memo`` leaves the question for the full path, which keeps its answer under it.
_ASKED = "channelgate.forward_auth_question"
#: Set by ``memo_missed``: the memo was asked about this request already.
_MEMO_MISSED = "channelgate.forward_auth_memo_missed"


class OriginalRequest:
    """The request the proxy asks about; ``problem`` says why it cannot be judged, if it cannot."""

    __slots__ = ("envoy", "host", "method", "path", "problem", "query")

    def __init__(self, request: Request) -> None:
        headers = request.headers
        raw: bytes = request.scope.get("raw_path") or request.scope["path"].encode()
        self.problem: str | None = None
        self.envoy = raw != _MOUNT_BYTES
        if self.envoy:
            # Envoy ext_authz (HTTP): path_prefix + the original path; the original method, query and Host.
            self.method = request.method
            self.path = raw[len(MOUNT) :].decode("latin-1")
            self.query = request.scope.get("query_string", b"").decode("latin-1")
            self.host = headers.get("host")
            if not raw.startswith(_MOUNT_BYTES + b"/"):
                self.path, self.problem = "/", "the decision endpoint's path is not spelled as a proxy spells it"
            return
        original_method, forwarded_method = headers.get("x-original-method"), headers.get("x-forwarded-method")
        original_uri, forwarded_uri = headers.get("x-original-uri"), headers.get("x-forwarded-uri")
        self.method = (original_method or forwarded_method or request.method).upper()
        uri = original_uri or forwarded_uri
        self.path, _, self.query = (uri or "/").partition("?")
        self.host = headers.get("x-forwarded-host") or headers.get("host")
        if uri is None:
            self.problem = "the proxy did not say which request it asks about (X-Original-URI or X-Forwarded-Uri)"
        elif _differ(original_uri, forwarded_uri) or _differ(_upper(original_method), _upper(forwarded_method)):
            self.problem = "X-Original-* and X-Forwarded-* describe different requests"

    @property
    def uri(self) -> str:
        return self.path + (f"?{self.query}" if self.query else "")


@dataclass(frozen=True, slots=True)
class Asked:
    """The nginx form of a forward-auth request: the memo's question, and who asks."""

    question: Question
    secret: str
    peer: str


def ask(scope: Scope, services: Services) -> Asked | None:
    """The question in nginx's form (``OriginalRequest`` reads every form), in one pass over the headers, for
    ``services.forward_auth_memo``; None sends the request down the full path."""
    if scope.get("raw_path", _MOUNT_BYTES) != _MOUNT_BYTES or scope.get("query_string"):
        return None
    settings = services.settings
    device_header = services.policy.settings.device_header if services.policy else None
    device_name = device_header.lower().encode("latin-1") if device_header else b""
    uri = method = host = forwarded_host = device = None
    secret = ""
    raw: bytes
    for name, raw in scope["headers"]:
        if name == b"x-original-uri":
            uri = uri if uri is not None else raw.decode("latin-1")
        elif name == b"x-original-method":
            method = method if method is not None else raw.decode("latin-1")
        elif name == b"host":
            host = host if host is not None else raw.decode("latin-1")
        elif name == b"x-forwarded-host":
            forwarded_host = forwarded_host if forwarded_host is not None else raw.decode("latin-1")
        elif name == _SECRET_BYTES:
            secret = secret or raw.decode("latin-1")
        elif name in (b"x-forwarded-uri", b"x-forwarded-method", _MODE_BYTES):
            return None  # Traefik's spelling, or an answer mode: the full path reads those
        elif device_name and name == device_name:
            if device is not None:
                return None  # twice: the full path reads it as unknown (gateway/policy_point.py says why)
            device = raw.decode("latin-1")
    if uri is None:
        return None
    session_id = session_id_in(scope["headers"], services.cookies.session_name)
    if session_id is None:
        return None
    client = scope.get("client")
    peer = client[0] if client else "0.0.0.0"  # noqa: S104 - an address, not a bind
    proxies = settings.server.trusted_proxies
    client_ip = client_address(peer, scope["headers"], proxies) if proxies else peer
    method = (method or scope["method"]).upper()
    return Asked((session_id, method, uri, forwarded_host or host, client_ip, device), secret, peer)


def _differ(first: str | None, second: str | None) -> bool:
    return first is not None and second is not None and first != second


def _upper(method: str | None) -> str | None:
    return method.upper() if method is not None else None


@functools.lru_cache(maxsize=8)
def _networks(cidrs: tuple[str, ...]) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    return tuple(ipaddress.ip_network(c, strict=False) for c in cidrs)


@functools.lru_cache(maxsize=1024)
def _trusted_peer(peer: str, cidrs: tuple[str, ...]) -> bool:
    address = parse_address(peer)
    return address is not None and within(address, _networks(cidrs))


def _caller_allowed(request: Request, services: Services) -> bool:
    client = request.scope.get("client")
    return caller_allowed(services, client[0] if client else None, request.headers.get(SECRET_HEADER, ""))


def caller_allowed(services: Services, peer: str | None, sent: str) -> bool:
    """A peer in ``[forward_auth] trusted_callers`` that sent the shared secret."""
    settings = services.settings.forward_auth
    if not settings.enabled or settings.secret is None:
        return False
    if not peer or not _trusted_peer(peer, settings.trusted_callers):
        return False
    return hmac.compare_digest(sent.encode(), settings.secret.get_secret_value().encode())


async def answer_from_memo(services: Services, scope: Scope, send: Send) -> bool:
    """Answer from ``services.forward_auth_memo`` (gateway/forward_auth_memo.py) when a kept answer still
    holds; False when the request must take the full path (which then keeps its answer for next time)."""
    if scope.get(_MEMO_MISSED):
        return False
    asked = ask(scope, services)
    if asked is None:
        return False
    scope[_ASKED] = asked
    allowed = caller_allowed(services, asked.peer, asked.secret)
    return await services.forward_auth_memo.answer(asked, scope["headers"], services, allowed, send)


def memo_missed(scope: Scope, asked: Asked) -> None:
    """The memo was asked ``asked`` for this request (gateway/forward_auth_protocol.py) and missed: the full path
    decides, and keeps its answer under ``asked``, without asking the memo again (a second read, a second miss)."""
    scope[_ASKED] = asked
    scope[_MEMO_MISSED] = True


def answer_mode(request: Request, original: OriginalRequest) -> str:
    """The header ``X-Channelgate-Auth-Mode``, else ``?mode=`` on /.channelgate/auth itself (in Envoy's form the
    query string is the original request's: ``/phone/?mode=explain`` is for the console, not for us).

    ``explain`` named by either wins: nginx's explain location sets the header but passes on the URI the client
    chose, so a client's ``?mode=`` must never turn an explain call (which follows a refusal and never carries a
    credential) back into a default call answered with the credential. An unknown mode is the default."""
    query: bytes = request.scope.get("query_string", b"")
    asked = request.query_params.get("mode", "") if not original.envoy and b"mode=" in query else ""
    header = request.headers.get(MODE_HEADER, "")
    modes = (header.lower(), asked.lower())
    if "explain" in modes:
        return "explain"
    mode = modes[0] or modes[1]
    return mode if mode in _MODES else ""


async def forward_auth(request: Request) -> Response:
    services: Services = request.app.state.services
    if not _caller_allowed(request, services):
        raise NotFound("Not found.")
    original = OriginalRequest(request)
    mode = answer_mode(request, original)
    scope = scope_of(request, services.settings.server.trusted_proxies)
    log_path = strip_query_values(original.path, original.query)
    try:
        if original.problem is not None:
            raise BadRequest(f"The forward-auth request was refused: {original.problem} (see docs/forward-auth.md).")
        minute_before = int(services.clock() // 60)
        checked = await check_request(
            request,
            services,
            scope,
            original.method,
            raw_path=original.path.encode("latin-1", "replace"),
            query=original.query,
            host=original.host,
            via="forward-auth",
        )
        # The decision was made at a moment between these two readings. Its policy set is the one it names
        # (``engine_id``), not ``services.policy.engine`` now: a reload swaps that from a worker thread at any time.
        minute = int(services.clock() // 60)
        if checked.match.redirect:  # "/chat": the console's own redirect to "/chat/" decides nothing
            raise NotFound("No console is served at this address.")
        if mode == "explain":
            return RedirectResponse(original.uri, status_code=303, headers={"Cache-Control": "no-store"})
        response = await _allowed(request, services, scope, original, checked)
        asked: Asked | None = request.scope.get(_ASKED)
        if asked is not None and checked.access is None and minute == minute_before:
            _keep(services, asked, checked, scope, log_path, minute)
    except ChannelgateError as exc:
        response = _refused(request, exc, scope, original, mode)
    if mode != "explain":  # the explain call follows a refusal the default call already recorded
        detail = {"via": "forward-auth"}
        services.audit.submit(
            request_record(scope, original.method, log_path, status=response.status_code, detail=detail)
        )
    services.metrics.request(scope.channel or "-", response.status_code).inc()
    return response


async def _allowed(
    request: Request, services: Services, scope: RequestScope, original: OriginalRequest, checked: Checked
) -> Response:
    """200 with what the proxy sets upstream: the channel credential and the signed identity assertion."""
    services.audit.check_capacity()
    route = checked.match.route
    plan = channel_plan(request, services, route.channel)
    if plan.keeps_cookies:
        raise ChannelgateError(
            f"Channel {route.channel!r} uses a cookie_jar connector, which only the inline proxy supports (it must "
            "take the console's cookies out of every answer); route it through channelgate, not forward-auth."
        )
    data = checked.session.data
    upstream = UpstreamRequest(original.method, upstream_url(checked.match, checked.path, checked.query), [])
    await plan.connector.prepare(AgentRef(agent_id=data.agent_id, user_name=data.user_name, email=None), upstream)
    assert services.signer is not None
    assertion = services.signer.sign(data.agent_id, data.user_name, data.groups, route.channel, services.clock())
    response = Response(status_code=200)
    response.raw_headers.extend(
        [*raw_headers(upstream.headers), *raw_headers([(services.settings.assertion.header, assertion)])]
    )
    response.raw_headers.extend(answer_tail(checked))
    return response


def raw_headers(headers: list[tuple[str, str]]) -> list[tuple[bytes, bytes]]:
    return [(name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in headers]


def answer_tail(checked: Checked) -> tuple[tuple[bytes, bytes], ...]:
    """The headers of a 200 after the credential and the assertion: who, which channel, which policies, each
    percent-encoded (``identity_header_value``: a userName may be 김민수; docs/forward-auth.md, Headers)."""
    return tuple(
        raw_headers(
            [
                ("X-Channelgate-User", identity_header_value(checked.session.data.user_name)),
                ("X-Channelgate-Channel", identity_header_value(checked.match.route.channel)),
                ("X-Channelgate-Policy", identity_header_value(",".join(checked.decision.policy_ids))),
                ("Cache-Control", "no-store"),
            ]
        )
    )


def _keep(
    services: Services,
    asked: Asked,
    checked: Checked,
    scope: RequestScope,
    log_path: str,
    minute: int,
) -> None:
    """Keep an allowed answer for the same question (gateway/forward_auth_memo.py says when it is reused)."""
    assert scope.action is not None
    channel = checked.match.route.channel
    answer = Answer(
        data=checked.session.data,
        engine_id=checked.decision.engine_id,
        routes=services.routes,
        connector=services.connectors[channel],
        minute=minute,
        checked=checked,
        url=upstream_url(checked.match, checked.path, checked.query),
        tail=answer_tail(checked),
        counters=(services.metrics.decision(channel, True), services.metrics.request(channel, 200)),
        row_tail=row_tail(asked.question, checked, scope.action, log_path),
    )
    services.forward_auth_memo.keep(asked.question, answer)


def _refused(
    request: Request, exc: ChannelgateError, scope: RequestScope, original: OriginalRequest, mode: str
) -> Response:
    if mode == "":
        # nginx auth_request understands 401 and 403; anything else would be its 500. Fail closed either way.
        status = exc.status if exc.status in (401, 403, 500, 503) else 403
        return PlainTextResponse(
            exc.code, status_code=status, headers={"Cache-Control": "no-store", "X-Channelgate-Error": exc.code}
        )
    if isinstance(exc, AuthenticationRequired) and original.method in ("GET", "HEAD") and wants_html(request):
        location = "/.channelgate/login?rd=" + quote(original.uri, safe="")
        return RedirectResponse(location, status_code=302, headers={"Cache-Control": "no-store"})
    return error_response(request, exc, scope.request_id)
