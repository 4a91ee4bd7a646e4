"""A console's answer kept under its prefix on the gateway's one origin (gateway/proxy/console_scope.py): its
cookies host-only under the prefix, its redirects and other answer URLs never leaving it nor naming the console's
address, fields that act on the whole origin dropped."""

from __future__ import annotations

import pytest

from gateway.proxy import ConsoleScope, console_scope, sanitise_response_headers

COOKIES = ("__Host-channelgate", "channelgate_csrf")


CHAT = console_scope("/chat/", True, "http://10.0.0.5:8080", "https://gw.example")
CHAT_UNDER_BASE = console_scope("/chat/", True, "http://10.0.0.5:8080/base/", "https://gw.example")
CRM_UNSTRIPPED = console_scope("/crm/", False, "http://crm.internal", "https://gw.example")
JAR = console_scope("/jar/", True, "http://10.0.0.6", "https://gw.example", rewrite_cookies=False)


def _cookie_out(value: str, console: ConsoleScope | None) -> list[str]:
    out = sanitise_response_headers([("Set-Cookie", value)], gateway_cookie_names=COOKIES, console=console)
    return [v for _, v in out]


@pytest.mark.parametrize(
    ("console", "sent", "browser_gets"),
    [
        (CHAT, "sid=1; Path=/; HttpOnly", "sid=1; HttpOnly; Path=/chat/"),
        (CHAT, "sid=1; Path=/phone/", "sid=1; Path=/chat/phone/"),
        (CHAT, "sid=1", "sid=1; Path=/chat/"),
        (CHAT, "sid=1; Path=relative", "sid=1; Path=/chat/"),
        (CHAT, "sid=1; Domain=gw.example; Path=/a; Secure; path=/b", "sid=1; Secure; Path=/chat/b"),
        (CHAT, "sid=1; domain=.example; SameSite=Lax", "sid=1; SameSite=Lax; Path=/chat/"),
        (CHAT_UNDER_BASE, "sid=1; Path=/base/app", "sid=1; Path=/chat/app"),
        (CRM_UNSTRIPPED, "sid=1; Path=/crm/app", "sid=1; Path=/crm/app"),
        (CRM_UNSTRIPPED, "sid=1; Path=/", "sid=1; Path=/crm/"),
        (CRM_UNSTRIPPED, "sid=1; Path=/crmx", "sid=1; Path=/crm/"),
        (JAR, "sid=1; Path=/; Domain=10.0.0.6", "sid=1; Path=/; Domain=10.0.0.6"),
        (JAR, "__Host-sid=1; Path=/; Secure", "__Host-sid=1; Path=/; Secure"),
        (None, "sid=1; Path=/", "sid=1; Path=/"),
    ],
)
def test_a_console_cookie_is_host_only_and_kept_under_the_prefix_but_a_cookie_jars_is_left_for_its_connector(
    console: ConsoleScope | None, sent: str, browser_gets: str
) -> None:
    assert _cookie_out(sent, console) == [browser_gets]


@pytest.mark.parametrize("console", [CHAT, JAR, None])
@pytest.mark.parametrize(
    "sent",
    [
        "=__Host-channelgate=" + "A" * 43 + "; Path=/",  # nameless: the browser sends it as the gateway cookie
        "=x",
        "novalue",  # nameless too (RFC 6265bis §5.6: no "=" means an empty name)
        " =x; Path=/",
        "__HOST-CHANNELGATE=x",
        "Channelgate_Csrf=x",
    ],
)
def test_a_nameless_or_gateway_named_set_cookie_never_reaches_the_browser(
    console: ConsoleScope | None, sent: str
) -> None:
    assert _cookie_out(sent, console) == []


@pytest.mark.parametrize("console", [CHAT, None])
@pytest.mark.parametrize("sent", ["__Host-console=1; Path=/; Secure", "__secure-console=1; Secure"])
def test_a_console_cookie_with_a_name_prefix_reserved_for_the_origin_is_dropped(
    console: ConsoleScope | None, sent: str
) -> None:
    assert _cookie_out(sent, console) == []


@pytest.mark.parametrize(
    ("console", "sent", "browser_gets"),
    [
        (CHAT, "http://10.0.0.5:8080/login?next=%2F#top", "https://gw.example/chat/login?next=%2F#top"),
        (CHAT, "HTTP://10.0.0.5:8080", "https://gw.example/chat/"),
        (CHAT, "//10.0.0.5:8080/x", "https://gw.example/chat/x"),
        (CHAT, "/login", "/chat/login"),
        (CHAT, "/phone/settings", "/chat/phone/settings"),
        (CHAT, "/\\evil.example/", "/\\evil.example/"),  # //evil.example/ to a browser: another site
        (CHAT, "\x01/phone/x", "/chat/phone/x"),  # a browser strips C0 controls and spaces around a URL
        (CHAT, "/pho\tne/x", "/chat/phone/x"),  # and removes tabs and newlines in it
        (CHAT, "\\phone\\x", "/chat/phone/x"),  # "\" is "/" in an http(s) URL
        (CHAT, "\\\\10.0.0.5:8080\\x", "https://gw.example/chat/x"),
        (CHAT, "///10.0.0.5:8080/x", "https://gw.example/chat/x"),  # extra slashes before a host are skipped
        (CHAT, "http:10.0.0.5:8080/x", "https://gw.example/chat/x"),  # a special scheme needs no "//"
        (CHAT, "https:/phone/x", "/chat/phone/x"),  # the page's own scheme without "//": a relative reference
        (CHAT, "mailto:agent@example.com", "mailto:agent@example.com"),
        (CHAT, "http://10.0.0.5:9090/x", "http://10.0.0.5:9090/x"),
        (CHAT, "https://idp.example/authorize", "https://idp.example/authorize"),
        (CHAT, "//idp.example/authorize", "//idp.example/authorize"),
        (CHAT, "next", "next"),
        (CHAT, "http://[bad/", "http://[bad/"),
        (CHAT_UNDER_BASE, "http://10.0.0.5:8080/base/login", "https://gw.example/chat/login"),
        (CHAT_UNDER_BASE, "/base/login", "/chat/login"),
        (CRM_UNSTRIPPED, "http://crm.internal:80/crm/home", "https://gw.example/crm/home"),
        (CRM_UNSTRIPPED, "/crm/a/../b", "/crm/b"),
        (None, "http://10.0.0.5:8080/login", "http://10.0.0.5:8080/login"),
    ],
)
def test_a_console_redirect_to_itself_stays_under_its_prefix_and_other_sites_pass(
    console: ConsoleScope | None, sent: str, browser_gets: str
) -> None:
    out = sanitise_response_headers([("Location", sent)], gateway_cookie_names=COOKIES, console=console)
    assert out == [("location", browser_gets)]


@pytest.mark.parametrize(
    ("console", "sent", "browser_gets"),
    [
        (CHAT, "/../phone/settings", "/chat/phone/settings"),  # not /chat/../phone/…, which is /phone/… to a browser
        (CHAT, "/%2e%2e/phone/settings", "/chat/phone/settings"),  # a browser reads %2e as "."
        (CHAT, "/a/.%2E/%2E./../phone?x=/../#/..", "/chat/phone?x=/../#/.."),  # query and fragment are not paths
        (CHAT, "\\..\\phone\\x", "/chat/phone/x"),
        (CHAT, "https:/../phone/x", "/chat/phone/x"),
        (CHAT, "/a/b/..", "/chat/a/"),
        (CHAT, "http://10.0.0.5:8080/../phone/x", "https://gw.example/chat/phone/x"),
        (CHAT, "//10.0.0.5:8080/%2e%2E/phone/x", "https://gw.example/chat/phone/x"),
        (CHAT_UNDER_BASE, "/base/../../phone/x", "/chat/phone/x"),
        (CRM_UNSTRIPPED, "http://crm.internal/crm/../crm/a", "https://gw.example/crm/a"),
    ],
)
def test_dot_segments_in_a_console_redirect_are_resolved_before_the_prefix_so_it_cannot_climb_out(
    console: ConsoleScope, sent: str, browser_gets: str
) -> None:
    out = sanitise_response_headers([("Location", sent)], gateway_cookie_names=COOKIES, console=console)
    assert out == [("location", browser_gets)]


@pytest.mark.parametrize(
    ("console", "request_path", "sent", "browser_gets"),
    [
        (CHAT, "/evil", "../phone/settings", "/chat/phone/settings"),  # from /chat/evil: /phone/settings
        (CHAT, "/a/b/c", "../d?q#f", "/chat/a/d?q#f"),
        (CHAT, "/a/b", "%2e%2e/%2E%2e/x", "/chat/x"),
        (CHAT, "/a/b", "..\\..\\phone", "/chat/phone"),
        (CHAT, "/a/b", "https:../phone", "/chat/phone"),  # the page's own scheme without "//": relative
        (CHAT, "/a/b", "./c", "/chat/a/c"),
        (CHAT, "/a/b", "next", "next"),  # no dot segment: it stays in the page's directory, under the prefix
        (CHAT, "/a/b", "?page=2", "?page=2"),
        (CHAT_UNDER_BASE, "/base/a/b", "../../../phone", "/chat/phone"),
        (CRM_UNSTRIPPED, "/crm/a/b", "../c", "/crm/c"),
    ],
)
def test_a_relative_console_redirect_is_resolved_against_the_request_and_kept_under_the_prefix(
    console: ConsoleScope, request_path: str, sent: str, browser_gets: str
) -> None:
    out = sanitise_response_headers(
        [("Location", sent)], gateway_cookie_names=COOKIES, console=console, request_path=request_path
    )
    assert out == [("location", browser_gets)]


@pytest.mark.parametrize(
    ("console", "sent", "browser_gets"),
    [
        (CHAT, "https://gw.example/phone/settings", "https://gw.example/chat/phone/settings"),
        (CHAT, "https://GW.example:443/chat/x?a=1", "https://gw.example/chat/x?a=1"),  # already under the prefix
        (CHAT, "https://gw.example/chat/../phone/x", "https://gw.example/chat/phone/x"),
        (CHAT, "//gw.example./phone/x", "https://gw.example/chat/phone/x"),
        (CHAT, "http:gw.example/phone/x", "https://gw.example/chat/phone/x"),
        (CHAT, "http://gw.example:8443/phone/x", "https://gw.example/chat/phone/x"),  # HSTS: the same origin
        (CHAT_UNDER_BASE, "https://gw.example/base/x", "https://gw.example/chat/base/x"),  # no upstream base here
        (CRM_UNSTRIPPED, "https://gw.example/crm/a", "https://gw.example/crm/a"),
        (CHAT, "https://gw.example.evil/phone/x", "https://gw.example.evil/phone/x"),  # another site
    ],
)
def test_a_console_redirect_to_the_gateways_own_host_is_kept_under_the_prefix(
    console: ConsoleScope, sent: str, browser_gets: str
) -> None:
    out = sanitise_response_headers([("Location", sent)], gateway_cookie_names=COOKIES, console=console)
    assert out == [("location", browser_gets)]


CHAT_ON_IPV6 = console_scope("/chat/", True, "http://[::1]:8080", "https://gw.example")


@pytest.mark.parametrize(
    ("console", "sent", "browser_gets"),
    [
        # 10.0.0.5 in the spellings a browser's IPv4 parser accepts (WHATWG URL): one number, hex, octal, 2-3 parts.
        (CHAT, "http://167772165:8080/x", "https://gw.example/chat/x"),
        (CHAT, "http://0xa000005:8080/x", "https://gw.example/chat/x"),
        (CHAT, "http://0XA.0.0.5:8080/x", "https://gw.example/chat/x"),
        (CHAT, "http://012.0.0.05:8080/x", "https://gw.example/chat/x"),
        (CHAT, "http://10.5:8080/x", "https://gw.example/chat/x"),
        (CHAT, "http://10.0.5:8080/x", "https://gw.example/chat/x"),
        (CHAT, "http://0xa.0x5:8080/x", "https://gw.example/chat/x"),
        (CHAT, "http://10.0.0.5.:8080/x", "https://gw.example/chat/x"),
        (CHAT, "//167772165:8080/x", "https://gw.example/chat/x"),
        (CHAT, "http:0xa000005:8080/x", "https://gw.example/chat/x"),
        # Percent-encoded host bytes are decoded before the host is parsed; fullwidth digits and dots are mapped.
        (CHAT, "http://%31%30.0.0.5:8080/x", "https://gw.example/chat/x"),
        (CHAT, "http://%30%78a000005:8080/x", "https://gw.example/chat/x"),
        (CHAT, "http://\uff11\uff10\u3002\uff10.0.5:8080/x", "https://gw.example/chat/x"),
        # The gateway's own host spelled otherwise is still the gateway's.
        (CHAT, "https://%67w.example/phone/x", "https://gw.example/chat/phone/x"),
        (CHAT, "https://GW%2Eexample/phone/x", "https://gw.example/chat/phone/x"),
        # An IPv6 upstream compared in canonical form.
        (CHAT_ON_IPV6, "http://[0:0:0:0:0:0:0:1]:8080/x", "https://gw.example/chat/x"),
        (CHAT_ON_IPV6, "http://[::0001]:8080/x", "https://gw.example/chat/x"),
        # Other addresses and sites still pass.
        (CHAT, "http://167772166:8080/x", "http://167772166:8080/x"),
        (CHAT, "http://0xa000005:9090/x", "http://0xa000005:9090/x"),
        (CHAT, "https://10.0.0.5.example/x", "https://10.0.0.5.example/x"),
        (CHAT_ON_IPV6, "http://[::2]:8080/x", "http://[::2]:8080/x"),
    ],
)
def test_any_host_spelling_a_browser_reads_as_the_upstream_or_the_gateway_is_kept_under_the_prefix(
    console: ConsoleScope, sent: str, browser_gets: str
) -> None:
    out = sanitise_response_headers([("Location", sent)], gateway_cookie_names=COOKIES, console=console)
    assert out == [("location", browser_gets)]


@pytest.mark.parametrize(
    "sent",
    [
        "http://4294967296:8080/x",  # overflows 32 bits
        "http://256.0.0.5:8080/x",
        "http://10.0.0.0x100:8080/x",
        "http://10.0.0.09:8080/x",  # "09" is not octal
        "http://1.2.3.4.5:8080/x",
        "http://internal.0x:8080/x",  # ends in a number, so read as IPv4, and fails
        "http://%25%31%30.0.0.5:8080/x",  # "%" is left after decoding once
        "http://%ff.example/x",  # not UTF-8
    ],
)
@pytest.mark.parametrize("name", ["Location", "Content-Location", "Refresh", "Link"])
def test_a_console_url_whose_host_a_browser_rejects_is_dropped(sent: str, name: str) -> None:
    value = {"Refresh": f"0; url={sent}", "Link": f"<{sent}>; rel=prefetch"}.get(name, sent)
    assert sanitise_response_headers([(name, value)], gateway_cookie_names=COOKIES, console=CHAT) == []


@pytest.mark.parametrize(
    ("console", "request_path", "sent"),
    [
        (CRM_UNSTRIPPED, "/crm/a", "/login"),  # the console's paths are public ones: /login is not its own
        (CRM_UNSTRIPPED, "/crm/a", "/crm/../phone/x"),
        (CRM_UNSTRIPPED, "/crm/a", "../phone/x"),
        (CRM_UNSTRIPPED, "/crm/a", "http://crm.internal/login"),
        (CRM_UNSTRIPPED, "/crm/a", "https://gw.example/phone/x"),
        (CHAT, None, "../phone/x"),  # nothing to resolve it against: not guessed at
    ],
)
@pytest.mark.parametrize("name", ["Location", "Content-Location", "Refresh", "Link"])
def test_a_console_url_that_would_leave_the_prefix_and_cannot_be_kept_under_it_is_dropped(
    console: ConsoleScope, request_path: str | None, sent: str, name: str
) -> None:
    value = {"Refresh": f"0; url={sent}", "Link": f"<{sent}>; rel=prefetch"}.get(name, sent)
    out = sanitise_response_headers(
        [(name, value)], gateway_cookie_names=COOKIES, console=console, request_path=request_path
    )
    assert out == []


@pytest.mark.parametrize(
    "name",
    [
        "Clear-Site-Data",
        "Service-Worker-Allowed",
        "Strict-Transport-Security",
        "Origin-Agent-Cluster",
        "Access-Control-Allow-Origin",
        "access-control-allow-credentials",
        "Access_Control_Expose_Headers",
    ],
)
@pytest.mark.parametrize("console", [CHAT, None])
def test_a_console_cannot_send_headers_that_act_on_the_whole_origin(console: ConsoleScope | None, name: str) -> None:
    out = sanitise_response_headers(
        [(name, "x"), ("Content-Type", "text/html")], gateway_cookie_names=COOKIES, console=console
    )
    assert out == [("content-type", "text/html")]


@pytest.mark.parametrize(
    ("console", "sent", "browser_gets"),
    [
        (CHAT, "0; url=http://10.0.0.5:8080/x?a=1", "0; url=https://gw.example/chat/x?a=1"),
        (CHAT, "0;URL='http://10.0.0.5:8080/x'", "0; url=https://gw.example/chat/x"),
        (CHAT, "5, /phone/x", "5; url=/chat/phone/x"),  # no "url=": the rest is the URL
        (CHAT, "0 /phone/x", "0; url=/chat/phone/x"),
        (CHAT, '1.5; url = "/phone/x"ignored', "1.5; url=/chat/phone/x"),  # what follows the quote is ignored
        (CHAT, "0; urlx", "0; url=urlx"),  # "url" without "=" is part of a relative URL
        (CHAT, "0; url=https://idp.example/a", "0; url=https://idp.example/a"),
        (CHAT, "30", "30"),  # reloads the page itself
        (CHAT_UNDER_BASE, "0; url=/base/login", "0; url=/chat/login"),
        (CRM_UNSTRIPPED, "0; url=http://crm.internal/crm/a", "0; url=https://gw.example/crm/a"),
        (CRM_UNSTRIPPED, "0; url=/crm/login", "0; url=/crm/login"),
        (CHAT, "0; url=/../phone/x", "0; url=/chat/phone/x"),
        (CHAT, "0; url=https://gw.example/phone/x", "0; url=https://gw.example/chat/phone/x"),
        (None, "0; url=http://10.0.0.5:8080/x", "0; url=http://10.0.0.5:8080/x"),
    ],
)
def test_a_console_refresh_goes_where_its_location_would(
    console: ConsoleScope | None, sent: str, browser_gets: str
) -> None:
    out = sanitise_response_headers([("Refresh", sent)], gateway_cookie_names=COOKIES, console=console)
    assert out == [("refresh", browser_gets)]


@pytest.mark.parametrize(
    "sent",
    [
        "soon; url=/phone/",  # no delay: browsers ignore it, and we cannot say what another reader would do
        "; url=/phone/",
        "0x; url=/phone/",
        "0; url=\"'/phone/x",  # its URL would start with a quote, which a browser reads as a quote around it
    ],
)
def test_a_refresh_a_browser_would_not_read_as_we_do_is_dropped(sent: str) -> None:
    assert sanitise_response_headers([("Refresh", sent)], gateway_cookie_names=COOKIES, console=CHAT) == []


@pytest.mark.parametrize(
    ("console", "sent", "browser_gets"),
    [
        (CHAT, "http://10.0.0.5:8080/doc/1", "https://gw.example/chat/doc/1"),
        (CHAT, "/phone/doc", "/chat/phone/doc"),
        (CHAT, "doc/1", "doc/1"),
        (CRM_UNSTRIPPED, "http://crm.internal/crm/doc", "https://gw.example/crm/doc"),
    ],
)
def test_a_console_content_location_follows_the_location_rules(
    console: ConsoleScope, sent: str, browser_gets: str
) -> None:
    out = sanitise_response_headers([("Content-Location", sent)], gateway_cookie_names=COOKIES, console=console)
    assert out == [("content-location", browser_gets)]


@pytest.mark.parametrize(
    ("console", "sent", "browser_gets"),
    [
        (
            CHAT,
            "<http://10.0.0.5:8080/a.css>; rel=preload; as=style",
            "<https://gw.example/chat/a.css>; rel=preload; as=style",
        ),
        (
            CHAT,
            "</phone/app.js>;rel=prefetch,</b.js>; rel=modulepreload",
            "</chat/phone/app.js>; rel=prefetch, </chat/b.js>; rel=modulepreload",
        ),
        (CHAT, "<//10.0.0.5:8080/>; rel=preconnect", "<https://gw.example/chat/>; rel=preconnect"),
        (CHAT, "<https://cdn.example/x.js>; rel=preload", "<https://cdn.example/x.js>; rel=preload"),
        (CHAT, '</a>; title="x, y; <z>"; rel=next', '</chat/a>; title="x, y; <z>"; rel=next'),
        (CHAT, "</a.css>; rel=preload; type=text/css;", "</chat/a.css>; rel=preload; type=text/css"),
        (CHAT, '</sw.js>; rel=serviceworker; scope="/", </a.css>; rel=preload', "</chat/a.css>; rel=preload"),
        (CRM_UNSTRIPPED, "<http://crm.internal/crm/a.js>; rel=preload", "<https://gw.example/crm/a.js>; rel=preload"),
        (CHAT, "</../phone/a.js>; rel=prefetch", "</chat/phone/a.js>; rel=prefetch"),
        (CHAT, "<https://gw.example/phone/a.js>; rel=prefetch", "<https://gw.example/chat/phone/a.js>; rel=prefetch"),
        (None, "<http://10.0.0.5:8080/a.css>; rel=preload", "<http://10.0.0.5:8080/a.css>; rel=preload"),
    ],
)
def test_a_console_link_targets_follow_the_location_rules(
    console: ConsoleScope | None, sent: str, browser_gets: str
) -> None:
    out = sanitise_response_headers([("Link", sent)], gateway_cookie_names=COOKIES, console=console)
    assert out == [("link", browser_gets)]


@pytest.mark.parametrize(
    "sent",
    [
        '</chat/sw.js>; rel="serviceworker"; scope="/"',  # a worker scoped over every console
        '</chat/sw.js>; rel="preload ServiceWorker"',
        "</chat/sw.js>; rel*=serviceworker",
        '</a.png>; rel=preload; as=image; imagesrcset="/phone/a.png 1x, /phone/b.png 2x"',
        '</a>; rel=prefetch; anchor="/phone/"',
        "/phone/a.js; rel=prefetch",  # not a link-value: the whole field is dropped, not guessed at
        '</a>; rel="unterminated',
        "</a; rel=prefetch",
        "</a>; =x",
        '</a>; rel=pre"load',
    ],
)
def test_a_link_that_acts_beyond_the_page_or_cannot_be_read_is_dropped(sent: str) -> None:
    assert sanitise_response_headers([("Link", sent)], gateway_cookie_names=COOKIES, console=CHAT) == []


@pytest.mark.parametrize(
    ("name", "sent", "browser_gets"),
    [
        ("Refresh", "0; url=../phone/settings", "0; url=/chat/phone/settings"),
        ("Refresh", "0; url=%2e%2e/phone/settings", "0; url=/chat/phone/settings"),
        ("Content-Location", "../phone/doc", "/chat/phone/doc"),
        (
            "Link",
            "<../phone/app.js>; rel=prefetch, <b.js>; rel=prefetch",
            "</chat/phone/app.js>; rel=prefetch, <b.js>; rel=prefetch",
        ),
    ],
)
def test_relative_refresh_content_location_and_link_urls_are_resolved_against_the_request_under_the_prefix(
    name: str, sent: str, browser_gets: str
) -> None:
    out = sanitise_response_headers([(name, sent)], gateway_cookie_names=COOKIES, console=CHAT, request_path="/evil")
    assert out == [(name.lower(), browser_gets)]
