"""Research items 20 and 21 at discovery, where the login suites (one well-behaved provider) cannot reach.

The provider's metadata must name exactly the configured issuer (OIDC Discovery §4.3, ASVS 10.5.3, the
look-alike issuers of CVE-2024-53861) and offer PKCE with S256 (RFC 9700 §2.1.1); otherwise no login starts: the
login answers 503 and sends the browser nowhere. A provider that passes gets an authorization request with a fresh
state and nonce and an S256 code challenge. The provider here is a small loopback server whose document each test
writes.
"""

from __future__ import annotations

import base64
import contextlib
import shutil
import tempfile
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from gateway.oidc.discovery import ProviderUnavailable, discover
from gateway.settings import Settings
from tests.components.asgi_server import AsgiServer, bound_socket, serve_asgi
from tests.components.inprocess import running_gateway
from tests.components.ports import LOOPBACK

pytestmark = [pytest.mark.timeout(60)]


class Provider:
    """A discovery document and a JWKS on loopback; ``changes`` edits the document before it is served."""

    def __init__(self) -> None:
        self.changes: dict[str, Any] = {}
        self.server: AsgiServer | None = None
        self.app = Starlette(
            routes=[
                Route("/.well-known/openid-configuration", self._document),
                Route("/jwks", lambda _: JSONResponse({"keys": []})),
            ]
        )

    @property
    def issuer(self) -> str:
        assert self.server is not None
        return self.server.url

    async def _document(self, request: Request) -> JSONResponse:
        document = {
            "issuer": self.issuer,
            "authorization_endpoint": self.issuer + "/auth",
            "token_endpoint": self.issuer + "/token",
            "jwks_uri": self.issuer + "/jwks",
            "response_types_supported": ["code"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "code_challenge_methods_supported": ["S256"],
            "authorization_response_iss_parameter_supported": True,
        }
        document.update(self.changes)
        return JSONResponse({key: value for key, value in document.items() if value is not None})


@pytest.fixture
async def provider() -> AsyncIterator[Provider]:
    provider = Provider()
    async with serve_asgi(provider.app) as server:
        provider.server = server
        yield provider


#: How a discovery document's issuer may differ from the configured one → refused, each of them.
LOOK_ALIKES: dict[str, Callable[[str], object]] = {
    "trailing slash": lambda issuer: issuer + "/",
    "suffix": lambda issuer: issuer + ".evil.example",
    "path suffix": lambda issuer: issuer + "/evil",
    "prefix": lambda issuer: "https://evil.example/" + issuer,
    "truncated": lambda issuer: issuer[:-1],
    "upper case": lambda issuer: issuer.upper(),
    "another provider": lambda issuer: "https://evil.example",
    "a list": lambda issuer: [issuer],
    "missing": lambda issuer: None,
}


@pytest.mark.parametrize("name", list(LOOK_ALIKES))
async def test_a_discovery_document_naming_another_issuer_is_refused(provider: Provider, name: str) -> None:
    provider.changes["issuer"] = LOOK_ALIKES[name](provider.issuer)
    async with aiohttp.ClientSession() as http:
        with pytest.raises(ProviderUnavailable, match="must match exactly"):
            await discover(http, provider.issuer)


@pytest.mark.parametrize("methods", [["plain"], []], ids=["plain-only", "none"])
async def test_a_provider_without_s256_pkce_is_refused(provider: Provider, methods: list[str]) -> None:
    provider.changes["code_challenge_methods_supported"] = methods
    async with aiohttp.ClientSession() as http:
        with pytest.raises(ProviderUnavailable, match="S256"):
            await discover(http, provider.issuer)


@contextlib.asynccontextmanager
async def _gateway(issuer: str) -> AsyncIterator[str]:
    base_dir = Path(tempfile.mkdtemp(prefix="channelgate-discovery-"))
    sock = bound_socket()
    url = f"http://{LOOPBACK}:{sock.getsockname()[1]}"
    settings = Settings.model_validate(
        {
            "server": {"host": LOOPBACK, "public_url": url, "insecure_dev_cookies": True},
            "database": {"url": f"sqlite+aiosqlite:///{base_dir / 'channelgate.db'}"},
            "oidc": {"issuer": issuer, "client_id": "gateway", "client_secret": "gateway-secret"},
        }
    )
    try:
        async with running_gateway(settings, sock):
            yield url
    finally:
        sock.close()
        shutil.rmtree(base_dir, ignore_errors=True)


async def test_no_login_starts_against_a_look_alike_issuer_and_the_right_one_gets_state_nonce_and_s256(
    provider: Provider,
) -> None:
    async with _gateway(provider.issuer) as url, httpx.AsyncClient(timeout=10.0) as browser:
        for name in ("suffix", "trailing slash"):
            provider.changes["issuer"] = LOOK_ALIKES[name](provider.issuer)
            refused = await browser.get(url + "/.channelgate/login", params={"rd": "/chat/"})
            assert refused.status_code == 503, name
            assert "location" not in refused.headers and "set-cookie" not in refused.headers, name

        provider.changes.clear()
        started = [await browser.get(url + "/.channelgate/login", params={"rd": "/chat/"}) for _ in range(2)]
        requests = [httpx.URL(response.headers["location"]) for response in started]
        for request in requests:
            assert request.copy_with(query=None) == httpx.URL(provider.issuer + "/auth")
            params = request.params
            assert params["response_type"] == "code" and params["redirect_uri"] == url + "/.channelgate/callback"
            assert params["code_challenge_method"] == "S256"
            assert len(base64.urlsafe_b64decode(params["code_challenge"] + "=")) == 32  # a SHA-256
            assert len(params["state"]) >= 43 and len(params["nonce"]) >= 43
        first, second = (request.params for request in requests)
        for name in ("state", "nonce", "code_challenge"):
            assert first[name] != second[name], name
