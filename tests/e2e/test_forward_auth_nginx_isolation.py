"""Consoles on one origin behind nginx: deploy/nginx/forward-auth.conf as shipped keeps a console's answer under its
own prefix, as channelgate's inline proxy does (tests/integration/test_console_isolation.py): its cookies and
redirects stay under /chat/, headers that act on the whole origin are dropped, and no service worker is installed.
The chat console is a hostile echo console answering ``/evil`` with the headers a test sets."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

import tests.components.echo_gateway as echo_gateway
from tests.components.echo_gateway import Deployment, deployment
from tests.components.hostile_console import HostileConsole
from tests.components.nginx_server import NginxServer
from tests.components.oidc_provider import OidcProviderFactory
from tests.components.ports import LOOPBACK

pytestmark = [pytest.mark.oidc, pytest.mark.timeout(120)]

SAMPLE = Path(__file__).resolve().parents[2] / "deploy" / "nginx" / "forward-auth.conf"
SAMPLE_SECRET = "CHANGE-ME-forward-auth-secret-of-32-characters-or-more"
SECRET = secrets.token_urlsafe(32)


@pytest.fixture
async def fronted(
    oidc_provider_factory: OidcProviderFactory, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[Deployment, NginxServer, HostileConsole]]:
    monkeypatch.setattr(echo_gateway, "EchoConsole", HostileConsole)
    async with deployment(
        oidc_provider_factory, extra_toml=f'[forward_auth]\nenabled = true\nsecret = "{SECRET}"\n'
    ) as gateway:
        server = SAMPLE.read_text(encoding="utf-8").replace("listen 8443;", "listen {port};")
        server = server.replace(SAMPLE_SECRET, SECRET)
        upstreams = [f"upstream channelgate {{ server {LOOPBACK}:{gateway.url.rsplit(':', 1)[1]}; }}"]
        upstreams += [
            f"upstream console_{name} {{ server {LOOPBACK}:{console.port}; }}"
            for name, console in gateway.consoles.items()
        ]
        nginx = NginxServer("\n".join(upstreams) + "\n" + server)
        nginx.start()
        chat = gateway.consoles["chat"]
        assert isinstance(chat, HostileConsole)
        try:
            yield gateway, nginx, chat
        finally:
            nginx.stop()


async def test_a_consoles_cookies_redirects_and_origin_wide_headers_stay_under_its_prefix_through_nginx(
    fronted: tuple[Deployment, NginxServer, HostileConsole],
) -> None:
    gateway, nginx, chat = fronted
    bob = await gateway.login("bob")  # chat-agents
    chat.status = 302
    chat.answer = [
        ("Set-Cookie", "console_sid=abc; Path=/; Domain=channelgate.example; HttpOnly"),
        ("Location", "http://{host}/login?next=1"),
        ("Clear-Site-Data", '"cookies", "storage"'),
        ("Service-Worker-Allowed", "/"),
        ("Strict-Transport-Security", "max-age=0"),
        ("Access-Control-Allow-Origin", "https://evil.example"),
        ("Access-Control-Allow-Credentials", "true"),
    ]
    answer = await bob.get(nginx.url + "/chat/evil", headers={"Accept": "application/json"})
    assert answer.status_code == 302, answer.text
    cookie = answer.headers["set-cookie"].replace(" ", "").lower()
    assert cookie.startswith("console_sid=abc;path=/chat/"), cookie
    # Host-only: no Domain, or an empty one, which a browser ignores (RFC 6265 §5.2.3).
    assert not [av for av in cookie.split(";") if av.startswith("domain=") and av != "domain="], cookie
    assert answer.headers["location"].endswith("/chat/login?next=1"), answer.headers["location"]
    for name in ("clear-site-data", "service-worker-allowed", "strict-transport-security"):
        assert name not in answer.headers
    assert not any(name.startswith("access-control-") for name in answer.headers)

    chat.answer = [("Location", "/inbox")]
    moved = await bob.get(nginx.url + "/chat/evil", headers={"Accept": "application/json"})
    assert moved.headers["location"].endswith("/chat/inbox")


async def test_no_console_can_install_a_service_worker_through_nginx(
    fronted: tuple[Deployment, NginxServer, HostileConsole],
) -> None:
    gateway, nginx, _ = fronted
    bob = await gateway.login("bob")
    refused = await bob.get(nginx.url + "/chat/sw.js", headers={"Service-Worker": "script"})
    assert refused.status_code == 403
    served = await bob.get(nginx.url + "/chat/sw.js", headers={"Accept": "application/json"})
    assert served.status_code == 200


async def test_a_consoles_link_and_content_location_do_not_reach_the_browser_through_nginx(
    fronted: tuple[Deployment, NginxServer, HostileConsole],
) -> None:
    # nginx rewrites only Location and Refresh (proxy_redirect): a Link or Content-Location would name the console's
    # own address or a path outside its prefix, and a Link can ask for a service worker scoped to the whole origin.
    gateway, nginx, chat = fronted
    bob = await gateway.login("bob")
    chat.answer = [
        ("Link", "</sw.js>; rel=serviceworker; scope=/"),
        ("Link", "<http://{host}/app.js>; rel=preload; as=script"),
        ("Content-Location", "http://{host}/inbox/1"),
    ]
    answer = await bob.get(nginx.url + "/chat/evil", headers={"Accept": "application/json"})
    assert answer.status_code == 200, answer.text
    assert "link" not in answer.headers and "content-location" not in answer.headers
