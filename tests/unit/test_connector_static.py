"""The static connector: one shared vault credential, presented in the configured scheme, re-read within seconds."""

from __future__ import annotations

import base64

import pytest
from pydantic import ValidationError

from connectors.base import AgentRef, Outcome, StepContext, UpstreamRequest
from connectors.secret import Secret
from connectors.static import CACHE_SECONDS, NOT_PER_AGENT, StaticCredentialConnector
from gateway.errors import ConfigError, VaultError
from gateway.settings import StaticChannelSettings

AGENT = AgentRef(agent_id="agent-1", user_name="alice")
CTX = StepContext(idempotency_key="run-1:chat:step")
URL = "https://console.internal/"


class Vault:
    """A credential source that counts its reads, with a clock the test moves."""

    def __init__(self, value: str) -> None:
        self.value = value
        self.reads = 0
        self.now = 1000.0

    async def load(self) -> Secret:
        self.reads += 1
        return Secret(self.value)

    def clock(self) -> float:
        return self.now


def _connector(vault: Vault, inject: str = "bearer", header_name: str | None = None) -> StaticCredentialConnector:
    settings = StaticChannelSettings(inject=inject, header_name=header_name)
    return StaticCredentialConnector("chat", settings, vault.load, clock=vault.clock)


@pytest.mark.parametrize(
    ("inject", "header_name", "expected"),
    [
        ("bearer", None, ("Authorization", "Bearer tok-1")),
        ("header", "X-Api-Key", ("X-Api-Key", "tok-1")),
        ("basic", None, ("Authorization", "Basic " + base64.b64encode(b"channelgate:tok-1").decode())),
    ],
)
async def test_the_credential_is_presented_in_the_configured_scheme(
    inject: str, header_name: str | None, expected: tuple[str, str]
) -> None:
    request = UpstreamRequest("GET", URL)
    await _connector(Vault("tok-1"), inject, header_name).prepare(AGENT, request)
    assert request.headers == [expected]


@pytest.mark.parametrize(
    ("inject", "header_name", "client_name"),
    [("bearer", None, "authorization"), ("header", "X-Api-Key", "x-API-key"), ("basic", None, "AUTHORIZATION")],
)
async def test_a_client_sent_header_of_the_same_name_is_replaced_in_any_spelling(
    inject: str, header_name: str | None, client_name: str
) -> None:
    request = UpstreamRequest("GET", URL, [(client_name, "forged"), ("Accept", "*/*"), (client_name, "forged-2")])
    await _connector(Vault("tok-1"), inject, header_name).prepare(AGENT, request)
    assert [v for _, v in request.headers if "forged" in v] == []
    assert [n.lower() for n, _ in request.headers].count(client_name.lower()) == 1
    assert ("Accept", "*/*") in request.headers


async def test_the_credential_is_read_once_per_cache_period_and_a_new_one_is_used_after_it() -> None:
    vault = Vault("old")
    connector = _connector(vault)
    for _ in range(3):
        await connector.prepare(AGENT, UpstreamRequest("GET", URL))
    assert vault.reads == 1
    vault.value = "new"
    vault.now += CACHE_SECONDS - 0.1
    request = UpstreamRequest("GET", URL)
    await connector.prepare(AGENT, request)
    assert request.header("authorization") == "Bearer old"
    vault.now += 0.2
    await connector.prepare(AGENT, request)
    assert request.header("authorization") == "Bearer new"
    assert vault.reads == 2


async def test_after_an_upstream_401_a_changed_credential_is_put_on_the_request_and_it_is_resent() -> None:
    vault = Vault("old")
    connector = _connector(vault)
    request = UpstreamRequest("GET", URL)
    await connector.prepare(AGENT, request)
    vault.value = "rotated"
    vault.now += 1.5
    assert await connector.on_upstream_unauthorized(AGENT, request) is True
    assert request.headers == [("Authorization", "Bearer rotated")]
    assert await connector.on_upstream_unauthorized(AGENT, request) is False


async def test_a_burst_of_401s_reads_the_vault_at_most_once_a_second() -> None:
    vault = Vault("tok")
    connector = _connector(vault)
    requests = [UpstreamRequest("GET", URL) for _ in range(5)]
    for request in requests:
        await connector.prepare(AGENT, request)
    vault.now += 1.5
    assert [await connector.on_upstream_unauthorized(AGENT, r) for r in requests] == [False] * 5
    assert vault.reads == 2


async def test_a_request_prepared_before_another_request_refreshed_is_still_resent() -> None:
    vault = Vault("old")
    connector = _connector(vault)
    first, second = UpstreamRequest("GET", URL), UpstreamRequest("GET", URL)
    await connector.prepare(AGENT, first)
    await connector.prepare(AGENT, second)
    vault.value = "new"
    vault.now += 1.5
    assert await connector.on_upstream_unauthorized(AGENT, first) is True
    assert await connector.on_upstream_unauthorized(AGENT, second) is True


@pytest.mark.parametrize("value", ["tok\r\nX-Admin: yes", "tok\nx", "tok\x00", "tok\x7f"])
@pytest.mark.parametrize("inject", ["bearer", "header"])
async def test_a_credential_with_line_breaks_or_controls_is_refused_without_showing_it(value: str, inject: str) -> None:
    connector = _connector(Vault(value), inject, "X-Api-Key" if inject == "header" else None)
    request = UpstreamRequest("GET", URL)
    with pytest.raises(VaultError, match="'chat'") as error:
        await connector.prepare(AGENT, request)
    assert "tok" not in str(error.value)
    assert request.headers == []


async def test_basic_carries_any_text_because_it_is_base64() -> None:
    request = UpstreamRequest("GET", URL)
    await _connector(Vault("pässwörd:€"), "basic").prepare(AGENT, request)
    assert base64.b64decode(request.headers[0][1].removeprefix("Basic ")) == "channelgate:pässwörd:€".encode()


@pytest.mark.parametrize("header_name", ["Host", "content-length", "Cookie"])
def test_a_header_name_that_cannot_carry_a_credential_is_a_config_error(header_name: str) -> None:
    with pytest.raises(ConfigError, match="header_name"):
        _connector(Vault("tok"), "header", header_name)


@pytest.mark.parametrize("header_name", ["Bad Header", "X-Key:", "X-Key\r\nX-Admin: yes"])
def test_a_header_name_that_is_not_a_plain_token_is_refused_by_the_settings(header_name: str) -> None:
    with pytest.raises(ValidationError, match="header_name"):
        StaticChannelSettings(inject="header", header_name=header_name)


async def test_nothing_per_agent_is_revoked_handed_over_or_verified() -> None:
    connector = _connector(Vault("tok"))
    results = [
        await connector.revoke(AGENT, CTX),
        await connector.hand_over(AGENT, None, CTX),
        await connector.verify_no_access(AGENT, CTX),
    ]
    assert {(r.outcome, r.detail, r.channel) for r in results} == {(Outcome.NOT_APPLICABLE, NOT_PER_AGENT, "chat")}
    assert NOT_PER_AGENT == "shared credential: nothing per agent to revoke"


async def test_a_vault_error_reaches_the_proxy_and_is_not_cached() -> None:
    vault = Vault("tok")
    calls = {"n": 0}

    async def flaky() -> Secret:
        calls["n"] += 1
        if calls["n"] == 1:
            raise VaultError("No credential is stored for channel 'chat'")
        return await vault.load()

    connector = StaticCredentialConnector("chat", StaticChannelSettings(), flaky, clock=vault.clock)
    with pytest.raises(VaultError):
        await connector.prepare(AGENT, UpstreamRequest("GET", URL))
    request = UpstreamRequest("GET", URL)
    await connector.prepare(AGENT, request)
    assert request.header("Authorization") == "Bearer tok"
