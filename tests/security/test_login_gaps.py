"""What the login and attack suites left open of research items 1 and 19, against a real provider and echo consoles.

Item 1: a session id is never put in a URL (redirects to and from the provider, the logout's end-session call) nor
in a log line or an access record. Item 19: a request dressed as a health check (CVE-2026-34457), one naming a
public path in its query (CVE-2025-54576) or carrying a fragment (CVE-2026-41059) is decided on the path the
console would see: anonymous, it is refused and reaches no console; for a chat-only agent, it never reaches the
phone console.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import AsyncIterator

import httpx
import pytest
import pytest_asyncio

from tests.components.browserless_login import login
from tests.components.echo_gateway import cookie_of, raw_request
from tests.components.login_gateway import HTML, JSON, LoginGateway, login_gateway, provider_pool
from tests.components.oidc_provider import DEMO_PASSWORD

pytestmark = [
    pytest.mark.oidc,
    pytest.mark.timeout(90),
    pytest.mark.asyncio(loop_scope="module"),
]

SESSION_COOKIE = "channelgate"


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def gateway() -> AsyncIterator[LoginGateway]:
    with provider_pool() as pool:
        async with login_gateway(pool) as running:
            yield running


async def test_a_session_id_never_appears_in_a_url_a_log_line_or_an_access_record(
    gateway: LoginGateway, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    # httpcore's DEBUG lines are this test's own client printing the Set-Cookie it received, not the gateway's log.
    caplog.set_level(logging.INFO, logger="httpcore")
    urls: list[str] = []

    async def seen(response: httpx.Response) -> None:
        urls.append(str(response.request.url))
        urls.extend(response.headers.get_list("location"))

    client = httpx.AsyncClient(timeout=10.0, event_hooks={"response": [seen]})
    gateway.deployed.clients.append(client)
    await gateway.services.audit.flush()
    mark = await gateway.audit_mark()

    await login(gateway.url, "alice", DEMO_PASSWORD, return_to="/chat/", client=client)
    session_id = client.cookies[SESSION_COOKIE]
    assert (await client.get(gateway.url + "/chat/echo", headers=JSON)).status_code == 200
    assert (await client.get(gateway.url + "/mail/missing?customer=1", headers=JSON)).status_code == 200
    assert (await client.get(gateway.url + "/")).status_code == 200
    logout = await client.post(gateway.url + "/.channelgate/logout", headers={"Origin": gateway.url})
    assert logout.status_code == 303
    replay = httpx.AsyncClient(timeout=10.0, event_hooks={"response": [seen]})
    gateway.deployed.clients.append(replay)
    replay.cookies.set(SESSION_COOKIE, session_id)
    assert (await replay.get(gateway.url + "/chat/echo", headers=JSON)).status_code == 401
    assert (await replay.get(gateway.url + "/chat/", headers=HTML)).status_code == 302

    await gateway.services.audit.flush()
    records = await gateway.records_since(mark)
    assert {"login", "request", "logout"} <= {record.kind for record in records}
    assert len(urls) > 8  # the provider's redirects, the callback, the requests, the logout's end-session URL
    haystacks = {
        "a URL": "\n".join(urls),
        "a log line": caplog.text + "\n".join(str(record.args) for record in caplog.records),
        "an access record": json.dumps([dataclasses.asdict(record) for record in records], default=str),
    }
    assert [where for where, text in haystacks.items() if session_id in text] == []


def _forget_what_consoles_saw(gateway: LoginGateway) -> None:
    for console in gateway.deployed.consoles.values():
        console.seen.clear()


#: Anonymous requests, sent byte for byte, that look like health checks or name a public path → the status.
#: 401 is the proxy's "sign in first"; 404 is the gateway's own router, which proxies nothing.
DRESSED_UP = [
    ("/chat/echo", [("User-Agent", b"kube-probe/1.31")], 401),
    ("/chat/echo", [("User-Agent", b"ELB-HealthChecker/2.0")], 401),
    ("/chat/echo", [("User-Agent", b"GoogleHC/1.0"), ("X-Health-Check", b"1")], 401),
    ("/chat/echo?/.channelgate/healthz", [], 401),
    ("/chat/echo?next=/.channelgate/healthz&path=/.channelgate/jwks.json", [], 401),
    ("/chat/echo?/scim/v2/ServiceProviderConfig", [], 401),
    ("/chat/echo#/.channelgate/healthz", [], 401),
    ("/chat/echo%23/.channelgate/healthz", [], 401),
    ("/.channelgate/healthz/../../chat/echo", [], 404),
    ("/.channelgate/healthz%2f..%2f..%2fchat/echo", [], 404),
    ("/.channelgate/auth/../../chat/echo", [], 404),
    ("/scim/v2/../../chat/echo", [], 404),
    ("/.channelgate/healthz;/../../chat/echo", [], 404),
]


async def test_a_request_dressed_as_a_health_check_or_a_public_path_is_never_served_anonymously(
    gateway: LoginGateway,
) -> None:
    _forget_what_consoles_saw(gateway)
    answered, expected = {}, {}
    for target, headers, status in DRESSED_UP:
        response = await raw_request(gateway.url, target, [*headers, ("Accept", b"application/json")])
        answered[target + repr(headers)], expected[target + repr(headers)] = response.status, status
    assert answered == expected
    assert all(console.seen == [] for console in gateway.deployed.consoles.values())


#: What bob (chat-agents only) sends to reach the phone console through a fragment, the query or a probe's name →
#: the status. A fragment never reaches the console; 400 is an encoded ``#`` refused as an ambiguous path.
TOWARD_PHONE = [
    ("/chat/echo#/../../phone/echo", [], 200),
    ("/chat/echo%23/../../phone/echo", [], 400),
    ("/chat/echo?/../../phone/echo", [], 200),
    ("/phone/echo", [("User-Agent", b"kube-probe/1.31")], 403),
    ("/phone/echo?/chat/echo", [], 403),
    ("/phone/echo#/chat/", [], 403),
]


async def test_a_fragment_query_or_probe_name_never_takes_a_chat_agent_to_the_phone_console(
    gateway: LoginGateway,
) -> None:
    bob = await gateway.login("bob")
    cookie = cookie_of(bob).encode()
    _forget_what_consoles_saw(gateway)
    for target, headers, status in TOWARD_PHONE:
        response = await raw_request(
            gateway.url, target, [*headers, ("Cookie", cookie), ("Accept", b"application/json")]
        )
        assert response.status == status, (target, response.status)
        if status == 200:
            assert json.loads(response.body)["channel"] == "chat", target
    assert gateway.deployed.consoles["phone"].seen == []
    assert [request.path for request in gateway.deployed.consoles["chat"].seen] == ["/echo", "/echo"]
