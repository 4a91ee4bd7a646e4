"""Forward-auth end to end through a real Envoy with deploy/envoy/forward-auth.yaml as shipped: its HTTP ext_authz
filter asks a gateway replica (Redis sessions, PostgreSQL) at /.channelgate/auth + the original path, with a real
oidc-provider login. The phone route goes to an echo console, so a test sees exactly what reached it.

Proves what every front proxy must (tests/e2e/forward_auth_checks.py, tests/e2e/console_isolation_checks.py with
the phone console hostile) and, for Envoy: a client's X-Original-URI describes nothing; spellings Envoy does not
normalise away are refused before the console; the sample's Lua filter keeps a console's cookies host-only under
its prefix and the URLs of its Location, Content-Location, Refresh and Link under its prefix, as the inline proxy
does, dropping what it cannot read for sure.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import ClassVar
from urllib.parse import urljoin, urlsplit

import httpx
import pytest

from tests.components.echo_gateway import EchoConsole
from tests.components.envoy_proxy import EnvoyProxy
from tests.components.fronted_stack import FrontedStack, cookie_header, raw_get
from tests.components.hostile_console import HostileConsole
from tests.components.ports import LOOPBACK, free_port
from tests.e2e.console_isolation_checks import TOSSED_COOKIES, ConsoleIsolationChecks

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "deploy" / "envoy" / "forward-auth.yaml"
SAMPLE_SECRET = "CHANGE-ME-forward-auth-secret-of-32-characters-or-more"


def envoy_bootstrap(stack: FrontedStack, console_port: int) -> str:
    """The sample with only its addresses and the secret changed."""
    text = SAMPLE.read_text(encoding="utf-8")
    changes = {
        "{address: 0.0.0.0, port_value: 8443}": f"{{address: {LOOPBACK}, port_value: {stack.proxy_port}}}",
        "port_value: 8000}": f"port_value: {stack.gateway_ports[0]}}}",
        "port_value: 8102}": f"port_value: {console_port}}}",
        'upstream: "127.0.0.1:8102"': f'upstream: "{LOOPBACK}:{console_port}"',
        "port_value: 9901}": f"port_value: {free_port()}}}",
        SAMPLE_SECRET: stack.secret,
    }
    for shipped, here in changes.items():
        assert text.count(shipped) == 1, shipped
        text = text.replace(shipped, here)
    return text


class TestForwardAuthThroughEnvoy(ConsoleIsolationChecks):
    # Envoy's form is judged on its request line: this describes nothing.
    forged: ClassVar[Mapping[str, str]] = {"X-Original-URI": "/chat/"}

    @pytest.fixture(scope="class")
    @classmethod
    def proxy(cls, stack: FrontedStack, echo: EchoConsole) -> Iterator[EnvoyProxy]:
        with EnvoyProxy(envoy_bootstrap(stack, echo.port), port=stack.proxy_port) as envoy:
            yield envoy

    @pytest.mark.parametrize(
        "path",
        [
            "/phone//calls",
            "/phone/calls;jsessionid=x",
            "/phone/%252e%252e/",
            "/phone/%2fcalls",
            "/phone/calls/%c3%a9",
            "/phone/../chat/",
        ],
    )
    async def test_a_path_envoy_and_the_console_could_read_differently_is_refused(
        self, stack: FrontedStack, console: EchoConsole, carol: httpx.AsyncClient, path: str
    ) -> None:
        before = len(console.seen)
        status, _ = await raw_get(stack.proxy_port, path, {"Cookie": cookie_header(carol)})
        assert status in (400, 403, 404), f"{path} -> {status}"
        assert console.seen[before:] == []

    async def test_envoy_keeps_a_consoles_cookies_host_only_under_its_prefix_and_drops_reserved_ones(
        self, stack: FrontedStack, carol: httpx.AsyncClient, hostile: HostileConsole
    ) -> None:
        hostile.answer = [
            *TOSSED_COOKIES,
            ("Set-Cookie", "pref=1; Path=/settings; Max-Age=60"),
            ("Set-Cookie", "bare=1"),
            ("Set-Cookie", "odd=1; Path=relative"),
        ]
        answer = await self.answer_of(stack, carol)
        assert answer.headers.get_list("set-cookie") == [
            "console_sid=abc; HttpOnly; Path=/phone/",
            "sticky=1; Path=/phone/chat/",
            "pref=1; Max-Age=60; Path=/phone/settings",
            "bare=1; Path=/phone/",
            "odd=1; Path=/phone/",
        ]

    @pytest.mark.parametrize(
        ("location", "kept"),
        [
            ("http://{host}/login?next=1", "/phone/login?next=1"),  # the console's view of its own origin
            ("http://{console}/settings#tab", "/phone/settings#tab"),  # its internal address is not leaked
            ("//{host}/calls", "/phone/calls"),
            ("http://{host}", "/phone/"),
            ("/inbox", "/phone/inbox"),
            # Read as a browser reads them: "\\" is "/", a tab does not count.
            ("/\\{host}/calls", "/phone/calls"),
            ("http:\\\\{console}\\settings", "/phone/settings"),
            ("/in\tbox", "/phone/inbox"),
            # Another site is the console's business; a relative reference stays under the prefix by itself.
            ("https://idp.example/authorize?x=1", "https://idp.example/authorize?x=1"),
            ("calls?day=1", "calls?day=1"),
            # A special scheme other than the page's (http here) needs no "//" and skips any number of slashes.
            ("https:{console}/settings", "/phone/settings"),
            ("https:///{console}/settings", "/phone/settings"),
            ("///{console}/settings", "/phone/settings"),
            # The page's own scheme without "//" is a relative reference: "http:/chat/x" is the path /chat/x.
            ("http:/chat/settings", "/phone/chat/settings"),
            # Dot segments are resolved before the prefix is added, so the result cannot climb out of it.
            ("/../chat/settings", "/phone/chat/settings"),
            ("/%2E%2e/chat/settings", "/phone/chat/settings"),
            ("http://{console}/../chat/settings", "/phone/chat/settings"),
            ("../chat/settings?x=/..", "/phone/chat/settings?x=/.."),  # relative to /phone/evil
        ],
    )
    async def test_envoy_keeps_a_consoles_redirects_under_its_prefix(
        self, stack: FrontedStack, carol: httpx.AsyncClient, hostile: HostileConsole, location: str, kept: str
    ) -> None:
        console = f"{LOOPBACK}:{hostile.port}"
        hostile.status = 302
        hostile.answer = [("Location", location.replace("{console}", console))]
        answer = await self.answer_of(stack, carol)
        assert answer.status_code == 302, answer.text[:300]
        assert answer.headers["location"] == kept.replace("{console}", console)
        landing = urlsplit(urljoin(stack.public_url + "/phone/evil", answer.headers["location"]))
        assert landing.netloc != console
        if landing.netloc == urlsplit(stack.public_url).netloc:
            assert landing.path.startswith("/phone/"), landing

    async def test_envoy_drops_a_redirect_whose_host_it_cannot_read_for_sure(
        self, stack: FrontedStack, carol: httpx.AsyncClient, hostile: HostileConsole
    ) -> None:
        # A browser percent-decodes a host: 127.0.0.%31 is 127.0.0.1, the console's address.
        hostile.status = 302
        hostile.answer = [("Location", f"//{LOOPBACK[:-1]}%{ord(LOOPBACK[-1]):02x}:{hostile.port}/settings")]
        answer = await self.answer_of(stack, carol)
        assert answer.status_code == 302, answer.text[:300]
        assert "location" not in answer.headers

    @pytest.mark.parametrize(
        ("name", "sent", "kept"),
        [
            # Refresh, read as the HTML refresh steps read it and written back as "N; url=…".
            ("Refresh", ["0; url=http://{console}/settings"], ["0; url=/phone/settings"]),
            ("Refresh", ["5;URL='/chat/inbox'"], ["5; url=/phone/chat/inbox"]),
            ("Refresh", ["0, //{console}/calls"], ["0; url=/phone/calls"]),
            ("Refresh", ["0; url=https://idp.example/x"], ["0; url=https://idp.example/x"]),  # another site
            ("Refresh", ["0; url='/../chat/x'"], ["0; url=/phone/chat/x"]),
            ("Refresh", ["soon; url=/chat/"], []),  # a browser ignores it
            ("Refresh", ["0; url=/a", "0; url=/chat/"], []),  # which one a browser follows is not certain
            # Content-Location, as Location.
            ("Content-Location", ["http://{console}/calls/1"], ["/phone/calls/1"]),
            ("Content-Location", ["/chat/inbox"], ["/phone/chat/inbox"]),
            # Link (RFC 8288): every target as Location, its parameters as written.
            (
                "Link",
                ["<http://{console}/app.js>; rel=preload; as=script"],
                ["</phone/app.js>; rel=preload; as=script"],
            ),
            (
                "Link",
                ['</chat/app.js>; rel="prefetch", <https://cdn.example/x.css>; rel=preload; as=style'],
                ['</phone/chat/app.js>; rel="prefetch", <https://cdn.example/x.css>; rel=preload; as=style'],
            ),
            (
                "Link",
                ['</sw.js>; rel="serviceworker"; scope="/", </style.css>; rel=preload', "</a.js>; rel=modulepreload"],
                ["</phone/style.css>; rel=preload", "</phone/a.js>; rel=modulepreload"],
            ),
            ("Link", ["</sw.js>; rel=serviceworker; scope=/"], []),
            ("Link", ['</x.css>; rel=preload; anchor="/chat/"'], []),
            ("Link", ['</x.png>; rel=preload; as=image; imagesrcset="/chat/a.png 2x"'], []),
            ("Link", ["/chat/x.css; rel=preload"], []),  # not RFC 8288: not read, not passed
            ("Link", ['</x.css>; rel="preload'], []),
        ],
    )
    async def test_envoy_keeps_a_consoles_refresh_content_location_and_link_under_its_prefix(
        self,
        stack: FrontedStack,
        carol: httpx.AsyncClient,
        hostile: HostileConsole,
        name: str,
        sent: list[str],
        kept: list[str],
    ) -> None:
        console = f"{LOOPBACK}:{hostile.port}"
        hostile.answer = [(name, value.replace("{console}", console)) for value in sent]
        answer = await self.answer_of(stack, carol)
        assert answer.status_code == 200 and answer.text == "evil", answer.text[:300]
        assert answer.headers.get_list(name) == kept
