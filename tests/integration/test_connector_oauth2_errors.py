"""The ``oauth2`` connector's failures, as receipts, logs and errors show them: actionable, and never carrying a
token or the client secret, whatever the authorization server echoes (connectors/oauth2_errors.py). Against the
real chat console in its OAuth 2.0 mode, over HTTP, as tests/integration/test_connector_oauth2.py."""

from __future__ import annotations

import base64
import logging
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from urllib.parse import quote_plus, unquote_plus

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from connectors.base import Outcome, StepResult
from gateway.errors import UpstreamError
from tests.components.asgi_server import serve_asgi
from tests.components.oauth_console import (
    ALICE,
    BOB,
    CHANNEL,
    CLIENT_ID,
    CLIENT_SECRET,
    CTX,
    Clock,
    OAuthConsole,
    Replicas,
    bearer,
    oauth_console,
    prepared,
)
from tests.components.oauth_console import replicas as shared_database


@pytest.fixture
async def console() -> AsyncIterator[OAuthConsole]:
    async with oauth_console() as console:
        yield console


@pytest.fixture
async def replicas(tmp_path: Path) -> AsyncIterator[Replicas]:
    async with shared_database(tmp_path) as replicas:
        yield replicas


async def test_a_wrong_client_secret_fails_with_an_actionable_detail_and_no_secret(
    console: OAuthConsole, replicas: Replicas
) -> None:
    wrong = "not-the-client-secret-9d1e"
    await prepared(replicas.connector(console))
    misconfigured = replicas.connector(console, secret=wrong)
    with pytest.raises(UpstreamError) as raised:
        await prepared(misconfigured, BOB)
    results = [await misconfigured.revoke(ALICE, CTX), await misconfigured.verify_no_access(ALICE, CTX)]
    assert [result.outcome for result in results] == [Outcome.FAILED, Outcome.FAILED]
    assert "administrator" in str(raised.value)
    for text in (str(raised.value.detail), *(result.detail for result in results)):
        assert "invalid_client" in text
        assert f"client_id {CLIENT_ID!r}" in text
        assert f"channelgate channels set-credential {CHANNEL}" in text
        assert wrong not in text
        assert CLIENT_SECRET not in text
    assert console.effects.entries == []


async def test_no_token_or_secret_appears_in_receipts_logs_exceptions_or_reprs(
    console: OAuthConsole, replicas: Replicas, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    clock = Clock()
    connector = replicas.connector(console, clock=clock)
    seen: set[str] = {CLIENT_SECRET, "wrong-secret-0f3b"}
    request = await prepared(connector)
    # The subject token of that exchange: the signer hands out the same assertion again for a while.
    seen.add(console.signer.sign(ALICE.agent_id, ALICE.user_name, frozenset(), CHANNEL, time.time()))
    seen |= {row.value.reveal() for row in await replicas.secrets().list(ALICE.agent_id)}
    clock.shift = 290
    await prepared(connector)
    await connector.on_upstream_unauthorized(ALICE, request)
    seen |= {row.value.reveal() for row in await replicas.secrets().list(ALICE.agent_id)}
    texts: list[str] = [repr(connector), str(connector), repr(vars(connector))]
    wrong = replicas.connector(console, secret="wrong-secret-0f3b")
    results: list[StepResult] = [
        await wrong.revoke(ALICE, CTX),
        await connector.verify_no_access(ALICE, CTX),
        await connector.revoke(ALICE, CTX),
        await connector.verify_no_access(ALICE, CTX),
    ]
    assert [result.outcome for result in results] == [Outcome.FAILED, Outcome.FAILED, Outcome.DONE, Outcome.DONE]
    await console.served.stop()
    for failing in (connector, wrong):
        try:
            await prepared(failing, BOB)
        except UpstreamError as error:
            texts += [str(error), repr(error), str(error.detail)]
    texts += [repr(result) for result in results]
    texts.append(caplog.text)
    assert len(seen) >= 5  # the secret, two access tokens and the rotated refresh tokens
    assert "access token obtained for agent agent-alice" in caplog.text
    for secret in seen:
        assert all(secret not in text for text in texts)


async def test_a_server_echoing_the_token_in_its_error_does_not_get_it_into_the_receipt(
    console: OAuthConsole, replicas: Replicas
) -> None:
    async def echo(request: Request) -> JSONResponse:
        token = (await request.form())["token"]
        return JSONResponse({"error": "invalid_request", "error_description": f"bad token {token}"}, status_code=400)

    async def plain(request: Request) -> JSONResponse:
        return JSONResponse({"error": "invalid_request", "error_description": "token_type_hint is odd"}, 400)

    app = Starlette(routes=[Route("/echo", echo, methods=["POST"]), Route("/plain", plain, methods=["POST"])])
    async with serve_asgi(app) as hostile:
        request = await prepared(replicas.connector(console))
        echoed = await replicas.connector(console, revocation_url=f"{hostile.url}/echo").revoke(ALICE, CTX)
        described = await replicas.connector(console, revocation_url=f"{hostile.url}/plain").revoke(ALICE, CTX)
    assert (echoed.outcome, described.outcome) == (Outcome.FAILED, Outcome.FAILED)
    assert bearer(request) not in echoed.detail
    assert echoed.detail.startswith("the revocation endpoint answered HTTP 400 invalid_request (")
    assert described.detail.startswith("the revocation endpoint answered HTTP 400 invalid_request: token_type_hint")


#: How an authorization server could repeat the client secret it was sent in the Basic header (RFC 6749 §2.3.1).
SECRET_ECHOES: dict[str, Callable[[str, str], str]] = {
    "raw": lambda pair, secret: secret,
    "form-encoded": lambda pair, secret: quote_plus(secret),
    "basic credentials": lambda pair, secret: base64.b64encode(pair.encode()).decode(),
    "part after the colon": lambda pair, secret: secret.partition(":")[2],
}


@pytest.mark.parametrize("echo", list(SECRET_ECHOES))
async def test_a_server_echoing_the_client_secret_gets_it_into_no_receipt_or_error(
    echo: str, console: OAuthConsole, replicas: Replicas
) -> None:
    async def echo_client(request: Request) -> JSONResponse:
        pair = base64.b64decode(request.headers["authorization"].partition(" ")[2]).decode()
        client_id, _, secret = pair.partition(":")
        echoed = SECRET_ECHOES[echo](pair, unquote_plus(secret))
        description = f"client {unquote_plus(client_id)} with secret {echoed} may not do this"
        return JSONResponse({"error": "unauthorized_client", "error_description": description}, status_code=400)

    app = Starlette(routes=[Route("/oauth", echo_client, methods=["POST"])])
    async with serve_asgi(app) as hostile:
        await prepared(replicas.connector(console))
        at = f"{hostile.url}/oauth"
        connector = replicas.connector(console, token_url=at, revocation_url=at, introspection_url=at)
        results = [await connector.revoke(ALICE, CTX), await connector.verify_no_access(ALICE, CTX)]
        with pytest.raises(UpstreamError) as raised:
            await prepared(connector, BOB)
    assert [result.outcome for result in results] == [Outcome.FAILED, Outcome.FAILED]
    pair = f"{quote_plus(CLIENT_ID)}:{quote_plus(CLIENT_SECRET)}"
    forms = {SECRET_ECHOES[name](pair, CLIENT_SECRET) for name in SECRET_ECHOES}
    details = [*(result.detail for result in results), str(raised.value.detail)]
    assert all("answered HTTP 400 unauthorized_client" in detail for detail in details), details
    for text in (*details, str(raised.value), repr(raised.value)):
        assert all(form not in text for form in forms), text


async def test_a_description_naming_only_the_client_id_stays_in_the_receipt(
    console: OAuthConsole, replicas: Replicas
) -> None:
    async def refuse(request: Request) -> JSONResponse:
        description = f"client {CLIENT_ID} may not revoke tokens of another client"
        return JSONResponse({"error": "unauthorized_client", "error_description": description}, status_code=400)

    async with serve_asgi(Starlette(routes=[Route("/revoke", refuse, methods=["POST"])])) as server:
        await prepared(replicas.connector(console))
        result = await replicas.connector(console, revocation_url=f"{server.url}/revoke").revoke(ALICE, CTX)
    assert result.detail.startswith(
        f"the revocation endpoint answered HTTP 400 unauthorized_client: client {CLIENT_ID} may not revoke tokens"
    )
