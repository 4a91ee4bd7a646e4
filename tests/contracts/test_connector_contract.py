"""One contract for every connector kind: declared capabilities match behaviour, and the credential goes only
into the upstream request's headers, replacing any client copy."""

from __future__ import annotations

import base64

import pytest

from connectors.base import AgentRef, Capability, Connector, Outcome, UpstreamRequest
from connectors.secret import Secret
from connectors.static import StaticCredentialConnector
from gateway.settings import ChannelSettings

CREDENTIAL = "s3cr3t-channel-credential"
AGENT = AgentRef(agent_id="agent-1", user_name="alice", email="alice@example.com")


async def _load() -> Secret:
    return Secret(CREDENTIAL)


def _static(inject: str, header_name: str | None = None) -> Connector:
    settings = ChannelSettings(inject=inject, header_name=header_name)  # type: ignore[arg-type]
    return StaticCredentialConnector("chat", settings, _load)


CONNECTORS = {
    "static-bearer": lambda: _static("bearer"),
    "static-header": lambda: _static("header", "X-Api-Key"),
    "static-basic": lambda: _static("basic"),
}


@pytest.fixture(params=sorted(CONNECTORS))
def connector(request: pytest.FixtureRequest) -> Connector:
    made: Connector = CONNECTORS[request.param]()
    return made


def _presented(headers: list[tuple[str, str]]) -> str:
    """Every header value, Basic credentials decoded, so a leak in any encoding is visible."""
    values = []
    for _, value in headers:
        values.append(value)
        if value.startswith("Basic "):
            values.append(base64.b64decode(value.removeprefix("Basic ")).decode())
    return "\n".join(values)


async def test_prepare_puts_the_credential_into_the_upstream_headers_only(connector: Connector) -> None:
    request = UpstreamRequest("GET", "http://console.internal/", [("Accept", "text/html")])
    await connector.prepare(AGENT, request)
    assert CREDENTIAL in _presented(request.headers)
    assert CREDENTIAL not in request.url
    assert CREDENTIAL not in repr(connector.__dict__)


async def test_prepare_replaces_a_client_sent_copy_of_the_injected_header(connector: Connector) -> None:
    injected = connector.injected_headers()
    request = UpstreamRequest("GET", "http://console.internal/", [(name.upper(), "evil") for name in injected])
    await connector.prepare(AGENT, request)
    names = [name.lower() for name, _ in request.headers]
    assert all(names.count(name.lower()) == 1 for name in injected)
    assert "evil" not in _presented(request.headers)


async def test_every_step_answers_with_a_receipt_for_its_channel(connector: Connector) -> None:
    for result in (
        await connector.revoke(AGENT),
        await connector.hand_over(AGENT, "bob"),
        await connector.verify_no_access(AGENT),
    ):
        assert result.channel == "chat"
        assert result.outcome in set(Outcome)
        assert CREDENTIAL not in result.detail


async def test_a_connector_without_a_capability_reports_the_step_as_not_applicable(connector: Connector) -> None:
    steps = {
        Capability.REVOKE_TOKENS: connector.revoke(AGENT),
        Capability.TICKETS: connector.hand_over(AGENT, None),
        Capability.VERIFY: connector.verify_no_access(AGENT),
    }
    for capability, step in steps.items():
        result = await step
        if capability not in connector.capabilities:
            assert result.outcome is Outcome.NOT_APPLICABLE


@pytest.mark.parametrize(
    ("inject", "header_name", "expected"),
    [
        ("bearer", None, ("Authorization", f"Bearer {CREDENTIAL}")),
        ("header", "X-Api-Key", ("X-Api-Key", CREDENTIAL)),
        ("basic", None, ("Authorization", "Basic " + base64.b64encode(f"channelgate:{CREDENTIAL}".encode()).decode())),
    ],
)
async def test_the_static_connector_presents_the_credential_in_the_configured_scheme(
    inject: str, header_name: str | None, expected: tuple[str, str]
) -> None:
    request = UpstreamRequest("GET", "http://console.internal/")
    await _static(inject, header_name).prepare(AGENT, request)
    assert request.headers == [expected]


async def test_a_changed_credential_is_picked_up_after_an_upstream_401() -> None:
    current = {"value": "one"}

    async def load() -> Secret:
        return Secret(current["value"])

    connector = StaticCredentialConnector("chat", ChannelSettings(), load)
    request = UpstreamRequest("GET", "http://console.internal/")
    await connector.prepare(AGENT, request)
    current["value"] = "two"
    assert await connector.on_upstream_unauthorized(AGENT) is True
    await connector.prepare(AGENT, request)
    assert request.headers == [("Authorization", "Bearer two")]
    assert await connector.on_upstream_unauthorized(AGENT) is False
