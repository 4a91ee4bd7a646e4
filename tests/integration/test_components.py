"""The real-component harness itself: each server starts, answers, stops, and the provider is strict."""

from __future__ import annotations

import base64
import gc
import hashlib
import json
import secrets
import socket
import threading
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
import pytest
import redis.asyncio
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from tests.components.browserless_login import LoginRejected, login, login_steps, provider_login, provider_logout
from tests.components.echo_gateway import deployment
from tests.components.oidc_provider import (
    DEMO_PASSWORD,
    TEST_CLIENT_ID,
    TEST_CLIENT_SECRET,
    OidcProvider,
    OidcProviderFactory,
    new_key_set,
    public_jwks,
)
from tests.components.ports import LOOPBACK, free_port, port_is_open
from tests.components.postgres_server import PostgresServer
from tests.components.redis_server import RedisServer, ping

CLIENT_ID = TEST_CLIENT_ID
CLIENT_SECRET = TEST_CLIENT_SECRET


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64url_decode(value: str) -> bytes:
    return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))


def _pkce() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    return verifier, _b64url(hashlib.sha256(verifier.encode("ascii")).digest())


def _authorize_url(provider: OidcProvider, redirect_uri: str, **extra: str) -> str:
    params = {
        "client_id": CLIENT_ID,
        "response_type": "code",
        "redirect_uri": redirect_uri,
        "scope": "openid profile email groups",
        "state": secrets.token_urlsafe(16),
        "nonce": secrets.token_urlsafe(16),
        **extra,
    }
    return f"{provider.metadata()['authorization_endpoint']}?{urlencode(params)}"


def _verified_claims(provider: OidcProvider, id_token: str) -> dict[str, Any]:
    """Check the RS256 signature against the provider's own public keys, then return the payload."""
    header_b64, payload_b64, signature_b64 = id_token.split(".")
    header = json.loads(_b64url_decode(header_b64))
    jwk = next(key for key in public_jwks(provider.jwks)["keys"] if key["kid"] == header["kid"])
    public_key = rsa.RSAPublicNumbers(
        int.from_bytes(_b64url_decode(jwk["e"])), int.from_bytes(_b64url_decode(jwk["n"]))
    ).public_key()
    public_key.verify(
        _b64url_decode(signature_b64),
        f"{header_b64}.{payload_b64}".encode("ascii"),
        padding.PKCS1v15(),
        hashes.SHA256(),
    )
    claims: dict[str, Any] = json.loads(_b64url_decode(payload_b64))
    return claims


@dataclass
class _Recorder:
    """A loopback relying party: records back-channel logout POSTs; optionally a tiny login/callback RP."""

    port: int
    provider: OidcProvider | None = None
    logout_tokens: list[str] = field(default_factory=list)
    pending: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"


@contextmanager
def _relying_party(port: int, provider: OidcProvider | None = None) -> Iterator[_Recorder]:
    """Serve ``/.channelgate/login``, ``/.channelgate/callback`` and ``/backchannel-logout`` on ``port``.

    A stand-in for the gateway, just enough to drive ``login()``: PKCE + state, code exchange, a cookie.
    """
    recorder = _Recorder(port=port, provider=provider)

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            return

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["content-length"])).decode()
            recorder.logout_tokens.extend(parse_qs(body).get("logout_token", []))
            self.send_response(200)
            self.end_headers()

        def do_GET(self) -> None:
            assert recorder.provider is not None
            url = urlsplit(self.path)
            query = {key: values[0] for key, values in parse_qs(url.query).items()}
            redirect_uri = f"{recorder.url}/.channelgate/callback"
            if url.path == "/.channelgate/login":
                verifier, challenge = _pkce()
                state = secrets.token_urlsafe(16)
                recorder.pending[state] = verifier
                location = _authorize_url(
                    recorder.provider,
                    redirect_uri,
                    state=f"{state}.{query['rd']}",
                    code_challenge=challenge,
                    code_challenge_method="S256",
                )
                self._redirect(location)
            elif url.path == "/.channelgate/callback":
                state, return_to = query["state"].split(".", 1)
                verifier = recorder.pending.pop(state)
                assert query["iss"] == recorder.provider.issuer
                tokens = httpx.post(
                    recorder.provider.metadata()["token_endpoint"],
                    auth=(CLIENT_ID, CLIENT_SECRET),
                    data={
                        "grant_type": "authorization_code",
                        "code": query["code"],
                        "redirect_uri": redirect_uri,
                        "code_verifier": verifier,
                    },
                ).json()
                claims = _verified_claims(recorder.provider, tokens["id_token"])
                self._redirect(return_to, cookie=f"channelgate={claims['preferred_username']}; Path=/; HttpOnly")
            else:
                self.send_response(404)
                self.end_headers()

        def _redirect(self, location: str, cookie: str | None = None) -> None:
            self.send_response(302)
            self.send_header("location", location)
            if cookie is not None:
                self.send_header("set-cookie", cookie)
            self.end_headers()

    server = ThreadingHTTPServer((LOOPBACK, port), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield recorder
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_free_ports_are_outside_the_kernels_own_choices_and_not_handed_out_twice() -> None:
    """The kernel picks ports for connect() and bind(0) from the ephemeral range: a port below it cannot be taken
    between free_port() and the server's bind by anything the suite does not start itself."""
    first_ephemeral = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    ports = [free_port() for _ in range(200)]
    assert len(set(ports)) == len(ports)
    assert all(1024 < port < first_ephemeral for port in ports), ports
    with socket.socket() as held:  # what the kernel hands a server binding port 0 never collides with them
        held.bind((LOOPBACK, 0))
        assert held.getsockname()[1] >= first_ephemeral
    held_port = free_port()
    with socket.socket() as listener:
        listener.bind((LOOPBACK, held_port))
        listener.listen()
        assert held_port not in {free_port() for _ in range(200)}


async def test_a_deployment_whose_provider_does_not_start_lets_go_of_every_socket_it_held() -> None:
    def provider_that_fails(*args: object, **kwargs: object) -> OidcProvider:
        raise RuntimeError("oidc-provider exited: EADDRINUSE")

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        with pytest.raises(RuntimeError, match="EADDRINUSE"):
            async with deployment(provider_that_fails):
                pass
        gc.collect()
    assert not [w for w in caught if issubclass(w.category, ResourceWarning)], [str(w.message) for w in caught]


async def test_redis_answers_ping_and_restarts_on_the_same_port() -> None:
    with RedisServer() as server:
        port = server.port
        client = redis.asyncio.from_url(server.url)
        try:
            assert await client.ping()
            await client.set("key", "value")
        finally:
            await client.aclose()
        server.kill()
        assert not ping(LOOPBACK, port)
        server.restart()
        assert (server.port, server.url) == (port, f"redis://{LOOPBACK}:{port}/0")
        client = redis.asyncio.from_url(server.url)
        try:
            assert await client.get("key") is None, "a restart starts empty: nothing is persisted"
        finally:
            await client.aclose()
    assert not port_is_open(LOOPBACK, port)


async def test_redis_url_fixture_gives_each_test_an_empty_server(redis_url: str) -> None:
    client = redis.asyncio.from_url(redis_url)
    try:
        assert await client.dbsize() == 0
        await client.set("left-behind", "1")
    finally:
        await client.aclose()


async def test_postgres_url_is_a_fresh_database_sqlalchemy_can_use(postgres_url: str) -> None:
    assert postgres_url.startswith(f"postgresql+asyncpg://postgres@{LOOPBACK}:")
    engine = create_async_engine(postgres_url)
    try:
        async with engine.begin() as connection:
            await connection.execute(text("CREATE TABLE t (id int)"))
            await connection.execute(text("INSERT INTO t VALUES (1), (2)"))
            assert (await connection.execute(text("SELECT sum(id) FROM t"))).scalar_one() == 3
            tables = await connection.execute(text("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'"))
            assert tables.scalar_one() == 1, "the database starts empty"
    finally:
        await engine.dispose()


def test_postgres_restart_keeps_port_and_databases(postgres_server: PostgresServer) -> None:
    postgres_server.create_database("survives_restart")
    try:
        postgres_server.execute("CREATE TABLE kept (v text); INSERT INTO kept VALUES ('yes')", "survives_restart")
        port = postgres_server.port
        postgres_server.restart()
        assert postgres_server.port == port
        assert postgres_server.execute("SELECT v FROM kept", "survives_restart") == "yes"
    finally:
        postgres_server.drop_database("survives_restart")


def test_provider_discovery_names_itself_and_supports_rfc9207_iss(
    oidc_provider_factory: OidcProviderFactory,
) -> None:
    provider = oidc_provider_factory([f"http://{LOOPBACK}:1/.channelgate/callback"])
    metadata = provider.metadata()
    assert metadata["issuer"] == provider.url == provider.issuer
    assert metadata["authorization_response_iss_parameter_supported"] is True
    assert metadata["code_challenge_methods_supported"] == ["S256"]
    assert metadata["backchannel_logout_supported"] is True
    assert {"groups", "preferred_username", "email", "name"} <= set(metadata["claims_supported"])


async def test_provider_refuses_an_authorization_request_without_pkce(
    oidc_provider_factory: OidcProviderFactory,
) -> None:
    redirect_uri = f"http://{LOOPBACK}:{free_port()}/.channelgate/callback"
    provider = oidc_provider_factory([redirect_uri])
    async with httpx.AsyncClient() as client:
        response = await client.get(_authorize_url(provider, redirect_uri))
    assert response.is_redirect
    error = parse_qs(urlsplit(response.headers["location"]).query)
    assert error["error"] == ["invalid_request"]
    assert "PKCE" in error["error_description"][0]


@pytest.mark.parametrize(("username", "password"), [("alice", "wrong-password"), ("mallory", DEMO_PASSWORD)])
async def test_provider_login_form_refuses_bad_credentials(
    oidc_provider_factory: OidcProviderFactory, username: str, password: str
) -> None:
    redirect_uri = f"http://{LOOPBACK}:{free_port()}/.channelgate/callback"
    provider = oidc_provider_factory([redirect_uri])
    _, challenge = _pkce()
    url = _authorize_url(provider, redirect_uri, code_challenge=challenge, code_challenge_method="S256")
    async with httpx.AsyncClient() as client:
        with pytest.raises(LoginRejected):
            await provider_login(client, url, username, password, stop_at=redirect_uri)


async def test_provider_id_token_carries_groups_and_profile_claims_and_rotates_keys(
    oidc_provider_factory: OidcProviderFactory,
) -> None:
    redirect_uri = f"http://{LOOPBACK}:{free_port()}/.channelgate/callback"
    provider = oidc_provider_factory([redirect_uri], jwks=new_key_set("first"))
    for kid in ("first", "second"):
        verifier, challenge = _pkce()
        url = _authorize_url(provider, redirect_uri, code_challenge=challenge, code_challenge_method="S256")
        async with httpx.AsyncClient() as client:
            callback = await provider_login(client, url, "carol", DEMO_PASSWORD, stop_at=redirect_uri)
            assert callback.params["iss"] == provider.issuer
            tokens = await client.post(
                provider.metadata()["token_endpoint"],
                auth=(CLIENT_ID, CLIENT_SECRET),
                data={
                    "grant_type": "authorization_code",
                    "code": callback.params["code"],
                    "redirect_uri": redirect_uri,
                    "code_verifier": verifier,
                },
            )
        id_token = tokens.json()["id_token"]
        assert json.loads(_b64url_decode(id_token.split(".")[0]))["kid"] == kid
        claims = _verified_claims(provider, id_token)
        assert claims["iss"] == provider.issuer
        assert claims["preferred_username"] == "carol"
        assert claims["email"] == "carol@example.com"
        assert claims["name"] == "Carol Example"
        assert claims["groups"] == ["phone-agents", "mail-agents"]
        port = provider.port
        provider.restart(jwks=new_key_set("second"))
        assert provider.port == port


async def test_login_helper_drives_the_code_flow_through_a_relying_party(
    oidc_provider_factory: OidcProviderFactory,
) -> None:
    port = free_port()
    provider = oidc_provider_factory([f"http://{LOOPBACK}:{port}/.channelgate/callback"])
    with _relying_party(port, provider) as rp:
        client = await login(rp.url, "alice", DEMO_PASSWORD, return_to="/inbox")
        try:
            assert client.cookies["channelgate"] == "alice"
        finally:
            await client.aclose()
        steps = await login_steps(rp.url, "bob", DEMO_PASSWORD)
        try:
            assert steps.callback_url.path == "/.channelgate/callback"
            assert {"code", "state", "iss"} <= set(steps.callback_url.params)
            assert "channelgate" not in steps.client.cookies
        finally:
            await steps.client.aclose()


async def test_back_channel_logout_reaches_a_loopback_client(oidc_provider_factory: OidcProviderFactory) -> None:
    port = free_port()
    redirect_uri = f"http://{LOOPBACK}:{port}/.channelgate/callback"
    signed_out = f"http://{LOOPBACK}:{port}/signed-out"
    provider = oidc_provider_factory(
        [redirect_uri],
        post_logout_redirect_uris=[signed_out],
        backchannel_logout_uri=f"http://{LOOPBACK}:{port}/backchannel-logout",
    )
    with _relying_party(port) as rp:
        verifier, challenge = _pkce()
        url = _authorize_url(provider, redirect_uri, code_challenge=challenge, code_challenge_method="S256")
        async with httpx.AsyncClient() as client:
            callback = await provider_login(client, url, "bob", DEMO_PASSWORD, stop_at=redirect_uri)
            tokens = await client.post(
                provider.metadata()["token_endpoint"],
                auth=(CLIENT_ID, CLIENT_SECRET),
                data={
                    "grant_type": "authorization_code",
                    "code": callback.params["code"],
                    "redirect_uri": redirect_uri,
                    "code_verifier": verifier,
                },
            )
            id_token = tokens.json()["id_token"]
            end_session = httpx.URL(
                provider.metadata()["end_session_endpoint"],
                params={"id_token_hint": id_token, "post_logout_redirect_uri": signed_out, "state": "s1"},
            )
            response = await provider_logout(client, end_session)
        assert response.headers["location"] == f"{signed_out}?state=s1"
        deadline = time.monotonic() + 5
        while not rp.logout_tokens and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(rp.logout_tokens) == 1
        logout_claims = _verified_claims(provider, rp.logout_tokens[0])
        assert logout_claims["sub"] == _verified_claims(provider, id_token)["sub"] == "bob-0002"
        assert "http://schemas.openid.net/event/backchannel-logout" in logout_claims["events"]
