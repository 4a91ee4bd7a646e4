"""A kept forward-auth answer is written from uvicorn's parser callback (gateway/forward_auth_protocol.py) with the
bytes the full path sends, and only when nothing else is in flight on the connection: the real gateway in this
process under uvicorn with the protocol `channelgate serve` runs, spoken to over a raw socket as nginx speaks."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import pytest
from redis.asyncio import Redis

from gateway.forward_auth import SECRET_HEADER
from tests.components.echo_gateway import (
    FORWARD_AUTH_STORES,
    Deployment,
    deployment,
    eventually,
    forward_auth_deployment,
)
from tests.components.oidc_provider import OidcProviderFactory

pytestmark = [pytest.mark.oidc, pytest.mark.timeout(90)]

SECRET = secrets.token_urlsafe(32)


@pytest.fixture(params=FORWARD_AUTH_STORES)
async def gateway(
    request: pytest.FixtureRequest, oidc_provider_factory: OidcProviderFactory
) -> AsyncIterator[Deployment]:
    async with forward_auth_deployment(request, oidc_provider_factory, SECRET) as deployed:
        yield deployed


#: A response: its status line, its headers (names lower-cased, in order), its body.
Answer = tuple[bytes, list[tuple[bytes, bytes]], bytes]


class Connection:
    """One keep-alive connection to the gateway, as nginx's upstream keepalive holds it."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    def send(self, *requests: bytes) -> None:
        self.writer.write(b"".join(requests))

    async def answer(self) -> Answer:
        head = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), 10)
        status, *lines = head[:-4].split(b"\r\n")
        headers = [(name.lower(), value) for name, _, value in (line.partition(b": ") for line in lines)]
        length = int(dict(headers).get(b"content-length", b"0"))
        return status, headers, await self.reader.readexactly(length)


@pytest.fixture
async def connect(gateway: Deployment) -> AsyncIterator[Callable[[], Awaitable[Connection]]]:
    """New connections to the gateway, all closed at the end."""
    opened: list[Connection] = []

    async def connection() -> Connection:
        opened.append(await _open(gateway))
        return opened[-1]

    yield connection
    for each in opened:
        each.writer.close()
        with contextlib.suppress(ConnectionError):
            await each.writer.wait_closed()


Connect = Callable[[], Awaitable[Connection]]
#: The gateway's forward-auth section, with this module's secret.
FORWARD_AUTH_TOML = f'[forward_auth]\nenabled = true\nsecret = "{SECRET}"\n'


async def _open(gateway: Deployment) -> Connection:
    host, _, port = gateway.url.removeprefix("http://").partition(":")
    return Connection(*await asyncio.open_connection(host, int(port)))


def _question(
    cookie: str, uri: str = "/chat/echo", *, version: bytes = b"1.1", extra: bytes = b"", body: bytes = b""
) -> bytes:
    return (
        b"GET /.channelgate/auth HTTP/" + version + b"\r\nHost: gateway\r\nX-Original-Method: GET\r\n"
        b"X-Original-URI: " + uri.encode() + b"\r\n" + SECRET_HEADER.encode() + b": " + SECRET.encode() + b"\r\n"
        b"Cookie: " + cookie.encode() + b"\r\n" + extra + b"\r\n" + body
    )


async def _cookie(gateway: Deployment, user: str) -> str:
    client = await gateway.login(user)
    name = gateway.services.cookies.session_name
    return f"{name}={client.cookies[name]}"


async def _asked_once(gateway: Deployment, connect: Connect) -> tuple[str, Connection, Answer]:
    """alice's cookie, and a connection on which her question was asked once: answered by the full path, which
    keeps the answer."""
    cookie = await _cookie(gateway, "alice")
    connection = await connect()
    connection.send(_question(cookie))
    return cookie, connection, await connection.answer()


def _counts(gateway: Deployment) -> tuple[int, int]:
    """Kept answers given, and of those the ones the protocol wrote without the ASGI application: from the parser
    callback when the session is held in process, after reading it from Redis otherwise."""
    memo = gateway.services.forward_auth_memo
    return memo.hits, memo.immediate_hits + memo.awaited_hits


async def test_a_kept_answer_is_written_from_the_parser_with_the_full_paths_bytes(
    gateway: Deployment, connect: Connect
) -> None:
    cookie, connection, full = await _asked_once(gateway, connect)
    assert full[0] == b"HTTP/1.1 200 OK" and _counts(gateway) == (0, 0)
    connection.send(_question(cookie))
    immediate = await connection.answer()
    assert _counts(gateway) == (1, 1)
    # Byte for byte the full path's answer, header order included, but for the date and the assertion's own time.
    own = {b"date", b"x-channelgate-assertion"}
    assert immediate[0] == full[0] and immediate[2] == full[2] == b""
    assert [h for h in immediate[1] if h[0] not in own] == [h for h in full[1] if h[0] not in own]
    assert [n for n, _ in immediate[1]] == [n for n, _ in full[1]]
    assertion = dict(immediate[1])[b"x-channelgate-assertion"].decode()
    claims = await gateway.verify_assertion(assertion, "chat")
    assert claims["preferred_username"] == "alice"
    await gateway.services.audit.flush()
    records = [r for r in await gateway.services.access_log.tail(10) if r.kind == "request"][-2:]
    assert [(r.agent_name, r.status, r.detail) for r in records] == [("alice", 200, {"via": "forward-auth"})] * 2


async def test_a_question_with_a_body_over_http_1_0_by_another_method_or_closing_takes_the_full_path(
    gateway: Deployment, connect: Connect
) -> None:
    cookie, connection, first = await _asked_once(gateway, connect)
    assert first[0] == b"HTTP/1.1 200 OK"
    # A body (nginx's sample sends none) is read by uvicorn; the connection goes on from where it left off.
    connection.send(_question(cookie, extra=b"Content-Length: 4\r\n", body=b"abcd"))
    assert (await connection.answer())[0] == b"HTTP/1.1 200 OK" and _counts(gateway) == (1, 0)
    connection.send(_question(cookie))
    assert (await connection.answer())[0] == b"HTTP/1.1 200 OK" and _counts(gateway) == (2, 1)
    connection.send(_question(cookie).replace(b"GET ", b"TRACE ", 1))  # not a method the gateway answers
    assert (await connection.answer())[0] == b"HTTP/1.1 405 Method Not Allowed" and _counts(gateway) == (2, 1)
    connection.send(_question(cookie, version=b"1.0"))
    assert (await connection.answer())[0] == b"HTTP/1.1 200 OK" and _counts(gateway) == (3, 1)
    closing = await connect()
    closing.send(_question(cookie, extra=b"Connection: close\r\n"))
    status, headers, _ = await closing.answer()
    assert status == b"HTTP/1.1 200 OK" and (b"connection", b"close") in headers and _counts(gateway) == (4, 1)
    assert await asyncio.wait_for(closing.reader.read(), 10) == b""  # closed after its answer, as uvicorn does


async def test_pipelined_questions_are_answered_in_their_order(gateway: Deployment, connect: Connect) -> None:
    """The second question is refused by the full path (a task): the third, which has a kept answer, waits for it
    and is answered by the full path too, after it."""
    cookie, connection, _ = await _asked_once(gateway, connect)
    connection.send(_question(cookie), _question(cookie, "/nowhere/"), _question(cookie))
    answers = [await connection.answer() for _ in range(3)]
    assert [a[0] for a in answers] == [b"HTTP/1.1 200 OK", b"HTTP/1.1 403 Forbidden", b"HTTP/1.1 200 OK"]
    assert _counts(gateway) == (2, 1)


async def test_a_revoked_session_is_refused_on_the_next_question_on_the_same_connection(
    gateway: Deployment, connect: Connect
) -> None:
    cookie = await _cookie(gateway, "bob")
    connection = await connect()
    for _ in range(2):
        connection.send(_question(cookie))
        assert (await connection.answer())[0] == b"HTTP/1.1 200 OK"
    assert _counts(gateway) == (1, 1)
    agent = await gateway.services.agents.find_by_user_name("bob")
    assert agent is not None
    await gateway.services.sessions.revoke_agent(agent.id)
    # The full path answers in the protocol's stead, then the question queued behind it on the connection.
    connection.send(_question(cookie), _question(await _cookie(gateway, "alice")))
    status, _, _ = await connection.answer()
    assert status == b"HTTP/1.1 401 Unauthorized" and _counts(gateway) == (1, 1)
    assert (await connection.answer())[0] == b"HTTP/1.1 200 OK"


async def test_a_slow_request_behind_an_answered_one_in_the_same_read_is_not_cut_by_the_keep_alive_timer(
    oidc_provider_factory: OidcProviderFactory,
) -> None:
    """The answer written from the parser restarts uvicorn's keep-alive timer (5 s) while the same read holds the
    next request; the console behind it takes 7 s (the route's timeout, then 504): the connection must stay."""
    async with deployment(
        oidc_provider_factory,
        route_timeout_seconds=7,
        extra_toml=FORWARD_AUTH_TOML,
    ) as gateway:
        cookie, connection, _ = await _asked_once(gateway, lambda: _open(gateway))
        try:
            slow = b"GET /chat/hang HTTP/1.1\r\nHost: gateway\r\nCookie: " + cookie.encode() + b"\r\n\r\n"
            connection.send(_question(cookie), slow)
            assert (await connection.answer())[0] == b"HTTP/1.1 200 OK" and _counts(gateway) == (1, 1)
            status, _, _ = await connection.answer()
            assert status == b"HTTP/1.1 504 Gateway Timeout"
        finally:
            connection.writer.close()
            with contextlib.suppress(ConnectionError):
                await connection.writer.wait_closed()


async def _now(value: bool) -> bool:
    return value


def _reading() -> asyncio.Task[Any] | None:
    """The task of a kept answer waiting for its session's read (``ForwardAuthProtocol._answer_later``)."""
    names = {getattr(t.get_coro(), "__qualname__", ""): t for t in asyncio.all_tasks()}
    return names.get("ForwardAuthProtocol._answer_later")


async def _reading_now() -> asyncio.Task[Any] | None:
    return _reading()


def _redis_only(
    oidc_provider_factory: OidcProviderFactory, redis_url: str, *, socket_timeout_seconds: float = 1.0
) -> AbstractAsyncContextManager[Deployment]:
    """Sessions in Redis alone: every kept answer waits for its session's read, failed after
    ``socket_timeout_seconds``."""
    redis = f"[sessions.redis]\nsocket_timeout_seconds = {socket_timeout_seconds}\n"
    return deployment(oidc_provider_factory, redis_url=redis_url, extra_toml=FORWARD_AUTH_TOML + redis)


@pytest.fixture
async def redis_gateway(oidc_provider_factory: OidcProviderFactory, redis_url: str) -> AsyncIterator[Deployment]:
    async with _redis_only(oidc_provider_factory, redis_url) as deployed:
        yield deployed


#: For the tests that hold a session's read with a Redis pause and act meanwhile: a read that times out takes
#: the full path instead, so the pause (and with it the time to act) must end well before the timeout does, even
#: when the other test worker keeps this process's event loop waiting.
PATIENT_SECONDS = 10.0


@pytest.fixture
async def patient_redis_gateway(
    oidc_provider_factory: OidcProviderFactory, redis_url: str
) -> AsyncIterator[Deployment]:
    async with _redis_only(oidc_provider_factory, redis_url, socket_timeout_seconds=PATIENT_SECONDS) as deployed:
        yield deployed


@contextlib.asynccontextmanager
async def _pauser(redis_url: str) -> AsyncIterator[Redis]:
    """A client to pause Redis with (CLIENT PAUSE ... ALL); whatever pause is left is lifted at the end."""
    client = Redis.from_url(redis_url)
    try:
        yield client
    finally:
        await client.client_unpause()
        await client.aclose()


@contextlib.asynccontextmanager
async def _redis_paused(redis_url: str, milliseconds: int) -> AsyncIterator[None]:
    """Redis holds every client's commands for ``milliseconds``, from inside the block."""
    async with _pauser(redis_url) as client:
        await client.client_pause(milliseconds, all=True)
        yield


@pytest.mark.redis
async def test_a_client_that_leaves_while_its_session_is_read_is_written_nothing_and_others_go_on(
    patient_redis_gateway: Deployment, redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    gateway = patient_redis_gateway
    cookie, first, answer = await _asked_once(gateway, lambda: _open(gateway))
    assert answer[0] == b"HTTP/1.1 200 OK" and _counts(gateway) == (0, 0)
    memo = gateway.services.forward_auth_memo
    async with _redis_paused(redis_url, 3000):
        first.send(_question(cookie))
        await eventually(lambda: _now(_reading() is not None), timeout=2.5)  # its session's read held by Redis
        first.writer.close()
        await first.writer.wait_closed()
    # The pause lifted: the read completes.
    await eventually(lambda: _now(memo.awaited_hits == 1))  # decided and recorded, as the full path does, not written
    second = await _open(gateway)
    try:
        second.send(_question(cookie))
        assert (await second.answer())[0] == b"HTTP/1.1 200 OK" and _counts(gateway) == (2, 2)
    finally:
        second.writer.close()
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


@pytest.mark.redis
async def test_a_session_read_that_times_out_is_refused_by_the_full_path_with_503_and_no_error_logged(
    redis_gateway: Deployment, redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The kept answer's read fails after `socket_timeout_seconds` (1 s): the full path decides, and fails closed
    with its own page and record, not uvicorn's 500 for an exception out of the application."""
    gateway = redis_gateway
    cookie, connection, answer = await _asked_once(gateway, lambda: _open(gateway))
    try:
        assert answer[0] == b"HTTP/1.1 200 OK"
        async with _redis_paused(redis_url, 3000):
            connection.send(_question(cookie))
            status, _, _ = await connection.answer()
        assert status == b"HTTP/1.1 503 Service Unavailable"
        assert gateway.services.forward_auth_memo.hits == 0
        connection.send(_question(cookie))  # Redis is back: allowed again, on the same connection
        assert (await connection.answer())[0] == b"HTTP/1.1 200 OK"
    finally:
        connection.writer.close()
    await gateway.services.audit.flush()
    records = [r for r in await gateway.services.access_log.tail(10) if r.kind == "request"]
    assert [r.status for r in records][-3:] == [200, 503, 200]
    assert [(r.name, r.getMessage()) for r in caplog.records if r.levelno >= logging.WARNING] == []


@pytest.mark.redis
async def test_a_question_waiting_for_its_session_when_the_server_stops_is_answered_then_its_connection_closed(
    oidc_provider_factory: OidcProviderFactory, redis_url: str
) -> None:
    """uvicorn's graceful shutdown lets a request in flight finish with ``connection: close``; so must an answer
    written by the protocol after the session's read."""
    async with _pauser(redis_url) as pauser:
        async with _redis_only(oidc_provider_factory, redis_url, socket_timeout_seconds=PATIENT_SECONDS) as gateway:
            cookie, connection, first = await _asked_once(gateway, lambda: _open(gateway))
            assert first[0] == b"HTTP/1.1 200 OK"
            await pauser.client_pause(1500, all=True)  # runs out by itself, while the server stops
            connection.send(_question(cookie))
            await eventually(_reading_now, timeout=1.2)  # its session's read held by Redis
            answer = asyncio.create_task(connection.answer())
            memo = gateway.services.forward_auth_memo
        status, headers, _ = await answer
        assert status == b"HTTP/1.1 200 OK" and (b"connection", b"close") in headers
        assert memo.awaited_hits == 1
        assert await asyncio.wait_for(connection.reader.read(), 10) == b""
        connection.writer.close()


@pytest.mark.redis
async def test_a_question_cancelled_while_its_session_is_read_gets_uvicorns_500_and_its_connection_closed(
    patient_redis_gateway: Deployment, redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """uvicorn cancels the requests' tasks when its graceful shutdown times out; its own request task then answers
    500 and closes the connection (run_asgi), and so must the protocol's."""
    gateway = patient_redis_gateway
    cookie, connection, answer = await _asked_once(gateway, lambda: _open(gateway))
    try:
        assert answer[0] == b"HTTP/1.1 200 OK"
        async with _redis_paused(redis_url, 3000):
            connection.send(_question(cookie))
            (await eventually(_reading_now, timeout=2.5)).cancel()
            status, headers, body = await connection.answer()
        assert (status, body) == (b"HTTP/1.1 500 Internal Server Error", b"Internal Server Error")
        assert (b"connection", b"close") in headers
        assert await asyncio.wait_for(connection.reader.read(), 10) == b""
    finally:
        connection.writer.close()
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == [
        "forward-auth: the answer after the session's read was not written"
    ]
