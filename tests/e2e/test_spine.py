"""The spine end to end: real oidc-provider, Redis, PostgreSQL, two gateway replicas and three consoles.

Login on replica 1, use the session on replica 2, deprovision by the CLI: both replicas refuse within a second
and the agent's chat WebSocket is closed. The channel credentials never reach the browser or the logs.

One stack serves the whole module (starting it takes seconds); each test that deprovisions its agent has an agent
of its own, in alice's groups, so no test depends on another or on their order.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import replace

import httpx
import pytest
import websockets

from tests.components.browserless_login import login
from tests.components.gateway import GatewayStack
from tests.components.oidc_provider import DEMO_PASSWORD, STANDARD_ACCOUNTS, OidcProvider, provider_config

pytestmark = [pytest.mark.redis, pytest.mark.postgres, pytest.mark.oidc, pytest.mark.timeout(180)]


ALICE = STANDARD_ACCOUNTS[0]
#: Agents deprovisioned by one test each: in every channel's group, as alice is.
LEAVERS = ("dave", "erin", "frank", "grace")
ACCOUNTS = (
    *STANDARD_ACCOUNTS,
    *(
        replace(ALICE, sub=f"{name}-{n:04}", username=name, email=f"{name}@example.com", name=f"{name.title()} Example")
        for n, name in enumerate(LEAVERS, start=100)
    ),
)

SignIn = Callable[[str], Awaitable[httpx.AsyncClient]]


@pytest.fixture(scope="module")
def stack(module_redis_url: str, module_postgres_url: str) -> Iterator[GatewayStack]:
    stack = GatewayStack(issuer="", database_url=module_postgres_url, redis_url=module_redis_url)
    stack.allocate(replicas=2)
    config = provider_config(stack.redirect_uris, post_logout_redirect_uris=[stack.url(0) + "/"], accounts=ACCOUNTS)
    with OidcProvider(config) as provider:
        stack.issuer = provider.issuer
        try:
            stack.start()
            yield stack
        finally:
            stack.stop()


@pytest.fixture
async def sign_in(stack: GatewayStack) -> AsyncIterator[SignIn]:
    """Log an agent in on replica 1 (landing on the chat console); the clients are closed after the test."""
    clients: list[httpx.AsyncClient] = []

    async def sign_in(user: str) -> httpx.AsyncClient:
        clients.append(await login(stack.url(0), user, DEMO_PASSWORD, return_to="/chat/"))
        return clients[-1]

    yield sign_in
    for client in clients:
        await client.aclose()


@pytest.fixture
async def alice(sign_in: SignIn) -> httpx.AsyncClient:
    return await sign_in("alice")


def _cookie_header(client: httpx.AsyncClient) -> str:
    return "; ".join(f"{name}={value}" for name, value in client.cookies.items())


async def test_a_session_made_on_one_replica_works_on_the_other(stack: GatewayStack, alice: httpx.AsyncClient) -> None:
    for replica in (0, 1):
        page = await alice.get(stack.url(replica) + "/chat/", headers={"Accept": "text/html"})
        assert page.status_code == 200, page.text[:300]
        assert "alice" in page.text


async def test_each_console_gets_its_credential_and_the_agent_never_sees_one(
    stack: GatewayStack, alice: httpx.AsyncClient
) -> None:
    bodies = []
    for channel in ("chat", "phone", "mail"):
        response = await alice.get(f"{stack.url(1)}/{channel}/", headers={"Accept": "text/html"})
        assert response.status_code == 200, (channel, response.text[:300])
        bodies.append(response.text + json.dumps(dict(response.headers)))
    bodies.append((await alice.get(stack.url(0) + "/")).text)
    bodies.append((await alice.get(stack.url(0) + "/chat/../phone/")).text)
    leaked = [c for c in stack.credentials.values() for body in bodies if c in body]
    assert leaked == []
    logs = stack.gateway_logs() + stack.cli("audit", "tail", "-n", "200").stdout
    assert all(credential not in logs for credential in stack.credentials.values())


async def test_a_route_outside_the_agents_groups_is_refused_with_the_missing_group_named(
    stack: GatewayStack,
) -> None:
    bob = await login(stack.url(0), "bob", DEMO_PASSWORD)
    try:
        response = await bob.get(stack.url(0) + "/phone/", headers={"Accept": "text/html"})
        assert response.status_code == 403
        assert "phone-agents" in response.text
        assert (await bob.get(stack.url(0) + "/chat/")).status_code == 200
    finally:
        await bob.aclose()


async def test_deprovision_by_cli_shuts_every_replica_and_the_open_websocket(
    stack: GatewayStack, sign_in: SignIn
) -> None:
    dave = await sign_in("dave")
    ws_url = stack.url(1).replace("http", "ws") + "/chat/ws"
    async with websockets.connect(ws_url, additional_headers={"Cookie": _cookie_header(dave)}) as socket:
        await socket.send("hello")
        assert "hello" in str(await socket.recv())

        result = await asyncio.to_thread(stack.cli, "agents", "deprovision", "dave", "--reason", "left")
        report = json.loads(result.stdout)
        assert report["active"] is False
        assert report["sessions_revoked"] >= 1
        assert report["replicas_missing"] == []
        # The kill itself (disable, delete sessions, broadcast, every replica's acknowledgement) is well under 1 s;
        # the CLI returns only after it, so the very first request afterwards must be refused on every replica.
        assert report["duration_ms"] < 1000
        refused = {replica: (await dave.get(stack.url(replica) + "/chat/")).status_code for replica in (0, 1)}
        assert refused == {0: 401, 1: 401}
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await asyncio.wait_for(socket.recv(), timeout=1.0)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008

    again = await login_refused(stack, "dave")
    assert again.status_code == 403
    assert "ended" in again.text


async def login_refused(stack: GatewayStack, user: str) -> httpx.Response:
    from tests.components.browserless_login import complete_login, login_steps

    steps = await login_steps(stack.url(0), user, DEMO_PASSWORD)
    try:
        return await complete_login(steps.client, steps.callback_url)
    finally:
        await steps.client.aclose()


async def test_the_access_log_records_logins_requests_and_the_deprovisioning(
    stack: GatewayStack, sign_in: SignIn
) -> None:
    erin = await sign_in("erin")
    await erin.get(stack.url(0) + "/chat/?customer=12345")
    await asyncio.to_thread(stack.cli, "agents", "deprovision", "erin", "--reason", "left")
    await asyncio.sleep(0.3)  # request records are batched every 20 ms
    tail = stack.cli("audit", "tail", "-n", "1000").stdout
    assert "12345" not in tail  # query values stay out of the log
    erins = "\n".join(line for line in tail.splitlines() if "agent_name=erin " in line)
    assert "kind=login " in erins
    assert "kind=request" in erins and "path=/chat/?customer " in erins
    assert "kind=deprovision" in erins and "kind=sessions_revoked" in erins


async def test_server_sent_events_stream_through_the_gateway_as_they_happen(
    stack: GatewayStack, alice: httpx.AsyncClient
) -> None:
    arrivals: list[float] = []
    async with alice.stream("GET", stack.url(1) + "/chat/events", headers={"Accept": "text/event-stream"}) as stream:
        assert stream.status_code == 200
        assert stream.headers["content-type"].startswith("text/event-stream")
        async for line in stream.aiter_lines():
            if line.startswith("data: tick"):
                arrivals.append(asyncio.get_running_loop().time())
            if len(arrivals) == 3:
                break
    # One tick a second: relayed as produced, not buffered until the stream ends.
    assert arrivals[2] - arrivals[0] > 1.5


async def test_deprovisioning_cuts_an_open_event_stream(stack: GatewayStack, sign_in: SignIn) -> None:
    frank = await sign_in("frank")
    ticks_after_revocation: list[str] = []

    async def follow_stream() -> None:
        kill: asyncio.Task[object] | None = None
        async with frank.stream("GET", stack.url(0) + "/chat/events") as stream:
            async for line in stream.aiter_lines():
                if not line.startswith("data: tick"):
                    continue
                if kill is None:
                    # Keep reading while the CLI runs, so ticks sent before the kill are not counted after it.
                    kill = asyncio.create_task(
                        asyncio.to_thread(stack.cli, "agents", "deprovision", "frank", "--reason", "left")
                    )
                elif kill.done():
                    ticks_after_revocation.append(line)
                if len(ticks_after_revocation) > 1:
                    return

    with pytest.raises(httpx.RemoteProtocolError):  # aborted, not finished cleanly
        await follow_stream()
    # At most one tick that was already on the wire when the kill returned may still arrive.
    assert len(ticks_after_revocation) <= 1


async def test_an_entra_scim_disable_shuts_every_replica_and_the_open_websocket(
    stack: GatewayStack, sign_in: SignIn
) -> None:
    """Issue 3: the IdP's disable, sent to one replica, ends the agent's access on both before it is answered."""
    token = stack.cli("scim-tokens", "create", "entra").stdout.strip()
    scim = httpx.AsyncClient(
        base_url=stack.url(0) + "/scim/v2",
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/scim+json"},
    )
    ws_url = stack.url(1).replace("http", "ws") + "/chat/ws"
    grace = await sign_in("grace")
    try:
        found = (await scim.get("/Users", params={"filter": 'userName eq "grace"'})).json()
        assert found["totalResults"] == 1, found
        agent_id = found["Resources"][0]["id"]
        assert {(await grace.get(stack.url(replica) + "/chat/")).status_code for replica in (0, 1)} == {200}
        async with websockets.connect(ws_url, additional_headers={"Cookie": _cookie_header(grace)}) as socket:
            # Entra ID's disable, exactly as it sends it (research note §2): capitalised op, string boolean.
            disable = {
                "schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
                "Operations": [{"op": "Replace", "path": "active", "value": "False"}],
            }
            response = await scim.patch(f"/Users/{agent_id}", json=disable)
            assert response.status_code in (200, 204), response.text
            refused = {replica: (await grace.get(stack.url(replica) + "/chat/")).status_code for replica in (0, 1)}
            assert refused == {0: 401, 1: 401}
            with pytest.raises(websockets.ConnectionClosed) as closed:
                await asyncio.wait_for(socket.recv(), timeout=1.0)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008
    finally:
        await scim.aclose()
    assert (await login_refused(stack, "grace")).status_code == 403
