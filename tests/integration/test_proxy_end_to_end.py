"""The proxy over HTTP against real servers: a uvicorn upstream and a small gateway app built from gateway.proxy
(tests/components/proxy_stack.py); its WebSockets are in test_proxy_websockets.py."""

from __future__ import annotations

import asyncio
import hashlib
import json
import socket
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from tests.components.proxy_stack import CREDENTIAL, Stack, StackFactory

MB = 1024 * 1024


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=20) as client:
        yield client


def upstream_saw(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 200, response.text
    seen: dict[str, Any] = response.json()
    return seen


def header_values(seen: dict[str, Any], name: str) -> list[str]:
    return [v for k, v in seen["headers"] if k == name]


async def raw_request(base_url: str, target: str) -> tuple[int, bytes]:
    """Send a request line byte for byte (httpx would normalise the path first)."""
    host, port = base_url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(f"GET {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode("latin-1"))
    await writer.drain()
    data = await reader.read()
    writer.close()
    await writer.wait_closed()
    status_line, _, rest = data.partition(b"\r\n")
    return int(status_line.split()[1]), rest


# --- headers ------------------------------------------------------------------------------------------------

SPOOFED = [
    "X-Forwarded-For",
    "x_forwarded_for",
    "X-FORWARDED-HOST",
    "X-Forwarded-Proto",
    "Forwarded",
    "X-Real-IP",
    "True-Client-IP",
    "X-Auth-Request-Email",
    "X_Auth_Request_User",
    "X_Channelgate_User",
    "X-Channelgate-Assertion",
    "Remote-User",
    "X-Remote-User",
    "X-User",
    "X-Email",
    "X-Groups",
    "X-Original-URL",
    "X-Rewrite-URL",
    "Keep-Alive",
    "Proxy-Connection",
    "TE",
    "Trailer",
    "Upgrade",
    "Proxy-Authorization",
]


@pytest.mark.parametrize("name", SPOOFED)
async def test_spoofed_identity_and_hop_by_hop_headers_never_reach_the_upstream(
    stack: Stack, http: httpx.AsyncClient, name: str
) -> None:
    response = await http.get(f"{stack.url}/chat/echo", headers={name: "spoofed-admin"})
    seen = upstream_saw(response)
    assert all("spoofed-admin" not in v for _, v in seen["headers"]), seen["headers"]
    assert header_values(seen, "x-forwarded-for") == ["127.0.0.1"]
    assert header_values(seen, "x-forwarded-proto") == ["http"]


async def test_headers_named_in_connection_never_reach_the_upstream(stack: Stack, http: httpx.AsyncClient) -> None:
    response = await http.get(
        f"{stack.url}/chat/echo", headers={"Connection": "keep-alive, X-Hop", "X-Hop": "secret", "X-End": "kept"}
    )
    seen = upstream_saw(response)
    assert header_values(seen, "x-hop") == []
    assert header_values(seen, "x-end") == ["kept"]


async def test_client_authorization_is_replaced_by_the_channel_credential(
    stack: Stack, http: httpx.AsyncClient
) -> None:
    seen = upstream_saw(await http.get(f"{stack.url}/chat/echo", headers={"Authorization": "Bearer from-client"}))
    assert header_values(seen, "authorization") == [CREDENTIAL]
    assert header_values(seen, "host") == [stack.upstream_url.removeprefix("http://")]


async def test_gateway_cookie_is_removed_and_other_cookies_are_kept(stack: Stack, http: httpx.AsyncClient) -> None:
    seen = upstream_saw(
        await http.get(f"{stack.url}/chat/echo", headers={"Cookie": "__Host-channelgate=session; lang=ko; a=b"})
    )
    assert header_values(seen, "cookie") == ["lang=ko; a=b"]


async def test_upstream_cannot_overwrite_the_gateway_session_cookie(stack: Stack, http: httpx.AsyncClient) -> None:
    response = await http.get(f"{stack.url}/chat/cookies")
    assert response.headers.get_list("set-cookie") == ["console=1; Path=/"]


async def test_forwarded_for_from_an_untrusted_peer_is_ignored(stack: Stack, http: httpx.AsyncClient) -> None:
    seen = upstream_saw(await http.get(f"{stack.url}/chat/echo", headers={"X-Forwarded-For": "203.0.113.9"}))
    assert header_values(seen, "x-forwarded-for") == ["127.0.0.1"]


async def test_forwarded_for_from_a_trusted_proxy_is_honoured(
    stack_factory: StackFactory, http: httpx.AsyncClient
) -> None:
    stack = await stack_factory(trusted=["127.0.0.0/8"])
    seen = upstream_saw(
        await http.get(f"{stack.url}/chat/echo", headers={"X-Forwarded-For": "6.6.6.6, 203.0.113.9, 127.0.0.2"})
    )
    assert header_values(seen, "x-forwarded-for") == ["203.0.113.9"]


async def test_oversized_request_headers_are_answered_with_431(stack: Stack, http: httpx.AsyncClient) -> None:
    response = await http.get(f"{stack.url}/chat/echo", headers={f"X-Pad-{i}": "p" * 1000 for i in range(20)})
    assert response.status_code == 431


# --- paths --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "target", ["/chat/..;/admin", "/chat/%2e%2e/admin", "/chat/.%2E/admin", "/chat%2fadmin", "/chat/a%5c..%5cb"]
)
async def test_ambiguous_paths_are_refused_before_routing(stack: Stack, target: str) -> None:
    status, _ = await raw_request(stack.url, target)
    assert status == 400


async def test_the_upstream_sees_the_canonical_path_and_the_raw_query(stack: Stack) -> None:
    status, body = await raw_request(stack.url, "/chat//inbox/%7Eme/%41?q=a%20b&x")
    assert status == 200
    seen = json.loads(body.partition(b"\r\n\r\n")[2])
    assert seen["path"] == "/inbox/~me/A"
    assert seen["query"] == "q=a%20b&x"


async def test_a_prefix_without_its_trailing_slash_redirects(stack: Stack, http: httpx.AsyncClient) -> None:
    response = await http.get(f"{stack.url}/chat")
    assert response.status_code == 308
    assert response.headers["location"] == "/chat/"


# --- bodies -------------------------------------------------------------------------------------------------


async def test_a_request_without_a_body_is_sent_without_one(stack: Stack, http: httpx.AsyncClient) -> None:
    for method in ("GET", "HEAD", "DELETE"):
        response = await http.request(method, f"{stack.url}/chat/echo")
        assert response.status_code == 200
        if method != "HEAD":
            seen = response.json()
            assert header_values(seen, "transfer-encoding") == []
            assert header_values(seen, "content-length") in ([], ["0"])
            assert seen["length"] == 0


async def test_a_ten_megabyte_chunked_upload_streams_to_the_upstream(stack: Stack, http: httpx.AsyncClient) -> None:
    block = bytes(range(256)) * 256
    expected = hashlib.sha256(block * 160).hexdigest()

    async def body() -> AsyncIterator[bytes]:
        for _ in range(160):
            yield block

    seen = upstream_saw(await http.post(f"{stack.url}/chat/upload", content=body()))
    assert (seen["length"], seen["sha256"]) == (10 * MB, expected)
    assert seen["chunks"] > 1
    await asyncio.wait_for(stack.gateway.stats_done.wait(), 5)
    assert stack.gateway.stats[-1].bytes_in == 10 * MB


async def test_a_ten_megabyte_upload_with_content_length_keeps_its_length(
    stack: Stack, http: httpx.AsyncClient
) -> None:
    payload = b"z" * (10 * MB)
    seen = upstream_saw(await http.put(f"{stack.url}/chat/upload", content=payload))
    assert seen["length"] == 10 * MB
    assert header_values(seen, "content-length") == [str(10 * MB)]
    assert header_values(seen, "transfer-encoding") == []


async def test_a_ten_megabyte_download_streams_in_many_chunks(stack: Stack, http: httpx.AsyncClient) -> None:
    received = chunks = 0
    async with http.stream("GET", f"{stack.url}/chat/big?size={10 * MB}") as response:
        assert response.status_code == 200
        async for chunk in response.aiter_raw():
            received += len(chunk)
            chunks += 1
    assert received == 10 * MB
    assert chunks > 10
    await asyncio.wait_for(stack.gateway.stats_done.wait(), 5)
    stats = stack.gateway.stats[-1]
    assert (stats.bytes_out, stats.completed, stats.status) == (10 * MB, True, 200)
    assert 0 < stats.upstream_latency <= stats.duration


async def test_server_sent_events_arrive_as_they_are_sent(stack: Stack, http: httpx.AsyncClient) -> None:
    arrivals: list[float] = []
    started = time.monotonic()
    async with http.stream("GET", f"{stack.url}/chat/sse") as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        async for line in response.aiter_lines():
            if line.startswith("data:"):
                arrivals.append(time.monotonic() - started)
    assert len(arrivals) == 3
    assert arrivals[0] < 0.3, arrivals
    assert arrivals[2] - arrivals[0] > 0.6, arrivals


async def test_a_client_leaving_mid_download_releases_the_upstream_connection(
    stack: Stack, http: httpx.AsyncClient
) -> None:
    async with http.stream("GET", f"{stack.url}/chat/endless") as response:
        async for _ in response.aiter_raw():
            break
    await asyncio.wait_for(stack.log.stream_closed.wait(), 5)
    await asyncio.wait_for(stack.gateway.stats_done.wait(), 5)
    stats = stack.gateway.stats[-1]
    assert (stats.completed, stats.error) == (False, "client_disconnected")
    connector = stack.gateway.client.session.connector
    assert connector is not None
    for _ in range(100):
        if not connector._acquired:  # the pool has no connection checked out
            break
        await asyncio.sleep(0.02)
    assert not connector._acquired


# --- failures -----------------------------------------------------------------------------------------------


async def test_an_upstream_that_is_down_answers_502_without_secrets(
    stack_factory: StackFactory, http: httpx.AsyncClient
) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed_port = sock.getsockname()[1]
    stack = await stack_factory(upstream=f"http://127.0.0.1:{closed_port}")
    response = await http.get(f"{stack.url}/chat/echo?token=abc")
    assert response.status_code == 502
    assert "channel-credential" not in response.text
    assert "token" not in response.text


async def test_a_hanging_upstream_answers_504_within_the_route_timeout(
    stack_factory: StackFactory, http: httpx.AsyncClient
) -> None:
    stack = await stack_factory(timeout=0.5)
    started = time.monotonic()
    response = await http.get(f"{stack.url}/chat/hang")
    elapsed = time.monotonic() - started
    assert response.status_code == 504
    assert 0.4 < elapsed < 3
