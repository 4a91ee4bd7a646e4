"""A route's ``[[routes.data]]`` rule can give WebSocket upgrades their own action (``methods = ["WEBSOCKET"]``):
an agent sends data over a console's socket (chat replies), which policies may treat as a ``change``. Through the
real gateway, in front of hostile echo consoles (as in test_console_isolation.py), inline and through
forward-auth. Without such a rule an upgrade stays a ``view``."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

import tests.components.echo_gateway as echo_gateway
from gateway.forward_auth import SECRET_HEADER
from gateway.storage.access_log import AccessQuery
from tests.components.echo_gateway import Deployment, cookie_of, deployment
from tests.components.hostile_console import HostileConsole
from tests.components.oidc_provider import OidcProviderFactory

pytestmark = [pytest.mark.oidc, pytest.mark.timeout(90)]

ROOT = Path(__file__).resolve().parents[2]
JSON = {"Accept": "application/json"}
SECRET = secrets.token_urlsafe(32)
MAIL_READ_ONLY = """
@id("mail-read-only")
@reason("Only supervisors may write on the mail console.")
forbid (principal, action == Action::"change", resource in Channel::"mail")
unless { principal in Group::"supervisors" };
"""
# Appended after the routes, so it belongs to the last one (mail).
RULES = '[[routes.data]]\npath = "/mail/ws"\nmethods = ["WEBSOCKET"]\naction = "change"\n\n'


@pytest.fixture
async def gateway(
    oidc_provider_factory: OidcProviderFactory, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> AsyncIterator[Deployment]:
    monkeypatch.setattr(echo_gateway, "EchoConsole", HostileConsole)
    (tmp_path / "site.cedar").write_text(MAIL_READ_ONLY)
    extra = (
        f'[policies]\npaths = ["{ROOT / "policies" / "default"}", "{tmp_path}"]\n\n'
        f'[forward_auth]\nenabled = true\nsecret = "{SECRET}"\n'
    )
    async with deployment(oidc_provider_factory, extra_toml=RULES + extra) as deployed:
        yield deployed


def _ws(gateway: Deployment, path: str) -> str:
    return gateway.url.replace("http://", "ws://") + path


def _upgrades(gateway: Deployment, channel: str) -> list[str]:
    return [seen.path for seen in gateway.consoles[channel].seen if seen.method == "WEBSOCKET"]


async def test_a_websocket_rule_decides_the_upgrade_by_its_action_and_the_record_says_so(gateway: Deployment) -> None:
    carol = await gateway.login("carol")  # mail-agents, not a supervisor
    with pytest.raises(InvalidStatus) as refused:
        async with connect(_ws(gateway, "/mail/ws"), additional_headers={"Cookie": cookie_of(carol)}):
            pass
    assert refused.value.response.status_code == 403
    assert _upgrades(gateway, "mail") == []
    await gateway.services.audit.flush()
    [record] = await gateway.services.access_log.search(AccessQuery(agent_name="carol", kind="request"))
    assert (record.method, record.action, record.decision, record.reason) == (
        "WEBSOCKET",
        "change",
        "deny",
        "mail-read-only",
    )


async def test_an_agent_the_policy_allows_to_change_opens_the_socket(gateway: Deployment) -> None:
    alice = await gateway.login("alice")  # supervisors
    async with connect(_ws(gateway, "/mail/ws"), additional_headers={"Cookie": cookie_of(alice)}) as ws:
        await ws.send("reply to the customer")
        assert await ws.recv() == "reply to the customer"
    assert _upgrades(gateway, "mail") == ["/ws"]


async def test_the_rule_applies_to_upgrades_alone_and_other_sockets_stay_a_view(gateway: Deployment) -> None:
    carol = await gateway.login("carol")
    assert (await carol.get(gateway.url + "/mail/ws", headers=JSON)).status_code != 403  # a plain GET: a view
    async with connect(_ws(gateway, "/phone/ws"), additional_headers={"Cookie": cookie_of(carol)}) as ws:
        await ws.send("hello")
        assert await ws.recv() == "hello"


async def test_forward_auth_cannot_tell_an_upgrade_so_a_get_of_that_path_is_decided_as_both(
    gateway: Deployment,
) -> None:
    carol, alice = await gateway.login("carol"), await gateway.login("alice")

    async def ask(agent: httpx.AsyncClient, uri: str) -> httpx.Response:
        headers = {"X-Original-URI": uri, "X-Original-Method": "GET", SECRET_HEADER: SECRET, **JSON}
        return await agent.get(f"{gateway.url}/.channelgate/auth", headers=headers)

    refused = await ask(carol, "/mail/ws")
    assert (refused.status_code, refused.headers.get("x-channelgate-error")) == (403, "websocket_refused")
    assert (await ask(alice, "/mail/ws")).status_code == 200
    assert (await ask(carol, "/mail/inbox")).status_code == 200
