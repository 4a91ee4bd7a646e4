"""Header, path and cookie attacks end to end, and the channel credential never leaking (items 18, 19 and 24).

The gateway runs for real in front of echo consoles that record what reached them, so each test proves both
sides: what the client got back, and what the console did (or did not) receive.
"""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import AsyncIterator

import httpx
import pytest

from tests.components.echo_gateway import (
    Deployment,
    cookie_of,
    deployment,
    raw_request,
)
from tests.components.oidc_provider import OidcProviderFactory

pytestmark = [pytest.mark.oidc, pytest.mark.timeout(90)]

JSON = {"Accept": "application/json"}
HTML = {"Accept": "text/html"}
MAX_HEADER_BYTES = 8192

#: Headers a client may send to pose as someone, or as coming from somewhere; none may reach a console.
SPOOFED_HEADERS = [
    ("X-Forwarded-For", "6.6.6.6"),
    ("X_Forwarded_For", "6.6.6.7"),
    ("x-forwarded-host", "evil.example"),
    ("X-Forwarded-Proto", "gopher"),
    ("Forwarded", "for=6.6.6.8;host=evil.example"),
    ("X-Real-IP", "6.6.6.9"),
    ("X-Channelgate-User", "admin-spoof"),
    ("X-CHANNELGATE-ASSERTION", "forged.assertion.token"),
    ("X_Channelgate_Groups", "supervisors-spoof"),
    ("Remote-User", "root-spoof"),
    ("X-Auth-Request-Email", "ceo-spoof@example.com"),
    ("X_Auth_Request_User", "ceo-spoof"),
    ("X-Remote-User", "remote-spoof"),
    ("X-Original-URL", "/phone/spoof"),
    ("X-HTTP-Method-Override", "DELETE"),
    ("Authorization", "Bearer evil-client-token"),
]
SPOOFED_VALUES = [value for _, value in SPOOFED_HEADERS]


@pytest.fixture
async def gateway(oidc_provider_factory: OidcProviderFactory) -> AsyncIterator[Deployment]:
    async with deployment(
        oidc_provider_factory,
        route_timeout_seconds=1,
        extra_server_toml=f"max_header_bytes = {MAX_HEADER_BYTES}",
    ) as deployed:
        deployed.consoles["chat"].hang_seconds = 2.5
        yield deployed


def _echoed(response: httpx.Response) -> dict[str, list[str]]:
    assert response.status_code == 200, response.text[:300]
    headers: dict[str, list[str]] = {}
    for name, value in response.json()["headers"]:
        headers.setdefault(name, []).append(value)
    return headers


async def test_spoofed_identity_and_forwarding_headers_never_reach_the_console(gateway: Deployment) -> None:
    alice = await gateway.login("alice")
    response = await alice.get(gateway.url + "/chat/echo", headers=[*SPOOFED_HEADERS, ("Accept", "application/json")])
    seen = _echoed(response)
    reached = {
        name: values for name, values in seen.items() if any(spoof in v for v in values for spoof in SPOOFED_VALUES)
    }
    assert reached == {}
    assert seen["authorization"] == [f"Bearer {gateway.credentials['chat']}"]
    assert seen["x-forwarded-for"] == ["127.0.0.1"]
    assert seen["x-forwarded-proto"] == ["http"]
    assert len(seen["x-channelgate-assertion"]) == 1
    claims = await gateway.verify_assertion(seen["x-channelgate-assertion"][0], "chat")
    assert claims["preferred_username"] == "alice"
    assert "x-http-method-override" not in seen and "remote-user" not in seen
    assert "channelgate" not in "".join(seen.get("cookie", []))  # the gateway's cookie stays with the gateway


async def test_a_client_copy_of_a_connectors_own_header_is_replaced_by_the_credential(gateway: Deployment) -> None:
    alice = await gateway.login("alice")
    response = await alice.get(
        gateway.url + "/phone/echo",
        headers=[
            ("X-Api-Key", "evil-key"),
            ("X_Api_Key", "evil-key-2"),
            ("Authorization", "Bearer evil"),
            *JSON.items(),
        ],
    )
    seen = _echoed(response)
    assert seen["x-api-key"] == [gateway.credentials["phone"]]
    assert "x_api_key" not in seen and "authorization" not in seen
    mail = _echoed(await alice.get(gateway.url + "/mail/echo", headers={**JSON, "Authorization": "Basic ZXZpbDpldmls"}))
    expected = base64.b64encode(f"channelgate:{gateway.credentials['mail']}".encode()).decode()
    assert mail["authorization"] == [f"Basic {expected}"]


#: Request target sent byte for byte as bob (chat-agents only) → the status he gets. None reaches the phone console.
PATH_ATTACKS = [
    ("/chat/../phone/", 400),
    ("/chat/./../phone/", 400),
    ("/chat/%2e%2e/phone/", 400),
    ("/chat/%2E%2E/phone/", 400),
    ("/chat/.%2e/phone/", 400),
    ("/chat/%252e%252e/phone/", 400),
    ("/chat%2fx", 400),
    ("/chat%2f..%2fphone/", 400),
    ("/chat/%5c..%5cphone/", 400),
    ("/chat/;x/", 400),
    ("/chat/..;/phone/", 400),
    ("/chat/%3b/../phone/", 400),
    ("/chat/%00/../phone/", 400),
    ("/chat/%ef%bc%8e%ef%bc%8e/phone/", 400),
    ("//phone/", 403),
    ("/phone/", 403),
    ("/PHONE/", 404),
    ("//chat/", 200),  # collapsed to /chat/, which bob may open: the chat console gets "/"
]


async def test_path_tricks_never_take_a_chat_agent_to_the_phone_console(gateway: Deployment) -> None:
    bob = await gateway.login("bob")
    cookie = cookie_of(bob).encode()
    results = {}
    for target, _ in PATH_ATTACKS:
        response = await raw_request(gateway.url, target, [("Cookie", cookie), ("Accept", b"application/json")])
        results[target] = response.status
    assert results == dict(PATH_ATTACKS)
    assert gateway.consoles["phone"].seen == []
    assert [request.path for request in gateway.consoles["chat"].seen] == ["/"]


@pytest.mark.parametrize("size", [MAX_HEADER_BYTES + 1, 3 * MAX_HEADER_BYTES])
async def test_oversized_headers_are_refused_with_431(gateway: Deployment, size: int) -> None:
    alice = await gateway.login("alice")
    response = await alice.get(gateway.url + "/chat/echo", headers={**JSON, "X-Padding": "a" * size})
    assert response.status_code == 431
    assert response.json()["error"] == "headers_too_large"
    assert gateway.consoles["chat"].seen == []


#: Cookie headers whose session value is not one the gateway issued → (API status, browser status).
#: A raw NUL is not HTTP at all (RFC 9110 §5.5): the server's parser answers 400 before the gateway sees it.
MALFORMED_COOKIES = [
    (b"channelgate=../../x", 401, 302),
    (b"channelgate=" + b"A" * 5000, 401, 302),
    (b"channelgate=" + b"A" * 43, 401, 302),  # the right shape, but no such session
    ("channelgate=café-ünïcode".encode(), 401, 302),
    (b"channelgate=\xff\xfe\x80", 401, 302),
    (b'channelgate="quoted"', 401, 302),
    (b"channelgate=; channelgate=x", 401, 302),
    (b"channelgate", 401, 302),
    (b"=channelgate", 401, 302),
    (b";;;", 401, 302),
    (b"channelgate=%00%0d%0aSet-Cookie:%20x=y", 401, 302),
    (b"channelgate=x\x00y", 400, 400),
]


@pytest.mark.parametrize(
    ("cookie", "api_status", "browser_status"),
    MALFORMED_COOKIES,
    ids=[f"cookie{i}" for i in range(len(MALFORMED_COOKIES))],
)
async def test_a_malformed_session_cookie_is_401_or_a_login_redirect_never_500(
    gateway: Deployment, cookie: bytes, api_status: int, browser_status: int
) -> None:
    api = await raw_request(gateway.url, "/chat/echo", [("Cookie", cookie), ("Accept", b"application/json")])
    assert api.status == api_status, api.text[:300]
    browser = await raw_request(gateway.url, "/chat/", [("Cookie", cookie), ("Accept", b"text/html")])
    assert browser.status == browser_status, browser.text[:300]
    if browser_status == 302:
        assert "location: /.channelgate/login" in browser.head.lower()
    assert gateway.consoles["chat"].seen == []


def _secrets(gateway: Deployment) -> list[str]:
    """Every credential in each spelling a response could carry it: plain, and inside HTTP Basic."""
    values = list(gateway.credentials.values())
    values.append(base64.b64encode(f"channelgate:{gateway.credentials['mail']}".encode()).decode())
    return values


async def test_the_channel_credentials_never_appear_in_responses_error_pages_logs_or_the_audit_tail(
    gateway: Deployment, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    alice = await gateway.login("alice")
    bob = await gateway.login("bob")
    anonymous = httpx.AsyncClient()
    gateway.clients.append(anonymous)
    seen: dict[str, int] = {}
    texts: list[str] = []

    async def collect(name: str, client: httpx.AsyncClient, path: str, headers: dict[str, str]) -> None:
        response = await client.get(gateway.url + path, headers=headers)
        seen[name] = response.status_code
        texts.append(response.text + json.dumps(list(response.headers.multi_items())))

    for accept in (HTML, JSON):
        kind = accept["Accept"]
        for channel in ("chat", "phone", "mail"):
            await collect(f"{channel} page {kind}", alice, f"/{channel}/", accept)
        await collect(f"403 {kind}", bob, "/phone/", accept)
        await collect(f"404 {kind}", alice, "/nowhere/", accept)
        await collect(f"400 {kind}", alice, "/chat/%2f", accept)
        await collect(f"504 {kind}", alice, "/chat/hang", accept)
        await collect(f"anonymous {kind}", anonymous, "/chat/", accept)
        await collect(f"home {kind}", alice, "/", accept)
    await gateway.consoles["mail"].stop()
    for accept in (HTML, JSON):
        await collect(f"502 {accept['Accept']}", alice, "/mail/", accept)

    assert seen["403 text/html"] == 403 and seen["404 text/html"] == 404 and seen["400 text/html"] == 400
    assert seen["504 text/html"] == 504 and seen["502 text/html"] == 502 and seen["502 application/json"] == 502
    assert seen["anonymous text/html"] == 302 and seen["anonymous application/json"] == 401
    assert seen["chat page text/html"] == seen["phone page text/html"] == seen["mail page text/html"] == 200

    await gateway.services.audit.flush()
    tail = await gateway.cli("audit", "tail", "-n", "500")
    assert tail.returncode == 0, tail.stderr
    assert "kind=request" in tail.stdout
    logs = caplog.text + "".join(record.getMessage() for record in caplog.records)
    haystacks = {"responses": "\n".join(texts), "gateway log": logs, "audit tail": tail.stdout + tail.stderr}
    leaks = {where: secret for where, text in haystacks.items() for secret in _secrets(gateway) if secret in text}
    assert leaks == {}


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/.channelgate/logout", 405),  # logout is a POST (CSRF-safe); a GET must not log anyone out
        ("POST", "/.channelgate/healthz", 405),
        ("GET", "/.channelgate/no-such-endpoint", 404),
        ("GET", "/.channelgate/admin/agents", 404),
    ],
)
async def test_the_gateways_own_paths_are_never_proxied_to_a_console(
    gateway: Deployment, method: str, path: str, status: int
) -> None:
    alice = await gateway.login("alice")
    response = await alice.request(method, gateway.url + path, headers=JSON)
    assert response.status_code == status
    assert all(console.seen == [] for console in gateway.consoles.values())
