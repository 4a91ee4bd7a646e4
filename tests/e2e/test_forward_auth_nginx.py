"""Forward-auth end to end: a real nginx with deploy/nginx/forward-auth.conf as shipped, asking a gateway replica
(Redis sessions, PostgreSQL) at /.channelgate/auth, with a real oidc-provider login and the demo consoles.

Proves: the login redirect survives the round trip through nginx; the console gets the channel credential and the
signed assertion while the browser never sees either; the decision endpoint cannot be reached from outside; a
refusal shows the policy's explanation and its log entry names the policy; nginx and the inline proxy decide the
same; spellings that could make nginx and the console see different paths are refused; a policy file changed on
disk applies to the next request, and a broken one is refused while the set in force stays.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import cast

import httpx
import pytest
import pytest_asyncio

from tests.components.browserless_login import login
from tests.components.fronted_stack import (
    PHONE_READ_ONLY,
    PHONE_READ_ONLY_REASON,
    PLACEHOLDER,
    FrontedStack,
    cookie_header,
    fronted_stack,
    raw_get,
    reset_site_policy,
    until_allowed,
    until_refused,
)
from tests.components.nginx_server import NginxServer
from tests.components.oidc_provider import DEMO_PASSWORD
from tests.components.ports import LOOPBACK
from tests.components.postgres_server import PostgresServer
from tests.components.redis_server import RedisServer

pytestmark = [
    pytest.mark.redis,
    pytest.mark.postgres,
    pytest.mark.oidc,
    pytest.mark.timeout(240),
    pytest.mark.asyncio(loop_scope="module"),
]

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "deploy" / "nginx" / "forward-auth.conf"
SAMPLE_SECRET = "CHANGE-ME-forward-auth-secret-of-32-characters-or-more"


def nginx_http(stack: FrontedStack) -> str:
    sample = SAMPLE.read_text(encoding="utf-8")
    assert SAMPLE_SECRET in sample and "listen 8443;" in sample
    server = sample.replace("listen 8443;", "listen {port};").replace(SAMPLE_SECRET, stack.secret)
    upstreams = [f"upstream channelgate {{ server {LOOPBACK}:{stack.gateway_ports[0]}; keepalive 16; }}"]
    upstreams += [
        f"upstream console_{name} {{ server {LOOPBACK}:{port}; }}" for name, port in stack.console_ports.items()
    ]
    return "\n".join(upstreams) + "\n" + server


@pytest.fixture(scope="module", params=[0, 2], ids=["redis", "redis-cached"])
def stack(
    request: pytest.FixtureRequest,
    redis_server: RedisServer,
    postgres_server: PostgresServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[FrontedStack, NginxServer]]:
    """One stack for the module (about 8 s to start); each test leaves the policy file as it found it. Every test
    runs with Redis read on every request (repeated answers written by the HTTP protocol after the read) and with
    the in-process session cache (written from the HTTP parser): gateway/forward_auth_protocol.py."""
    policies = tmp_path_factory.mktemp("policies")
    with fronted_stack(redis_server, postgres_server, policies, local_cache_seconds=request.param) as gateway:
        nginx = NginxServer(nginx_http(gateway), port=gateway.proxy_port)
        nginx.start()
        try:
            yield gateway, nginx
        finally:
            nginx.stop()


@pytest.fixture(autouse=True)
def _placeholder_policy_after(stack: tuple[FrontedStack, NginxServer]) -> Iterator[None]:
    yield
    reset_site_policy(stack[0])


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def carol(stack: tuple[FrontedStack, NginxServer]) -> AsyncIterator[httpx.AsyncClient]:
    gateway, _ = stack
    client = await login(gateway.public_url, "carol", DEMO_PASSWORD, return_to="/phone/")
    yield client
    await client.aclose()


async def test_a_browser_without_a_session_is_sent_to_login_and_comes_back(
    stack: tuple[FrontedStack, NginxServer],
) -> None:
    gateway, _ = stack
    async with httpx.AsyncClient() as anonymous:
        answer = await anonymous.get(gateway.public_url + "/phone/calls?day=1", headers={"Accept": "text/html"})
    assert answer.status_code == 302
    assert answer.headers["location"] == "/.channelgate/login?rd=%2Fphone%2Fcalls%3Fday%3D1"
    client = await login(gateway.public_url, "carol", DEMO_PASSWORD, return_to="/phone/")
    try:
        page = await client.get(gateway.public_url + "/phone/", headers={"Accept": "text/html"})
        assert page.status_code == 200, page.text[:300]
        assert "carol" in page.text
    finally:
        await client.aclose()


async def test_an_api_client_without_a_session_gets_401_not_a_redirect(stack: tuple[FrontedStack, NginxServer]) -> None:
    gateway, _ = stack
    async with httpx.AsyncClient() as anonymous:
        answer = await anonymous.get(gateway.public_url + "/phone/", headers={"Accept": "application/json"})
    assert answer.status_code == 401
    assert answer.json()["error"] == "authentication_required"


async def test_the_console_gets_the_credential_and_assertion_the_browser_never_sees(
    stack: tuple[FrontedStack, NginxServer], carol: httpx.AsyncClient
) -> None:
    gateway, _ = stack
    # A client-sent credential and assertion are replaced by nginx with channelgate's. Asked three times: the
    # repeats are answered from the kept answer (with the session cache, from channelgate's HTTP parser).
    forged = {"Accept": "text/html", "X-Api-Key": "forged", "X-Channelgate-Assertion": "forged"}
    for _ in range(3):
        page = await carol.get(gateway.public_url + "/phone/", headers=forged)
        assert page.status_code == 200, page.text[:300]
        assert "carol" in page.text  # the demo console shows the agent of the verified assertion
        credential = gateway.credentials["phone"]
        assert credential not in page.text
        assert all(credential not in value for value in page.headers.values())
        assert "x-channelgate-assertion" not in page.headers


async def test_a_refused_subrequest_and_a_query_of_the_clients_choosing_never_hand_the_browser_the_credential(
    stack: tuple[FrontedStack, NginxServer], carol: httpx.AsyncClient
) -> None:
    # Padding only the auth subrequest carries makes it fail (431, answered 403), so nginx calls the explain
    # location; the client's ?mode= there once turned the explain call into a 200 with the credential, and nginx
    # returned it to the browser. The sample now drops the client's query and mode header; the gateway lets
    # explain win whatever the query says (either fix alone closes it).
    gateway, _ = stack
    padded = {
        "Accept": "application/json",
        "X-Channelgate-Auth-Mode": "m" * 7000,
        "X-Pad-A": "a" * 5000,
        "X-Pad-B": "b" * 4500,
    }
    credential = gateway.credentials["phone"]
    for query in ("mode=redirect", "mode=anything"):
        answer = await carol.get(f"{gateway.public_url}/phone/?{query}", headers=padded)
        leaked = [name for name, value in answer.headers.items() if credential in value]
        assert leaked == [] and "x-channelgate-assertion" not in answer.headers, (answer.status_code, leaked)
        assert credential not in answer.text
    # Without the padding the same request goes through as usual.
    normal = await carol.get(f"{gateway.public_url}/phone/?mode=redirect", headers={"Accept": "text/html"})
    assert normal.status_code == 200 and "carol" in normal.text


async def test_the_decision_endpoint_is_not_reachable_through_nginx(
    stack: tuple[FrontedStack, NginxServer], carol: httpx.AsyncClient
) -> None:
    gateway, _ = stack
    for path in ("/.channelgate/auth", "/.channelgate/auth/phone/", "/_channelgate_auth"):
        answer = await carol.get(
            gateway.public_url + path,
            headers={"X-Original-URI": "/phone/", "X-Channelgate-Auth-Secret": gateway.secret},
        )
        assert answer.status_code == 404, path
        assert gateway.credentials["phone"] not in answer.text
        assert "x-api-key" not in answer.headers


async def test_the_decision_endpoint_refuses_a_caller_without_the_secret(
    stack: tuple[FrontedStack, NginxServer], carol: httpx.AsyncClient
) -> None:
    gateway, _ = stack
    cookies = cookie_header(carol)
    async with httpx.AsyncClient() as direct:
        for secret in ("", "wrong", gateway.secret[:-1]):
            answer = await direct.get(
                gateway.url(0) + "/.channelgate/auth",
                headers={"Cookie": cookies, "X-Original-URI": "/phone/", "X-Channelgate-Auth-Secret": secret},
            )
            assert answer.status_code == 404
            assert "x-api-key" not in answer.headers
        allowed = await direct.get(
            gateway.url(0) + "/.channelgate/auth",
            headers={"Cookie": cookies, "X-Original-URI": "/phone/", "X-Channelgate-Auth-Secret": gateway.secret},
        )
    assert allowed.status_code == 200
    assert allowed.headers["x-api-key"] == gateway.credentials["phone"]
    assert allowed.headers["cache-control"] == "no-store"


async def test_a_refusal_explains_itself_and_the_log_names_the_policy(
    stack: tuple[FrontedStack, NginxServer], carol: httpx.AsyncClient
) -> None:
    gateway, _ = stack
    site = gateway.site_policy
    site.write_text(PHONE_READ_ONLY)
    await until_refused(carol, gateway.public_url + "/phone/notes")
    refused = await carol.post(gateway.public_url + "/phone/notes", headers={"Accept": "text/html"}, content=b"x=1")
    assert refused.status_code == 403
    assert PHONE_READ_ONLY_REASON in refused.text
    reading = await carol.get(gateway.public_url + "/phone/", headers={"Accept": "text/html"})
    assert reading.status_code == 200
    records = gateway.search_log("--agent", "carol", "--decision", "deny")
    mine = [r for r in records if r.get("reason") == "phone-read-only"]
    assert mine, records
    assert mine[0]["method"] == "POST" and mine[0]["path"] == "/phone/notes"
    assert cast(dict[str, object], mine[0].get("detail") or {}).get("via") == "forward-auth"


async def test_a_broken_policy_file_is_refused_and_the_set_in_force_stays(
    stack: tuple[FrontedStack, NginxServer], carol: httpx.AsyncClient
) -> None:
    gateway, _ = stack
    site = gateway.site_policy
    site.write_text(PHONE_READ_ONLY)
    await until_refused(carol, gateway.public_url + "/phone/notes")
    site.write_text(PHONE_READ_ONLY.replace("Action::", "Actoin::"))
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        refusals = [r for r in gateway.search_log("--kind", "policy_reload") if r.get("decision") == "deny"]
        if refusals:
            break
        time.sleep(0.2)
    assert refusals, "the broken policy file was not reported"
    assert "site.cedar" in json.dumps(refusals[0].get("detail"))
    still = await carol.post(gateway.public_url + "/phone/notes", content=b"x=1")
    assert still.status_code == 403  # the old set, with its forbid, is still in force
    site.write_text(PLACEHOLDER)
    await until_allowed(carol, gateway.public_url + "/phone/notes")


@pytest.mark.parametrize(
    "path",
    [
        "/phone/../chat/",
        "/phone/%2e%2e/chat/",
        "/phone/.%2e/chat/",
        "/phone/%2fchat/",
        "/phone//calls",
        "/phone/calls;jsessionid=x",
        "/phone/%252e%252e/",
        "/phone/%63alls",
        "/phone/\\..\\chat/",
        "/phone/calls/%7Eme",
        "/phone/calls/%c3%a9",
    ],
)
async def test_a_path_nginx_and_the_console_could_read_differently_is_refused(
    stack: tuple[FrontedStack, NginxServer], carol: httpx.AsyncClient, path: str
) -> None:
    gateway, _ = stack
    cookies = cookie_header(carol)
    status, _ = await raw_get(gateway.proxy_port, path, {"Cookie": cookies})
    assert status in (400, 403), f"{path} -> {status}"


async def test_nginx_and_the_inline_proxy_decide_the_same(
    stack: tuple[FrontedStack, NginxServer], carol: httpx.AsyncClient
) -> None:
    gateway, _ = stack
    gateway.site_policy.write_text(PHONE_READ_ONLY)
    await until_refused(carol, gateway.public_url + "/phone/notes")
    # The consoles the nginx sample serves (chat, phone); carol is a phone agent, not a chat agent.
    table = [("GET", "/phone/"), ("POST", "/phone/notes"), ("GET", "/phone/x?y=1"), ("GET", "/chat/")]
    table.append(("GET", "/nope/"))
    for method, path in table:
        via_nginx = await carol.request(method, gateway.public_url + path, headers={"Accept": "application/json"})
        inline = await carol.request(method, gateway.url(0) + path, headers={"Accept": "application/json"})
        assert (via_nginx.status_code < 400) == (inline.status_code < 400), (method, path)
        if inline.status_code in (401, 403):
            assert via_nginx.status_code == inline.status_code, (method, path)
