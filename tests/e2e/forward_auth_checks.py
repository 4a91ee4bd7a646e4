"""What forward-auth must do behind any front proxy, as a suite each proxy's module runs against the real proxy.

A module subclasses :class:`ForwardAuthChecks` as ``Test…`` and gives it a ``proxy`` fixture that starts the proxy
on ``stack.proxy_port`` from the shipped sample, routing ``/phone/`` to the ``echo`` console (which records what
reaches it). The subclass keeps what is particular to its proxy: the client headers it must not believe
(``forged``), the headers of a probe of the decision endpoint (``probe``), and how it treats path spellings.

Proves, through the proxy: the login redirect survives the round trip; the console gets the channel credential
and a valid assertion, and its own query string (even ``mode=explain``) intact, while the browser never sees
either and the client's forged copies, its Authorization, its cookies and the shared secret never reach the
console; a refusal is the 403 page with the policy's explanation and is logged naming the policy; the decision
endpoint cannot be reached from outside.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Mapping
from typing import ClassVar

import httpx
import pytest
import pytest_asyncio

from tests.components.browserless_login import login
from tests.components.echo_gateway import EchoConsole, verify_assertion
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
from tests.components.postgres_server import PostgresServer
from tests.components.redis_server import RedisServer

#: Copies of what channelgate sets for the console, sent by the client: none may reach the console.
FORGED = {
    "X-Api-Key": "forged",
    "X-Channelgate-Assertion": "forged",
    "Authorization": "Bearer forged",
}
DECISION_ENDPOINT_SPELLINGS = [
    "/.channelgate/auth",
    "/.channelgate/auth/phone/",
    "/.channelgate/%61uth/phone/",
    "/.channelgate/auth?x=1",
]


class ForwardAuthChecks:
    """The shared checks; a subclass adds the ``proxy`` fixture (see the module docstring)."""

    pytestmark: ClassVar[list[pytest.MarkDecorator]] = [
        pytest.mark.redis,
        pytest.mark.postgres,
        pytest.mark.oidc,
        pytest.mark.timeout(240),
        pytest.mark.asyncio(loop_scope="module"),
    ]
    #: Client headers this proxy must not believe or pass on, besides :data:`FORGED`.
    forged: ClassVar[Mapping[str, str]] = {}
    #: Headers of a probe of the decision endpoint from outside, besides the session cookie and the secret.
    probe: ClassVar[Mapping[str, str]] = {}

    @pytest.fixture(scope="class")
    @classmethod
    def stack(
        cls, redis_server: RedisServer, postgres_server: PostgresServer, tmp_path_factory: pytest.TempPathFactory
    ) -> Iterator[FrontedStack]:
        with fronted_stack(redis_server, postgres_server, tmp_path_factory.mktemp("policies")) as gateway:
            yield gateway

    @pytest.fixture(scope="class")
    @classmethod
    def echo(cls) -> EchoConsole:
        return EchoConsole("phone")  # its port is held from now on; it serves once `console` starts it

    @pytest_asyncio.fixture(scope="class", loop_scope="module")
    @classmethod
    async def console(cls, echo: EchoConsole, proxy: object) -> AsyncIterator[EchoConsole]:
        await echo.start()
        yield echo
        await echo.stop()

    @pytest.fixture(autouse=True)
    def _placeholder_policy_after(self, stack: FrontedStack) -> Iterator[None]:
        yield
        reset_site_policy(stack)

    @pytest_asyncio.fixture(scope="class", loop_scope="module")
    @classmethod
    async def carol(cls, stack: FrontedStack, console: EchoConsole) -> AsyncIterator[httpx.AsyncClient]:
        client = await login(stack.public_url, "carol", DEMO_PASSWORD, return_to="/phone/")
        yield client
        await client.aclose()

    async def test_a_browser_without_a_session_is_sent_to_login_and_comes_back_through_the_proxy(
        self, stack: FrontedStack, console: EchoConsole
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

    async def test_the_console_gets_the_credential_and_assertion_the_browser_never_sees_nor_the_secret(
        self, stack: FrontedStack, console: EchoConsole, carol: httpx.AsyncClient
    ) -> None:
        forged = {"Accept": "text/html", **FORGED, **self.forged}
        before = len(console.seen)
        # mode=explain is the console's own query parameter here, not a forward-auth mode.
        page = await carol.get(stack.public_url + "/phone/calls?mode=explain&day=1", headers=forged)
        assert page.status_code == 200, page.text[:300]
        [seen] = console.seen[before:]
        assert (seen.method, seen.path, seen.query) == ("GET", "/calls", "mode=explain&day=1")
        assert seen.values("x-api-key") == [stack.credentials["phone"]]
        [assertion] = seen.values("x-channelgate-assertion")
        claims = await verify_assertion(stack.public_url, assertion, "phone")
        assert claims["preferred_username"] == "carol"
        assert seen.values("authorization") == [] and seen.values("cookie") == []
        assert seen.values("x-channelgate-auth-secret") == []
        assert all(stack.secret not in value for _, value in seen.headers)
        credential = stack.credentials["phone"]
        assert credential not in page.text and all(credential not in value for value in page.headers.values())
        assert "x-channelgate-assertion" not in page.headers and "x-api-key" not in page.headers

    async def test_a_refusal_is_the_403_page_with_the_policys_explanation_and_the_log_names_the_policy(
        self, stack: FrontedStack, console: EchoConsole, carol: httpx.AsyncClient
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
        records = stack.search_log("--agent", "carol", "--decision", "deny")
        mine = [r for r in records if r.get("reason") == "phone-read-only"]
        assert mine, records
        assert (mine[0]["method"], mine[0]["path"]) == ("POST", "/phone/notes")
        assert mine[0].get("detail") == {"via": "forward-auth"}

    @pytest.mark.parametrize("path", DECISION_ENDPOINT_SPELLINGS)
    async def test_the_decision_endpoint_is_not_reachable_through_the_proxy(
        self, stack: FrontedStack, carol: httpx.AsyncClient, path: str
    ) -> None:
        # Even with the secret and a session: from outside it is not found, and its answer is never a credential.
        headers = {"Cookie": cookie_header(carol), "X-Channelgate-Auth-Secret": stack.secret, **self.probe}
        status, answer = await raw_get(stack.proxy_port, path, headers)
        assert status == 404, path
        assert stack.credentials["phone"].encode() not in answer
