"""The connector contract: every test in ``ConnectorContract`` runs against every connector kind (only ``static``
today, in each of its injection schemes). A new kind adds one ``Test...`` class with a ``connector`` fixture.

The contract: declared capabilities match behaviour, the credential goes only into the upstream request headers
(replacing any client copy), and every deprovisioning step answers with a receipt for the connector's channel.
"""

from __future__ import annotations

import base64
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from connectors.base import AgentRef, Capability, Connector, Outcome, StepContext, StepResult, UpstreamRequest
from connectors.console_cookies import CookieJar
from connectors.cookie_jar import JAR_PREFIX
from connectors.seats import SECRET_NAME
from connectors.secret import Secret
from connectors.static import StaticCredentialConnector
from gateway.settings import StaticChannelSettings
from tests.components.form_console import FormConsole, form_console
from tests.components.form_console import replicas as cookie_jar_replicas
from tests.components.oauth_console import oauth_console
from tests.components.oauth_console import replicas as oauth2_replicas
from tests.components.seats_console import demo_console, seed
from tests.components.seats_console import replicas as seats_replicas

CREDENTIAL = "s3cr3t-channel-credential"
AGENT = AgentRef(agent_id="agent-1", user_name="alice", email="alice@example.com", manager_user_name="carol")
CTX = StepContext(idempotency_key="run-1:chat:step")
SUCCESSOR = AgentRef(agent_id="agent-2", user_name="carol")
URL = "https://console.internal/api/queue?x=1"
CLIENT_HEADERS = [("Accept", "application/json"), ("X-Request-Id", "r-1")]

#: Which capability makes each deprovisioning step applicable.
STEP_CAPABILITIES = {
    "revoke": {Capability.REVOKE_TOKENS, Capability.SEATS, Capability.CONSOLE_LOGOUT},
    "hand_over": {Capability.TICKETS},
    "verify_no_access": {Capability.VERIFY},
}


async def _steps(connector: Connector) -> dict[str, StepResult]:
    return {
        "revoke": await connector.revoke(AGENT, CTX),
        "hand_over": await connector.hand_over(AGENT, SUCCESSOR, CTX),
        "verify_no_access": await connector.verify_no_access(AGENT, CTX),
    }


def _decoded(value: str) -> str:
    """A header value with any Basic credentials decoded, so the credential is visible in every encoding."""
    scheme, _, rest = value.partition(" ")
    if scheme.lower() == "basic":
        return value + "\n" + base64.b64decode(rest).decode()
    return value


async def _prepared(
    connector: Connector, headers: list[tuple[str, str]] | None = None, url: str = URL
) -> UpstreamRequest:
    request = UpstreamRequest("GET", url, list(CLIENT_HEADERS if headers is None else headers))
    await connector.prepare(AGENT, request)
    return request


class ConnectorContract:
    """Shared by every connector kind; subclasses provide the ``connector`` fixture, injecting ``CREDENTIAL``
    (or, for a kind with per-agent secrets, the ``credential`` fixture naming the one it injects for ``AGENT``)."""

    @pytest.fixture
    def connector(self) -> Connector:
        raise NotImplementedError

    @pytest.fixture
    def credential(self) -> str:
        return CREDENTIAL

    @pytest.fixture
    def url(self) -> str:
        """Where the proxied request goes (a kind bound to one console's origin overrides it)."""
        return URL

    async def test_a_connector_that_declares_inject_adds_each_injected_header_once(
        self, connector: Connector, url: str
    ) -> None:
        request = await _prepared(connector, url=url)
        names = [name.lower() for name, _ in request.headers]
        for injected in connector.injected_headers():
            expected = 1 if Capability.INJECT in connector.capabilities else 0
            assert names.count(injected.lower()) == expected

    async def test_prepare_changes_only_the_injected_headers(self, connector: Connector, url: str) -> None:
        request = await _prepared(connector, url=url)
        injected = {name.lower() for name in connector.injected_headers()}
        assert [(n, v) for n, v in request.headers if n.lower() not in injected] == CLIENT_HEADERS
        assert (request.method, request.url) == ("GET", url)

    async def test_the_credential_reaches_the_upstream_headers_and_nothing_else(
        self, connector: Connector, credential: str, url: str, caplog: pytest.LogCaptureFixture
    ) -> None:
        caplog.set_level(logging.DEBUG)
        request = await _prepared(connector, url=url)
        assert credential in "\n".join(_decoded(v) for _, v in request.headers)
        injected = {name.lower() for name in connector.injected_headers()}
        presented = [v for n, v in request.headers if n.lower() in injected]
        markers = {credential, *presented, *(part for v in presented for part in v.split() if len(part) >= 8)}
        results = await _steps(connector)
        await connector.on_upstream_unauthorized(AGENT, request)
        elsewhere = [
            request.url,
            request.method,
            repr(connector),
            str(connector),
            repr(getattr(connector, "__dict__", {})),
            caplog.text,
            *(repr(result) for result in results.values()),
        ]
        for marker in markers:
            assert all(marker not in text for text in elsewhere)

    async def test_prepare_from_memory_adds_exactly_what_prepare_adds_or_leaves_the_request_untouched(
        self, connector: Connector, url: str
    ) -> None:
        """The forward-auth listener's answer from a parser callback (gateway/forward_auth_protocol.py). Before
        prepare() ran, a credential may be held (a seat provisioned by this process) or not (False, untouched);
        once prepare() has read it, it is held, and the headers are prepare()'s, client copies replaced."""
        first = UpstreamRequest("GET", url, list(CLIENT_HEADERS))
        held_first = connector.prepare_from_memory(AGENT, first)
        prepared = await _prepared(connector, url=url)
        assert first.headers == (prepared.headers if held_first else CLIENT_HEADERS)
        forged = [(name.upper(), "forged-by-client") for name in connector.injected_headers()]
        from_memory = UpstreamRequest("GET", url, [*CLIENT_HEADERS, *forged])
        assert connector.prepare_from_memory(AGENT, from_memory) is True
        assert from_memory.headers == prepared.headers

    @pytest.mark.parametrize("spelling", [str.upper, str.lower])
    async def test_a_client_copy_of_an_injected_header_is_replaced_in_any_spelling(
        self, connector: Connector, spelling: object, url: str
    ) -> None:
        forged = [(spelling(name), "forged-by-client") for name in connector.injected_headers()]  # type: ignore[operator]
        request = await _prepared(connector, [*CLIENT_HEADERS, *forged], url)
        assert "forged-by-client" not in "\n".join(_decoded(v) for _, v in request.headers)
        names = [name.lower() for name, _ in request.headers]
        assert all(names.count(name.lower()) == 1 for name in connector.injected_headers())

    async def test_every_step_answers_with_a_receipt_for_its_channel(self, connector: Connector) -> None:
        for step, result in (await _steps(connector)).items():
            assert isinstance(result, StepResult)
            assert result.channel == connector.channel
            assert result.step == step
            assert result.detail

    async def test_a_step_is_not_applicable_exactly_when_its_capability_is_not_declared(
        self, connector: Connector
    ) -> None:
        for step, result in (await _steps(connector)).items():
            declared = bool(STEP_CAPABILITIES[step] & connector.capabilities)
            assert (result.outcome is Outcome.NOT_APPLICABLE) is not declared

    async def test_after_an_upstream_401_the_request_still_carries_one_credential(
        self, connector: Connector, url: str
    ) -> None:
        request = await _prepared(connector, url=url)
        resend = await connector.on_upstream_unauthorized(AGENT, request)
        assert isinstance(resend, bool)
        names = [name.lower() for name, _ in request.headers]
        assert all(names.count(name.lower()) == 1 for name in connector.injected_headers())

    async def test_close_forgets_and_can_be_called_twice(self, connector: Connector, url: str) -> None:
        await _prepared(connector, url=url)
        await connector.aclose()
        await connector.aclose()


async def _load() -> Secret:
    return Secret(CREDENTIAL)


class TestStaticBearer(ConnectorContract):
    @pytest.fixture
    def connector(self) -> Connector:
        return StaticCredentialConnector("chat", StaticChannelSettings(inject="bearer"), _load)


class TestStaticHeader(ConnectorContract):
    @pytest.fixture
    def connector(self) -> Connector:
        return StaticCredentialConnector("chat", StaticChannelSettings(inject="header", header_name="X-Api-Key"), _load)


class TestStaticBasic(ConnectorContract):
    @pytest.fixture
    def connector(self) -> Connector:
        return StaticCredentialConnector("chat", StaticChannelSettings(inject="basic"), _load)


class TestCookieJar(ConnectorContract):
    """The vault holds a jar with ``CREDENTIAL`` as the console session cookie of ``AGENT`` (as if another replica
    had logged in); on a 401 the connector signs in to the real form-login console with alice's stored password."""

    @pytest.fixture
    async def console(self) -> AsyncIterator[FormConsole]:
        async with form_console() as console:
            yield console

    @pytest.fixture
    def url(self, console: FormConsole) -> str:
        """The jar goes to its console's origin only."""
        return f"{console.url}/api/queue?x=1"

    @pytest.fixture
    async def connector(self, console: FormConsole, tmp_path: Path) -> AsyncIterator[Connector]:
        async with cookie_jar_replicas(tmp_path) as replicas:
            await replicas.set_password(AGENT.agent_id, AGENT.user_name)
            jar = CookieJar().merge([f"legacy_session={CREDENTIAL}; Path=/"], time.time())
            await replicas.secrets().put(AGENT.agent_id, JAR_PREFIX + "seeded", Secret(jar.dumps()))
            yield replicas.connector(console)


class TestOAuth2(ConnectorContract):
    """``agent_secrets`` holds ``CREDENTIAL`` as ``AGENT``'s live access token (as if another replica had obtained
    it); on a 401 the connector exchanges a new one at the real console's token endpoint."""

    @pytest.fixture
    async def connector(self, tmp_path: Path) -> AsyncIterator[Connector]:
        async with oauth_console() as console, oauth2_replicas(tmp_path) as replicas:
            now = time.time()
            meta = {"kind": "access", "grant": "seeded", "obtained_at": now, "expires_at": now + 300}
            await replicas.secrets().put(AGENT.agent_id, "access:seeded", Secret(CREDENTIAL), meta)
            yield replicas.connector(console)


class TestStaticWithTickets(ConnectorContract):
    """The static kind on a channel with a ticket API (the real chat console's, ``CREDENTIAL`` guarding it):
    ``hand_over`` applies too."""

    @pytest.fixture
    async def connector(self, tmp_path: Path) -> AsyncIterator[Connector]:
        tickets = seed(("T-1", AGENT.user_name, "open"))
        async with (
            demo_console("chat", tickets=tickets, credential=CREDENTIAL) as console,
            seats_replicas(f"sqlite+aiosqlite:///{tmp_path}/channelgate.db") as shared,
        ):
            yield shared.static(console)


class TestSeats(ConnectorContract):
    """A real seat for ``AGENT`` at the phone console in seats mode (with a ticket API), provisioned through its
    admin API: the seat's own key is the credential injected."""

    @pytest.fixture
    async def seated(self, tmp_path: Path) -> AsyncIterator[tuple[Connector, str]]:
        async with (
            demo_console("phone", auth="seats", tickets=seed(("T-1", AGENT.user_name, "open"))) as console,
            seats_replicas(f"sqlite+aiosqlite:///{tmp_path}/channelgate.db") as shared,
        ):
            connector = shared.seats(console, tickets=console.tickets_settings())
            assert (await connector.provision(AGENT, StepContext("contract:provision"))).outcome is Outcome.DONE
            stored = await shared.secrets("phone").get(AGENT.agent_id, SECRET_NAME)
            assert stored is not None
            yield connector, stored.value.reveal()

    @pytest.fixture
    def connector(self, seated: tuple[Connector, str]) -> Connector:
        return seated[0]

    @pytest.fixture
    def credential(self, seated: tuple[Connector, str]) -> str:
        return seated[1]
