"""Header hygiene between the browser, the gateway and a channel console.

The upstream trusts the identity the gateway sends (the signed assertion, the injected channel credential and
``X-Forwarded-*``), so a client copy of any of them must never get through (oauth2-proxy's header injector
removes client copies first). Names are compared after lower-casing and mapping ``_`` to ``-``: WSGI, PHP and
CGI upstreams fold both spellings onto the same variable, so ``X_Auth_Request_Email`` would otherwise shadow the
real header (oauth2-proxy CVE-2025-64484). As Werkzeug's ProxyFix warns, forwarding headers sent by a client
are believed only from configured proxies (ASVS 4.1.3); by default none is trusted.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Collection, Iterable, Sequence
from urllib.parse import quote

from gateway.addresses import IPAddress, parse_address, within
from gateway.errors import BadRequest
from gateway.proxy.console_scope import URL_FIELDS, ConsoleScope, console_set_cookie, is_origin_wide

#: RFC 9110 §7.6.1 hop-by-hop fields, plus the obsolete Keep-Alive / Proxy-Connection, plus fields the gateway
#: answers itself: ``Expect`` (uvicorn sends 100-continue) and ``Sec-WebSocket-*`` (the gateway terminates the
#: WebSocket handshake, RFC 6455 §4.1; subprotocols are forwarded from the ASGI scope instead).
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "proxy-authorization",
        "proxy-authenticate",
        "expect",
        "sec-websocket-key",
        "sec-websocket-version",
        "sec-websocket-extensions",
        "sec-websocket-protocol",
        "sec-websocket-accept",
    }
)

#: Headers that carry identity, the client address or the original URL. Compared on normalised names.
IDENTITY_EXACT = frozenset(
    {
        "forwarded",
        "x-forwarded",
        "x-real-ip",
        "x-client-ip",
        "true-client-ip",
        "cf-connecting-ip",
        "fastly-client-ip",
        "x-cluster-client-ip",
        "remote-user",
        "x-email",
        "x-groups",
        "x-rewrite-url",
        "x-host",
        # Method overrides would let a request authorised as GET run as DELETE upstream.
        "x-http-method-override",
        "x-http-method",
        "x-method-override",
    }
)
IDENTITY_PREFIXES = (
    "x-forwarded-",
    "x-channelgate-",
    "x-auth-request-",
    "x-remote-",
    "x-user",
    "x-original-",
    "x-webauth-",
    "x-authenticated-",
)

_REQUEST_DROP = frozenset({"host", "authorization"})

#: Left as they are in an identity header value: visible ASCII (RFC 9110 §5.5 ``VCHAR``) but ``%`` itself.
_IDENTITY_VALUE_SAFE = "".join(chr(c) for c in range(0x21, 0x7F) if chr(c) != "%")


class HeadersTooLarge(BadRequest):
    """The request's header block is larger than ``server.max_header_bytes`` (RFC 6585 §5)."""

    status = 431
    code = "headers_too_large"


def normalise_header_name(name: str) -> str:
    """Lower-case and map ``_`` to ``-``: the spelling every upstream stack may fold a header name into."""
    return name.strip().lower().replace("_", "-")


def is_identity_header(name: str) -> bool:
    """True for any spelling of a header that carries identity, client address or the original URL."""
    norm = normalise_header_name(name)
    return norm in IDENTITY_EXACT or norm.startswith(IDENTITY_PREFIXES)


def identity_header_value(value: str) -> str:
    """``value`` (a userName, a channel) fit for a header field: UTF-8, percent-encoded (RFC 3986 §2.1) but for
    visible ASCII, and ``%`` always, so any value decodes back exactly (``김민수`` is sent as
    ``%EA%B9%80%EB%AF%BC%EC%88%98``, ``alice@example.com`` as it is). HTTP carries only Latin-1 octets, and a
    name the IdP or a SCIM client chose may hold any letter, or a control character that would end the field."""
    return quote(value, safe=_IDENTITY_VALUE_SAFE)


def _connection_tokens(values: Iterable[str]) -> set[str]:
    return {normalise_header_name(t) for value in values for t in value.split(",") if t.strip()}


def check_header_size(headers: Sequence[tuple[bytes, bytes]], max_bytes: int) -> None:
    """Raise ``HeadersTooLarge`` when the names and values (plus ``: `` and CRLF) exceed ``max_bytes``."""
    total = sum(len(name) + len(value) + 4 for name, value in headers)
    if total > max_bytes:
        raise HeadersTooLarge(f"The request headers are too large ({total} bytes, the limit is {max_bytes}).")


def _strip_cookies(value: str, names: Collection[str]) -> str:
    """Remove the named cookies from a ``Cookie`` header value, keeping the others byte for byte."""
    kept = [
        pair.strip() for pair in value.split(";") if pair.strip() and pair.split("=", 1)[0].strip().lower() not in names
    ]
    return "; ".join(kept)


def sanitise_request_headers(
    headers: Sequence[tuple[bytes, bytes]],
    *,
    gateway_cookie_names: Collection[str],
    client_ip: str,
    scheme: str,
    host: str,
    also_remove: Collection[str] = (),
    max_header_bytes: int | None = None,
) -> list[tuple[str, str]]:
    """Return the client's headers fit to send upstream, with fresh ``X-Forwarded-For/-Proto/-Host``.

    ``also_remove`` names headers the gateway itself will add (the assertion header, a connector's credential
    header): client copies of them are dropped in any spelling. Cookie names are compared case-insensitively
    (RFC 6265bis §4.1.3 treats the ``__Host-`` prefix so); dropping a colliding upstream cookie is the safe side.
    """
    if max_header_bytes is not None:
        check_header_size(headers, max_header_bytes)
    # Each name is normalised once: this runs on every proxied request.
    decoded = [
        (n, normalise_header_name(n), v) for n, v in ((n.decode("latin-1"), v.decode("latin-1")) for n, v in headers)
    ]
    connection_listed = _connection_tokens(value for _, norm, value in decoded if norm == "connection")
    removed = {normalise_header_name(n) for n in also_remove}
    cookie_names = {n.lower() for n in gateway_cookie_names}
    has_transfer_encoding = any(norm == "transfer-encoding" for _, norm, _ in decoded)

    out: list[tuple[str, str]] = []
    for name, norm, value in decoded:
        if (
            norm in HOP_BY_HOP
            or norm in connection_listed
            or norm in _REQUEST_DROP
            or norm in removed
            or norm in IDENTITY_EXACT
            or norm.startswith(IDENTITY_PREFIXES)
            # RFC 9112 §6.3: with Transfer-Encoding, Content-Length must be ignored; the body is re-framed.
            or (norm == "content-length" and has_transfer_encoding)
        ):
            continue
        if norm == "cookie":
            value = _strip_cookies(value, cookie_names)
            if not value:
                continue
        out.append((name.lower(), value))
    out += [("x-forwarded-for", client_ip), ("x-forwarded-proto", scheme), ("x-forwarded-host", host)]
    return out


def _parse_forwarded_ip(value: str) -> IPAddress | None:
    """A hop of ``X-Forwarded-For`` as an address: quotes, IPv6 brackets and a port taken off."""
    value = value.strip().strip('"')
    if value.startswith("["):
        value = value[1 : value.find("]")]
    elif value.count(":") == 1:
        value = value.split(":", 1)[0]
    return parse_address(value)


def client_address(peer_ip: str, headers: Sequence[tuple[bytes, bytes]], trusted_proxies: Sequence[str]) -> str:
    """The client's address: ``peer_ip`` unless the peer is a trusted proxy, then the rightmost untrusted
    ``X-Forwarded-For`` hop (hops to its left were written by the client and prove nothing)."""
    networks = [ipaddress.ip_network(cidr, strict=False) for cidr in trusted_proxies]

    def trusted(ip: IPAddress) -> bool:
        return within(ip, networks)

    peer = _parse_forwarded_ip(peer_ip)
    if peer is None or not trusted(peer):
        return peer_ip
    hops = [
        hop
        for name, value in headers
        if normalise_header_name(name.decode("latin-1")) == "x-forwarded-for"
        for hop in value.decode("latin-1").split(",")
        if hop.strip()
    ]
    current = peer
    for hop in reversed(hops):
        ip = _parse_forwarded_ip(hop)
        if ip is None:
            break
        current = ip
        if not trusted(ip):
            break
    return str(current)


def sanitise_response_headers(
    headers: Iterable[tuple[str, str]],
    *,
    gateway_cookie_names: Collection[str],
    console: ConsoleScope | None = None,
    request_path: str | None = None,
) -> list[tuple[str, str]]:
    """A console's answer headers fit for the browser, in one pass.

    Dropped: hop-by-hop fields, origin-wide fields (``ORIGIN_WIDE``), any ``Set-Cookie`` for a gateway cookie
    (an upstream must not overwrite, or with ``Max-Age=0`` log out, the gateway session), a nameless one and one
    with a reserved ``__Host-``/``__Secure-`` name. With ``console``, cookies and the URLs of ``Location``,
    ``Content-Location``, ``Refresh`` and ``Link`` are kept under the console's prefix (``ConsoleScope``;
    ``request_path``, the path the console was sent, resolves their relative references). One
    origin cannot isolate consoles from each other's JavaScript; see docs/operations/hardening.md.
    """
    materialised = [(name, normalise_header_name(name), value) for name, value in headers]
    connection_listed = _connection_tokens(value for _, norm, value in materialised if norm == "connection")
    cookie_names = {n.lower() for n in gateway_cookie_names}
    out: list[tuple[str, str]] = []
    for name, norm, value in materialised:
        if norm in HOP_BY_HOP or norm in connection_listed or is_origin_wide(norm):
            continue
        if norm == "set-cookie":
            cookie = console_set_cookie(value, cookie_names, console)
            if cookie is None:
                continue
            value = cookie
        elif console is not None and norm in URL_FIELDS:
            kept = URL_FIELDS[norm](console, value, request_path)
            if kept is None:
                continue
            value = kept
        out.append((name.lower(), value))
    return out
