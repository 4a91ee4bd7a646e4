"""Consoles on one origin behind a front proxy: what the Envoy and Traefik samples keep of a console's answer, as
channelgate's inline proxy does (tests/integration/test_console_isolation.py) and nginx's sample does
(tests/e2e/test_forward_auth_nginx_isolation.py).

:class:`ConsoleIsolationChecks` extends :class:`ForwardAuthChecks` with a hostile phone console (an echo console
whose ``/phone/evil`` answers whatever status and headers a test sets) and proves, through the proxy: headers that
act on the whole origin never reach the browser, no console cookie reaches it outside the console's prefix or
under a gateway or reserved name, and no service worker script is served. What a proxy can do beyond that (Envoy
rescopes cookies and redirects; Traefik can only drop cookies) is tested in its own module.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from gateway.proxy.console_scope import ORIGIN_WIDE
from tests.components.echo_gateway import EchoConsole
from tests.components.fronted_stack import FrontedStack, cookie_header
from tests.components.hostile_console import HostileConsole
from tests.e2e.forward_auth_checks import ForwardAuthChecks

#: What the inline proxy drops as origin-wide (gateway/proxy/headers.py ORIGIN_WIDE and Access-Control-*).
ORIGIN_WIDE_ANSWER = [
    ("Clear-Site-Data", '"cookies", "storage"'),
    ("Service-Worker-Allowed", "/"),
    ("Strict-Transport-Security", "max-age=0"),
    ("Origin-Agent-Cluster", "?0"),
    ("NEL", '{"report_to": "evil", "max_age": 31536000, "include_subdomains": true}'),
    ("Report-To", '{"group": "evil", "max_age": 31536000, "endpoints": [{"url": "https://evil.example/r"}]}'),
    ("Alt-Svc", 'h2=":9443"; ma=86400'),
    ("Access-Control-Allow-Origin", "https://evil.example"),
    ("Access-Control-Allow-Credentials", "true"),
    ("Access-Control-Allow-Methods", "DELETE"),
    ("Access-Control-Allow-Headers", "Authorization"),
    ("Access-Control-Expose-Headers", "X-Api-Key"),
    ("Access-Control-Max-Age", "86400"),
]
#: Cookies a console could use to toss one onto another console's path or the gateway's, or to shadow the
#: gateway's session cookie (a nameless one is sent back as ``channelgate=…``).
TOSSED_COOKIES = [
    ("Set-Cookie", "console_sid=abc; Path=/; Domain={host}; HttpOnly"),
    ("Set-Cookie", "=channelgate=planted; Path=/"),
    ("Set-Cookie", "channelgate=planted; Path=/"),
    ("Set-Cookie", "__Host-channelgate=planted; Path=/; Secure"),
    ("Set-Cookie", "__Secure-theme=dark; Path=/; Secure"),
    ("Set-Cookie", "sticky=1; Path=/chat/"),
]
RESERVED_NAMES = {"", "channelgate", "channelgate-login"}


def cookie_attributes(set_cookie: str) -> tuple[str, dict[str, str]]:
    """The name and the attributes (lower-case keys) of a ``Set-Cookie`` value, as a browser reads them."""
    pair, *attributes = set_cookie.split(";")
    name = pair.split("=", 1)[0].strip() if "=" in pair else ""
    parsed = {key.strip().lower(): value.strip() for key, _, value in (a.partition("=") for a in attributes)}
    return name, parsed


class ConsoleIsolationChecks(ForwardAuthChecks):
    """The shared checks with the phone console hostile (see the module docstring)."""

    @pytest.fixture(scope="class")
    @classmethod
    def echo(cls) -> EchoConsole:
        return HostileConsole("phone")

    @pytest.fixture
    def hostile(self, console: EchoConsole) -> Iterator[HostileConsole]:
        assert isinstance(console, HostileConsole)
        yield console
        console.status, console.answer = 200, []

    @staticmethod
    async def answer_of(
        stack: FrontedStack, carol: httpx.AsyncClient, path: str = "/phone/evil", **headers: str
    ) -> httpx.Response:
        """``path`` through the proxy as carol, from a client without a cookie jar (a planted cookie that got
        through must not sign carol out of the other tests)."""
        sent = {"Cookie": cookie_header(carol), "Accept": "application/json", **headers}
        async with httpx.AsyncClient() as client:
            return await client.get(stack.public_url + path, headers=sent)

    async def test_a_consoles_origin_wide_headers_never_reach_the_browser(
        self, stack: FrontedStack, carol: httpx.AsyncClient, hostile: HostileConsole
    ) -> None:
        hostile.answer = ORIGIN_WIDE_ANSWER
        answer = await self.answer_of(stack, carol)
        assert answer.status_code == 200 and answer.text == "evil", answer.text[:300]
        for name in ORIGIN_WIDE:
            assert name not in answer.headers, name
        assert not [name for name in answer.headers if name.startswith("access-control-")]

    async def test_no_console_cookie_reaches_the_browser_outside_its_prefix_or_under_a_reserved_name(
        self, stack: FrontedStack, carol: httpx.AsyncClient, hostile: HostileConsole
    ) -> None:
        hostile.answer = TOSSED_COOKIES
        answer = await self.answer_of(stack, carol)
        assert answer.status_code == 200, answer.text[:300]
        for set_cookie in answer.headers.get_list("set-cookie"):
            name, attributes = cookie_attributes(set_cookie)
            assert name.lower() not in RESERVED_NAMES and not name.lower().startswith(("__host-", "__secure-"))
            assert "domain" not in attributes, set_cookie
            assert attributes.get("path", "").startswith("/phone/"), set_cookie

    async def test_no_console_can_install_a_service_worker(
        self, stack: FrontedStack, console: EchoConsole, carol: httpx.AsyncClient
    ) -> None:
        before = len(console.seen)
        for headers in ({"Service-Worker": "script"}, {"Service-Worker": "Script"}):
            refused = await self.answer_of(stack, carol, "/phone/sw.js", **headers)
            assert refused.status_code == 403, refused.text[:300]
        async with httpx.AsyncClient() as anonymous:
            unsigned = await anonymous.get(stack.public_url + "/phone/sw.js", headers={"Service-Worker": "script"})
        assert unsigned.status_code == 403
        assert console.seen[before:] == []
        served = await self.answer_of(stack, carol, "/phone/sw.js")
        assert served.status_code == 200, served.text[:300]
