"""The demo consoles: each credential scheme, the gateway's assertion, and the chat WebSocket and event stream.

Assertions are signed here by a :class:`GatewaySigner` whose JWKS a tiny HTTP server publishes, as the gateway
would. HTTP tests drive the Starlette app in-process through httpx's ASGI transport; the WebSocket and event
stream tests run the console's command line under uvicorn and talk to it over the network.
"""

from __future__ import annotations

import base64
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets
from starlette.datastructures import Secret
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from deploy.demo.console_auth import (
    ASSERTION_HEADER,
    AssertionVerifier,
    BearerToken,
    GatewayKeys,
)
from deploy.demo.consoles import console_app, create_app
from tests.demo.servers import GatewaySigner, demo_process

CREDENTIAL = "console-credential-8f3a"


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


#: The header that carries each console's credential, right and wrong.
CREDENTIALS = {
    "chat": {"Authorization": f"Bearer {CREDENTIAL}"},
    "phone": {"X-Api-Key": CREDENTIAL},
    "mail": {"Authorization": basic("channelgate", CREDENTIAL)},
}
WRONG_CREDENTIALS = [
    ("chat", {}),
    ("chat", {"Authorization": "Bearer not-it"}),
    ("chat", {"Authorization": basic("channelgate", CREDENTIAL)}),
    ("chat", {"X-Api-Key": CREDENTIAL}),
    ("phone", {}),
    ("phone", {"X-Api-Key": "not-it"}),
    ("phone", {"Authorization": f"Bearer {CREDENTIAL}"}),
    ("mail", {}),
    ("mail", {"Authorization": basic("channelgate", "not-it")}),
    ("mail", {"Authorization": basic("admin", CREDENTIAL)}),
    ("mail", {"Authorization": f"Bearer {CREDENTIAL}"}),
    ("mail", {"Authorization": "Basic !!not-base64!!"}),
]


@asynccontextmanager
async def console(
    channel: str, signer: GatewaySigner, jwks_url: str, **options: Any
) -> AsyncIterator[httpx.AsyncClient]:
    """The console app in-process, behind httpx's ASGI transport."""
    app = create_app(channel, CREDENTIAL, jwks_url, signer.issuer, **options)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://console.test") as client:
        yield client


@pytest.mark.parametrize(("channel", "headers"), WRONG_CREDENTIALS)
async def test_a_console_refuses_a_missing_or_wrong_credential_even_with_a_valid_assertion(
    signer: GatewaySigner, jwks_url: str, channel: str, headers: dict[str, str]
) -> None:
    assertion = signer.sign("gw-1", aud=channel)
    async with console(channel, signer, jwks_url) as client:
        answer = await client.get("/", headers={**headers, ASSERTION_HEADER: assertion})
    assert answer.status_code == 401
    assert answer.json()["error"] == "invalid_credential"
    assert signer.fetches == 0  # no work for the gateway's JWKS before the credential checks out


@pytest.mark.parametrize(
    ("channel", "challenge"), [("chat", "Bearer"), ("phone", None), ("mail", "Basic")], ids=["chat", "phone", "mail"]
)
async def test_a_refusal_names_the_scheme_the_console_expects(
    signer: GatewaySigner, jwks_url: str, channel: str, challenge: str | None
) -> None:
    async with console(channel, signer, jwks_url) as client:
        answer = await client.get("/")
    assert answer.headers.get("www-authenticate", "").split(" ")[0] == (challenge or "")


@pytest.mark.parametrize("channel", ["chat", "phone", "mail"])
@pytest.mark.parametrize("algorithm", ["ES256", "RS256"])
async def test_the_right_credential_and_assertion_show_the_agent_and_never_the_credential(
    signer: GatewaySigner, jwks_url: str, channel: str, algorithm: str
) -> None:
    signer.add_key("gw-2", algorithm)
    async with console(channel, signer, jwks_url) as client:
        assertion = signer.sign("gw-2", aud=channel)
        answer = await client.get("/", headers={**CREDENTIALS[channel], ASSERTION_HEADER: assertion})
    assert answer.status_code == 200
    assert "You are <strong>alice</strong> (groups chat-agents, supervisors)" in answer.text
    assert "as asserted by channelgate" in answer.text
    assert "received its API credential from the gateway" in answer.text
    assert CREDENTIAL not in answer.text


def _unknown_key(signer: GatewaySigner) -> str:
    signer.add_key("never-published", publish=False)
    return signer.sign("never-published")


def _forged_with_a_published_kid(signer: GatewaySigner) -> str:
    signer.add_key("impostor", publish=False)
    _, payload, signature = signer.sign("impostor").split(".")
    genuine_header = signer.sign("gw-1").split(".")[0]
    return ".".join([genuine_header, payload, signature])


def _unsigned(signer: GatewaySigner) -> str:
    header = base64.urlsafe_b64encode(b'{"alg":"none","kid":"gw-1"}').rstrip(b"=").decode()
    return header + "." + signer.sign("gw-1").split(".")[1] + "."


ATTACKS: dict[str, Any] = {
    "missing": lambda signer: None,
    "garbage": lambda signer: "not.a.jwt",
    "other-channel": lambda signer: signer.sign("gw-1", aud="phone"),
    "other-issuer": lambda signer: signer.sign("gw-1", iss="http://evil.test"),
    "expired": lambda signer: signer.sign("gw-1", exp=int(time.time()) - 120),
    "no-exp": lambda signer: signer.sign("gw-1", exp=None),
    "no-sub": lambda signer: signer.sign("gw-1", sub=None),
    "no-username": lambda signer: signer.sign("gw-1", preferred_username=None),
    "unknown-key": _unknown_key,
    "forged-signature": _forged_with_a_published_kid,
    "alg-none": _unsigned,
}


@pytest.mark.parametrize("attack", ATTACKS)
async def test_an_invalid_assertion_is_refused(signer: GatewaySigner, jwks_url: str, attack: str) -> None:
    assertion = ATTACKS[attack](signer)
    headers = dict(CREDENTIALS["chat"])
    if assertion is not None:
        headers[ASSERTION_HEADER] = assertion
    async with console("chat", signer, jwks_url) as client:
        answer = await client.get("/", headers=headers)
    assert answer.status_code == 401
    assert answer.json()["error"] == "invalid_assertion"


async def test_keys_are_fetched_once_and_again_when_the_gateway_rotates(signer: GatewaySigner, jwks_url: str) -> None:
    async with console("chat", signer, jwks_url, jwks_min_refresh_seconds=0) as client:
        for _ in range(3):
            ok = await client.get("/", headers={**CREDENTIALS["chat"], ASSERTION_HEADER: signer.sign("gw-1")})
            assert ok.status_code == 200
        assert signer.fetches == 1
        signer.add_key("gw-2", "RS256")
        rotated = await client.get("/", headers={**CREDENTIALS["chat"], ASSERTION_HEADER: signer.sign("gw-2")})
    assert rotated.status_code == 200
    assert signer.fetches == 2


async def test_unknown_kids_do_not_make_the_console_hammer_the_gateway(signer: GatewaySigner, jwks_url: str) -> None:
    signer.add_key("stray", publish=False)
    async with console("chat", signer, jwks_url, jwks_min_refresh_seconds=60) as client:
        for _ in range(5):
            answer = await client.get("/", headers={**CREDENTIALS["chat"], ASSERTION_HEADER: signer.sign("stray")})
            assert answer.status_code == 401
    assert signer.fetches == 1


def test_the_chat_page_opens_its_socket_beside_itself() -> None:
    from deploy.demo.consoles import CHAT_PANEL

    assert 'base + "ws"' in CHAT_PANEL
    assert "connection closed" in CHAT_PANEL
    assert 'location.protocol === "https:" ? "wss://" : "ws://"' in CHAT_PANEL


async def test_service_routes_need_the_credential_but_no_agent(signer: GatewaySigner, jwks_url: str) -> None:
    async def ping(request: Request) -> PlainTextResponse:
        return PlainTextResponse("pong")

    verifier = AssertionVerifier(GatewayKeys(jwks_url), signer.issuer, "chat")
    app = console_app("chat", "Chat", BearerToken(Secret(CREDENTIAL)), verifier, service_routes=[Route("/ping", ping)])
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://console.test") as client:
        assert (await client.get("/ping", headers=CREDENTIALS["chat"])).text == "pong"
        assert (await client.get("/ping")).status_code == 401
        assert (await client.get("/", headers=CREDENTIALS["chat"])).status_code == 401


@pytest.fixture
def chat_process(signer: GatewaySigner, jwks_url: str, tmp_path: Path) -> Iterator[str]:
    """The chat console from its command line, under uvicorn, as ``make demo`` starts it."""
    args = {"channel": "chat", "credential": CREDENTIAL, "gateway-jwks": jwks_url, "gateway-issuer": signer.issuer}
    with demo_process("deploy.demo.consoles", args, tmp_path) as base:
        yield base


async def test_the_served_chat_console_speaks_http_websocket_and_event_stream(
    signer: GatewaySigner, chat_process: str
) -> None:
    headers = {**CREDENTIALS["chat"], ASSERTION_HEADER: signer.sign("gw-1")}
    async with httpx.AsyncClient(base_url=chat_process, headers=headers) as client:
        page = await client.get("/")
        assert page.status_code == 200
        assert "alice" in page.text
        assert CREDENTIAL not in page.text
        async with client.stream("GET", "/events") as stream:
            assert stream.headers["content-type"].startswith("text/event-stream")
            ticks = []
            async for line in stream.aiter_lines():
                if line.startswith("data: "):
                    ticks.append(line.removeprefix("data: "))
                if len(ticks) == 2:
                    break
    assert ticks == ["tick 0", "tick 1"]

    ws_url = chat_process.replace("http://", "ws://") + "/ws"
    async with websockets.connect(ws_url, additional_headers=headers) as socket:
        await socket.send("hi")
        assert await socket.recv() == "alice: hi"


@pytest.mark.parametrize(("credential", "assertion"), [(False, True), (True, False)], ids=["no-credential", "no-jwt"])
async def test_the_websocket_handshake_is_refused_without_credential_or_assertion(
    signer: GatewaySigner, chat_process: str, credential: bool, assertion: bool
) -> None:
    headers = dict(CREDENTIALS["chat"]) if credential else {}
    if assertion:
        headers[ASSERTION_HEADER] = signer.sign("gw-1")
    ws_url = chat_process.replace("http://", "ws://") + "/ws"
    with pytest.raises(websockets.InvalidStatus) as denied:
        async with websockets.connect(ws_url, additional_headers=headers):
            pass
    assert denied.value.response.status_code == 401
