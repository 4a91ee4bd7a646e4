"""Consoles share the gateway's one origin: a console's answer must stay under its own prefix.

A console that a hostile party controls (chat) answers ``/evil*`` with whatever status and headers a test sets,
as a compromised or malicious third-party console could. What one origin cannot isolate (a console's own
JavaScript) is in docs/operations/hardening.md.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from urllib.parse import urljoin, urlsplit

import httpx
import pytest

import tests.components.echo_gateway as echo_gateway
from gateway.storage.access_log import AccessRecord
from tests.components.echo_gateway import Deployment, deployment
from tests.components.hostile_console import HostileConsole
from tests.components.oidc_provider import OidcProviderFactory

pytestmark = [pytest.mark.oidc, pytest.mark.timeout(90)]

JSON = {"Accept": "application/json"}


@pytest.fixture
async def gateway(
    oidc_provider_factory: OidcProviderFactory, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Deployment]:
    monkeypatch.setattr(echo_gateway, "EchoConsole", HostileConsole)
    async with deployment(oidc_provider_factory) as deployed:
        yield deployed


def _hostile(gateway: Deployment, channel: str = "chat") -> HostileConsole:
    console = gateway.consoles[channel]
    assert isinstance(console, HostileConsole)
    return console


def _attributes(set_cookie: str) -> dict[str, str]:
    pairs = (attribute.strip().partition("=") for attribute in set_cookie.split(";")[1:])
    return {name.lower(): value for name, _, value in pairs}


async def _record_of(gateway: Deployment, path: str) -> AccessRecord:
    await gateway.services.audit.flush()
    records = [r for r in await gateway.services.access_log.tail(50) if r.path == path]
    assert records, f"no access record for {path}"
    return records[-1]


async def test_a_console_cookie_is_kept_under_its_prefix_and_made_host_only(gateway: Deployment) -> None:
    chat = _hostile(gateway)
    chat.answer = [
        ("Set-Cookie", "sid=fixated; Path=/; Domain=127.0.0.1"),
        ("Set-Cookie", "phone_session=fixated; Path=/phone/"),
        ("Set-Cookie", "theme=dark"),
    ]
    alice = await gateway.login("alice")
    response = await alice.get(gateway.url + "/chat/evil")
    assert response.status_code == 200
    cookies = [_attributes(value) for value in response.headers.get_list("set-cookie")]
    assert [c["path"] for c in cookies] == ["/chat/", "/chat/phone/", "/chat/"]
    assert not any("domain" in c for c in cookies)


async def test_one_consoles_cookies_do_not_reach_another_consoles_upstream(gateway: Deployment) -> None:
    _hostile(gateway, "phone").answer = [("Set-Cookie", "phone_sid=PHONE-SECRET; Path=/; HttpOnly")]
    alice = await gateway.login("alice")
    assert (await alice.get(gateway.url + "/phone/evil")).status_code == 200
    response = await alice.get(gateway.url + "/chat/echo", headers=JSON)
    cookies = [v for k, v in response.json()["headers"] if k == "cookie"]
    assert not any("PHONE-SECRET" in c for c in cookies), cookies
    back = await alice.get(gateway.url + "/phone/echo", headers=JSON)
    assert any("PHONE-SECRET" in v for k, v in back.json()["headers"] if k == "cookie")


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("Set-Cookie", "=channelgate=" + "A" * 43 + "; Path=/"),
        ("Set-Cookie", "CHANNELGATE=" + "A" * 43 + "; Path=/"),
        ("Set-Cookie", "__Host-session=x; Path=/; Secure"),
        ("Set-Cookie", "__secure-session=x; Secure"),
    ],
)
async def test_a_console_cannot_plant_a_nameless_gateway_or_reserved_cookie(
    gateway: Deployment, name: str, value: str
) -> None:
    _hostile(gateway).answer = [(name, value)]
    alice = await gateway.login("alice")
    response = await alice.get(gateway.url + "/chat/evil")
    assert response.status_code == 200
    assert response.headers.get_list("set-cookie") == []


async def test_a_console_redirect_to_its_own_upstream_goes_to_the_public_url_under_its_prefix(
    gateway: Deployment,
) -> None:
    chat = _hostile(gateway)
    chat.status, chat.answer = 302, [("Location", "http://{host}/login?next=%2F")]
    alice = await gateway.login("alice")
    response = await alice.get(gateway.url + "/chat/evil")
    assert response.status_code == 302
    assert response.headers["location"] == gateway.url + "/chat/login?next=%2F"


@pytest.mark.parametrize(
    ("location", "expected"),
    [
        ("/login", "/chat/login"),
        ("/phone/settings", "/chat/phone/settings"),
        ("https://idp.example/authorize?x=1", "https://idp.example/authorize?x=1"),
    ],
)
async def test_a_console_redirect_stays_under_its_prefix_unless_it_leaves_the_origin(
    gateway: Deployment, location: str, expected: str
) -> None:
    chat = _hostile(gateway)
    chat.status, chat.answer = 302, [("Location", location)]
    alice = await gateway.login("alice")
    response = await alice.get(gateway.url + "/chat/evil")
    assert response.headers["location"] == expected


async def test_refresh_content_location_and_link_to_the_consoles_upstream_do_not_reveal_its_address(
    gateway: Deployment,
) -> None:
    chat = _hostile(gateway)
    chat.answer = [
        ("Refresh", "0; url=http://{host}/inbox"),
        ("Content-Location", "http://{host}/doc/1"),
        ("Link", "<http://{host}/app.css>; rel=preload; as=style, <//{host}/>; rel=preconnect"),
    ]
    alice = await gateway.login("alice")
    response = await alice.get(gateway.url + "/chat/evil")
    assert response.headers["refresh"] == f"0; url={gateway.url}/chat/inbox"
    assert response.headers["content-location"] == f"{gateway.url}/chat/doc/1"
    assert response.headers["link"] == (
        f"<{gateway.url}/chat/app.css>; rel=preload; as=style, <{gateway.url}/chat/>; rel=preconnect"
    )
    upstream = f"127.0.0.1:{chat.port}"
    assert not [value for _, value in response.headers.multi_items() if upstream in value]


@pytest.mark.parametrize(
    "host",
    ["2130706433", "0x7f000001", "0177.0.0.1", "127.1", "0x7f.1", "%31%32%37.0.0.1", "4294967296"],
)
async def test_the_consoles_upstream_in_any_ipv4_spelling_a_browser_accepts_is_kept_under_the_prefix(
    gateway: Deployment, host: str
) -> None:
    # 127.0.0.1 as the WHATWG URL host parser reads it: a browser would go to the console's internal address.
    chat = _hostile(gateway)
    chat.status, chat.answer = 302, [("Location", f"http://{host}:{chat.port}/x?a=1")]
    alice = await gateway.login("alice")
    response = await alice.get(gateway.url + "/chat/evil")
    if host == "4294967296":  # overflows: a browser rejects the URL, and the field is dropped
        assert "location" not in response.headers
    else:
        assert response.headers["location"] == f"{gateway.url}/chat/x?a=1"


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("Location", "/../phone/settings", "/chat/phone/settings"),  # /chat/../phone/… is /phone/… to a browser
        ("Location", "/%2e%2e/phone/settings", "/chat/phone/settings"),  # and so is %2e%2e
        ("Location", "../../phone/settings", "/chat/phone/settings"),  # relative to /chat/evil/deep
        ("Location", "{public}/phone/settings", "{public}/chat/phone/settings"),  # the gateway's own origin
        ("Refresh", "0; url=../phone/settings", "0; url=/chat/phone/settings"),
        ("Refresh", "0; url={public}/phone/settings", "0; url={public}/chat/phone/settings"),
        ("Content-Location", "/chat/../phone/doc", "/chat/phone/doc"),
        ("Link", "</../phone/app.js>; rel=prefetch", "</chat/phone/app.js>; rel=prefetch"),
        ("Link", "<..\\..\\phone\\app.js>; rel=prefetch", "</chat/phone/app.js>; rel=prefetch"),
    ],
)
async def test_dot_segments_relative_urls_and_the_gateways_own_origin_cannot_take_an_answer_out_of_the_prefix(
    gateway: Deployment, name: str, value: str, expected: str
) -> None:
    chat = _hostile(gateway)
    chat.status, chat.answer = 302, [(name, value.replace("{public}", gateway.url))]
    alice = await gateway.login("alice")
    page = gateway.url + "/chat/evil/deep"
    response = await alice.get(page)
    got = response.headers.get_list(name)
    assert got == [expected.replace("{public}", gateway.url)]
    url = got[0].partition("url=")[2] if name == "Refresh" else got[0].strip("<").partition(">")[0]
    assert urlsplit(urljoin(page, url)).path.startswith("/chat/")  # where the browser goes


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("Refresh", "0; url=/phone/settings", "0; url=/chat/phone/settings"),
        ("Refresh", "0;URL='/.channelgate/logout'", "0; url=/chat/.channelgate/logout"),
        ("Refresh", "3, /phone/", "3; url=/chat/phone/"),
        ("Content-Location", "/phone/settings", "/chat/phone/settings"),
        ("Link", "</phone/app.js>; rel=prefetch", "</chat/phone/app.js>; rel=prefetch"),
        ("Link", "</mail/inbox>; rel=prerender", "</chat/mail/inbox>; rel=prerender"),
        ("Refresh", "0; url=https://idp.example/authorize", "0; url=https://idp.example/authorize"),
    ],
)
async def test_refresh_content_location_and_link_stay_under_the_prefix_unless_they_leave_the_origin(
    gateway: Deployment, name: str, value: str, expected: str
) -> None:
    _hostile(gateway).answer = [(name, value)]
    alice = await gateway.login("alice")
    response = await alice.get(gateway.url + "/chat/evil")
    assert response.status_code == 200
    assert response.headers.get_list(name) == [expected]


@pytest.mark.parametrize(
    "link",
    [
        '</chat/sw.js>; rel="serviceworker"; scope="/"',  # a worker over every console and /.channelgate/
        '</chat/a.png>; rel=preload; as=image; imagesrcset="/phone/a.png 1x"',
        "/phone/a.js; rel=prefetch",  # unreadable: dropped, not guessed at
    ],
)
async def test_a_link_that_acts_beyond_the_page_or_cannot_be_read_never_reaches_the_browser(
    gateway: Deployment, link: str
) -> None:
    _hostile(gateway).answer = [("Link", link)]
    alice = await gateway.login("alice")
    response = await alice.get(gateway.url + "/chat/evil")
    assert response.status_code == 200
    assert "link" not in response.headers


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("Clear-Site-Data", '"cookies", "storage"'),  # would log the agent out of the gateway, wipe every console
        ("Service-Worker-Allowed", "/"),  # would let /chat/sw.js take scope / (the gateway's own pages)
        ("Strict-Transport-Security", "max-age=0"),  # would turn off the origin's HSTS
        ("Access-Control-Allow-Origin", "https://evil.example"),
        ("Access-Control-Allow-Credentials", "true"),
        ("Origin-Agent-Cluster", "?0"),
        ("NEL", '{"report_to": "evil", "max_age": 31536000}'),  # the origin's network errors, reported to the console
        ("Report-To", '{"group": "evil", "max_age": 31536000, "endpoints": [{"url": "https://evil.example/r"}]}'),
        ("Alt-Svc", 'h2=":9443"; ma=86400'),  # would send the whole origin's requests to another port
    ],
)
async def test_a_console_cannot_change_the_origins_security_posture(gateway: Deployment, name: str, value: str) -> None:
    _hostile(gateway).answer = [(name, value)]
    alice = await gateway.login("alice")
    response = await alice.get(gateway.url + "/chat/evil")
    assert response.status_code == 200
    assert name.lower() not in response.headers


async def test_a_console_cannot_install_a_service_worker_and_the_refusal_is_recorded(gateway: Deployment) -> None:
    alice = await gateway.login("alice")
    response = await alice.get(gateway.url + "/chat/evil-sw.js", headers={"Service-Worker": "script"})
    assert response.status_code == 403
    assert not [seen for seen in _hostile(gateway).seen if seen.path == "/evil-sw.js"]
    record = await _record_of(gateway, "/chat/evil-sw.js")
    assert record.status == 403
    assert record.detail is not None and record.detail["error"] == "service_worker_refused"


async def test_two_copies_of_the_session_cookie_are_not_signed_in_and_are_recorded(gateway: Deployment) -> None:
    """What a browser sends after a planted copy (same name, another path): the order proves nothing, so neither
    copy is believed, not even the first."""
    alice, bob = await gateway.login("alice"), await gateway.login("bob")
    a, b = alice.cookies["channelgate"], bob.cookies["channelgate"]
    async with httpx.AsyncClient() as browser:
        for cookie in (f"channelgate={a}; channelgate={b}", f"channelgate={b}; channelgate={a}"):
            response = await browser.get(gateway.url + "/chat/echo", headers={**JSON, "Cookie": cookie})
            assert response.status_code == 401
        page = await browser.get(
            gateway.url + "/chat/echo", headers={"Accept": "text/html", "Cookie": f"channelgate={a}; channelgate={a}"}
        )
    assert page.status_code == 302 and "/.channelgate/login" in page.headers["location"]
    assert not [seen for seen in _hostile(gateway).seen if seen.path == "/echo"]
    record = await _record_of(gateway, "/chat/echo")
    assert record.status in (401, 302)
    assert record.detail == {"error": "duplicate_session_cookie"}
