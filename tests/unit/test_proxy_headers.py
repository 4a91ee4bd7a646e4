"""Header hygiene: client copies of identity, forwarding and hop-by-hop headers never reach an upstream."""

from __future__ import annotations

from urllib.parse import unquote

import pytest

from gateway.proxy import (
    HeadersTooLarge,
    client_address,
    sanitise_request_headers,
    sanitise_response_headers,
)
from gateway.proxy.headers import identity_header_value

COOKIES = ("__Host-channelgate", "channelgate_csrf")

IDENTITY_SPELLINGS = [
    "X-Forwarded-For",
    "x_forwarded_for",
    "X-FORWARDED-HOST",
    "X-Forwarded-Proto",
    "x-forwarded-port",
    "X-Forwarded-User",
    "X-Forwarded",
    "Forwarded",
    "X-Real-IP",
    "x_real_ip",
    "X-Client-IP",
    "True-Client-IP",
    "CF-Connecting-IP",
    "X-Channelgate-Assertion",
    "X_Channelgate_User",
    "x-CHANNELGATE-groups",
    "X-Auth-Request-Email",
    "X_Auth_Request_User",
    "X-Auth-Request-Access-Token",
    "X-Remote-User",
    "X-Remote-Group",
    "Remote-User",
    "remote_user",
    "X-User",
    "X-User-Id",
    "X-Username",
    "X-Email",
    "X-Groups",
    "X-Original-URL",
    "X-Original-URI",
    "X-Rewrite-URL",
    "X-WEBAUTH-USER",
    "X-Authenticated-User",
    "X-HTTP-Method-Override",
]

HOP_BY_HOP = [
    "Connection",
    "Keep-Alive",
    "Proxy-Connection",
    "TE",
    "Trailer",
    "Transfer-Encoding",
    "Upgrade",
    "Proxy-Authorization",
    "Proxy-Authenticate",
    "Expect",
    "Sec-WebSocket-Key",
]


def sanitise(
    headers: list[tuple[str, str]], *, also_remove: tuple[str, ...] = (), max_header_bytes: int | None = None
) -> list[tuple[str, str]]:
    raw = [(n.encode("latin-1"), v.encode("latin-1")) for n, v in headers]
    return sanitise_request_headers(
        raw,
        gateway_cookie_names=COOKIES,
        client_ip="203.0.113.7",
        scheme="https",
        host="gw.example.com",
        also_remove=also_remove,
        max_header_bytes=max_header_bytes,
    )


def names(headers: list[tuple[str, str]]) -> list[str]:
    return [n for n, _ in headers]


@pytest.mark.parametrize("name", IDENTITY_SPELLINGS)
def test_every_spelling_of_an_identity_header_is_stripped(name: str) -> None:
    out = sanitise([(name, "admin@example.com"), ("Accept", "text/html")])
    assert "admin@example.com" not in [v for _, v in out]
    assert ("accept", "text/html") in out


@pytest.mark.parametrize("name", HOP_BY_HOP)
def test_hop_by_hop_headers_are_stripped(name: str) -> None:
    out = sanitise([(name, "value-from-client")])
    assert "value-from-client" not in [v for _, v in out]


def test_headers_listed_in_connection_are_stripped_in_any_spelling() -> None:
    out = sanitise([("Connection", "keep-alive, X-Secret_Thing"), ("x_secret_thing", "1"), ("X-Kept", "2")])
    assert names(out)[:1] == ["x-kept"]


def test_client_authorization_and_host_never_reach_the_upstream() -> None:
    out = sanitise([("Authorization", "Bearer stolen"), ("Host", "evil.example"), ("HOST", "x")])
    assert "authorization" not in names(out)
    assert "host" not in names(out)


def test_headers_the_gateway_will_inject_are_stripped_in_any_spelling() -> None:
    out = sanitise([("x_api_key", "client"), ("X-API-KEY", "client")], also_remove=("X-Api-Key",))
    assert "client" not in [v for _, v in out]


def test_fresh_forwarding_headers_describe_the_real_client() -> None:
    out = sanitise([("X-Forwarded-For", "1.2.3.4"), ("X-Forwarded-Proto", "http")])
    assert out[-3:] == [
        ("x-forwarded-for", "203.0.113.7"),
        ("x-forwarded-proto", "https"),
        ("x-forwarded-host", "gw.example.com"),
    ]
    assert sum(1 for n in names(out) if n == "x-forwarded-for") == 1


def test_gateway_cookies_are_removed_and_other_cookies_are_kept() -> None:
    out = sanitise([("Cookie", "__Host-channelgate=sess; lang=ko; channelgate_csrf=c; theme=dark")])
    assert out[0] == ("cookie", "lang=ko; theme=dark")


def test_a_cookie_header_holding_only_gateway_cookies_is_dropped() -> None:
    out = sanitise([("Cookie", "__Host-channelgate=sess")])
    assert "cookie" not in names(out)


def test_content_length_is_dropped_when_transfer_encoding_is_present() -> None:
    out = sanitise([("Content-Length", "5"), ("Transfer-Encoding", "chunked")])
    assert "content-length" not in names(out)
    assert "transfer-encoding" not in names(out)


def test_oversized_request_headers_are_refused_with_431() -> None:
    with pytest.raises(HeadersTooLarge) as caught:
        sanitise([("X-Big", "a" * 5000)], max_header_bytes=4096)
    assert caught.value.status == 431


def raw(*pairs: tuple[str, str]) -> list[tuple[bytes, bytes]]:
    return [(n.encode(), v.encode()) for n, v in pairs]


def test_forwarded_for_from_an_untrusted_peer_is_ignored() -> None:
    assert client_address("198.51.100.9", raw(("x-forwarded-for", "1.1.1.1")), ()) == "198.51.100.9"
    assert client_address("198.51.100.9", raw(("x-forwarded-for", "1.1.1.1")), ("10.0.0.0/8",)) == "198.51.100.9"


def test_forwarded_for_from_a_trusted_peer_yields_the_rightmost_untrusted_hop() -> None:
    headers = raw(("x-forwarded-for", "6.6.6.6, 203.0.113.7, 10.0.0.2"))
    assert client_address("10.0.0.1", headers, ("10.0.0.0/8",)) == "203.0.113.7"


def test_forwarded_for_joins_repeated_headers_in_order() -> None:
    headers = raw(("x-forwarded-for", "6.6.6.6"), ("x-forwarded-for", "203.0.113.7"))
    assert client_address("10.0.0.1", headers, ("10.0.0.0/8",)) == "203.0.113.7"


def test_garbage_in_forwarded_for_stops_the_walk_at_the_last_known_hop() -> None:
    headers = raw(("x-forwarded-for", "203.0.113.7, not-an-ip"))
    assert client_address("10.0.0.1", headers, ("10.0.0.0/8",)) == "10.0.0.1"


def test_a_trusted_peer_without_forwarded_for_is_the_client() -> None:
    assert client_address("10.0.0.1", [], ("10.0.0.0/8",)) == "10.0.0.1"


def test_ipv6_and_ported_hops_are_understood() -> None:
    headers = raw(("x-forwarded-for", "[2001:db8::1]:443, 203.0.113.7:5555"))
    assert client_address("::1", headers, ("::1/128",)) == "203.0.113.7"


def test_upstream_cannot_set_or_clear_the_gateway_session_cookie() -> None:
    out = sanitise_response_headers(
        [
            ("Set-Cookie", "__Host-channelgate=evil; Path=/; Secure"),
            ("set-cookie", "__host-CHANNELGATE=; Max-Age=0"),
            ("Set-Cookie", " channelgate_csrf =x"),
            ("Set-Cookie", "console=ok; Path=/"),
            ("Set-Cookie", "other=ok"),
            ("Content-Type", "text/html"),
        ],
        gateway_cookie_names=COOKIES,
    )
    assert out == [
        ("set-cookie", "console=ok; Path=/"),
        ("set-cookie", "other=ok"),
        ("content-type", "text/html"),
    ]


def test_response_hop_by_hop_headers_are_dropped_and_the_rest_kept() -> None:
    out = sanitise_response_headers(
        [
            ("Connection", "close, X-Internal"),
            ("X-Internal", "1"),
            ("Transfer-Encoding", "chunked"),
            ("Keep-Alive", "timeout=5"),
            ("Content-Encoding", "gzip"),
            ("Cache-Control", "no-store"),
        ],
        gateway_cookie_names=COOKIES,
    )
    assert out == [("content-encoding", "gzip"), ("cache-control", "no-store")]


@pytest.mark.parametrize(
    ("value", "sent"),
    [
        ("alice@example.com", "alice@example.com"),
        ("김민수", "%EA%B9%80%EB%AF%BC%EC%88%98"),
        ("Łukasz", "%C5%81ukasz"),
        ("李明", "%E6%9D%8E%E6%98%8E"),
        ("Zoë", "Zo%C3%AB"),
        ("100%", "100%25"),
        ("Kim Minsu", "Kim%20Minsu"),
        ("eve\r\nX-Channelgate-Assertion: forged", "eve%0D%0AX-Channelgate-Assertion:%20forged"),
        ("tab\tnul\x00del\x7f", "tab%09nul%00del%7F"),
    ],
)
def test_an_identity_header_value_is_visible_ascii_that_decodes_back_to_the_name(value: str, sent: str) -> None:
    assert identity_header_value(value) == sent
    assert all("!" <= char <= "~" for char in sent)  # RFC 9110 §5.5 VCHAR: any proxy can carry and log it
    assert unquote(sent, errors="strict") == value


def test_a_trusted_proxy_named_in_ipv4_mapped_form_is_still_trusted() -> None:
    # A dual-stack listener reports an IPv4 peer as ::ffff:a.b.c.d (RFC 4291 §2.5.5.2).
    headers = raw(("x-forwarded-for", "203.0.113.7"))
    assert client_address("::ffff:10.0.0.1", headers, ("10.0.0.0/8",)) == "203.0.113.7"
    hops = raw(("x-forwarded-for", "203.0.113.7, ::ffff:10.0.0.2"))
    assert client_address("10.0.0.1", hops, ("10.0.0.0/8",)) == "203.0.113.7"
