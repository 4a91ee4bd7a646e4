"""A Shared Signals transmitter for tests, speaking the real protocol (RFC 8935 push of RFC 8417 SETs).

It publishes its signing key as a JWKS over HTTP (``published``), writes its own ``[[ssf.transmitters]]`` table,
signs SETs with its ``issuer`` as ``iss`` and pushes them with its bearer token (``push``).
"""

from __future__ import annotations

import contextlib
import json
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
import uvicorn
from joserfc import jwt
from joserfc.jwk import RSAKey
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from tests.components.asgi_server import bound_socket, start_server
from tests.components.oidc_provider import generate_signing_key, public_jwks


@dataclass
class Transmitter:
    issuer: str
    key: dict[str, Any] = field(default_factory=lambda: generate_signing_key("ssf-1"))
    token: str = field(default_factory=lambda: secrets.token_urlsafe(32))
    sock: Any = field(default_factory=bound_socket)

    @property
    def jwks_uri(self) -> str:
        return f"http://127.0.0.1:{self.sock.getsockname()[1]}/jwks"

    def toml(self, subject_issuers: Sequence[str] = (), max_set_age_seconds: int | None = None) -> str:
        """Its ``[[ssf.transmitters]]`` table; ``subject_issuers`` are the other issuers it may speak for."""
        table = (
            f'[[ssf.transmitters]]\nissuer = "{self.issuer}"\njwks_uri = "{self.jwks_uri}"\ntoken = "{self.token}"\n'
        )
        table += f"subject_issuers = {json.dumps(list(subject_issuers))}\n" if subject_issuers else ""
        return table + (f"max_set_age_seconds = {max_set_age_seconds}\n" if max_set_age_seconds else "")

    def sign(self, events: dict[str, Any], *, header: dict[str, Any] | None = None, key: dict[str, Any] | None = None,
             **claims: Any) -> str:  # fmt: skip
        signer = key or self.key
        body = {"iss": self.issuer, "iat": int(time.time()), "jti": uuid.uuid4().hex, "events": events} | claims
        body = {name: value for name, value in body.items() if value is not None}
        head = {"alg": "RS256", "kid": signer["kid"], "typ": "secevent+jwt"} | (header or {})
        return jwt.encode(head, body, RSAKey.import_key(signer))


@contextlib.asynccontextmanager
async def published(issuer: str) -> AsyncIterator[Transmitter]:
    """A transmitter for ``issuer`` whose JWKS is served until the block ends."""
    sender = Transmitter(issuer)

    async def jwks(_request: Request) -> JSONResponse:
        return JSONResponse(public_jwks({"keys": [sender.key]}))

    config = uvicorn.Config(Starlette(routes=[Route("/jwks", jwks)]), lifespan="off", log_level="critical")
    server, task = await start_server(config, sender.sock)
    try:
        yield sender
    finally:
        server.should_exit = True
        await task
        sender.sock.close()


async def push(
    gateway_url: str, body: str, token: str | None, content_type: str = "application/secevent+jwt"
) -> httpx.Response:
    """RFC 8935 §2: one SET, POSTed to the gateway's receiver with the transmitter's bearer token."""
    headers = {"Content-Type": content_type} | ({"Authorization": f"Bearer {token}"} if token else {})
    async with httpx.AsyncClient() as client:
        return await client.post(gateway_url + "/.channelgate/ssf/events", content=body, headers=headers)
