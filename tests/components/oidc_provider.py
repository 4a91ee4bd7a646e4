"""A real, certified OpenID provider (npm ``oidc-provider`` 9.13.3, see ``oidc_provider/op.mjs``) on a free port.

It enforces what a production provider enforces (PKCE S256, exact redirect URIs, client secrets, its own login
form that checks passwords), so tests can prove security properties against it. It also issues the RFC 9207
``iss`` authorization-response parameter, sends OIDC Back-Channel Logout tokens to loopback clients and supports
RP-Initiated Logout.
"""

from __future__ import annotations

import base64
import json
import tempfile
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import httpx
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.components.ports import LOOPBACK, free_port
from tests.components.process import ChildProcess, Lifecycle, ServerProcess, require_executable, run

OP_DIR = Path(__file__).with_name("oidc_provider")
DEMO_PASSWORD = "demo-password"
TEST_CLIENT_ID = "channelgate"
TEST_CLIENT_SECRET = "channelgate-test-secret"

Jwk = dict[str, str]
Jwks = dict[str, list[Jwk]]

PRIVATE_JWK_MEMBERS = frozenset({"d", "p", "q", "dp", "dq", "qi"})


@dataclass(frozen=True)
class OidcAccount:
    """A user the provider knows; ``sub`` is its stable subject identifier (OIDC Core §2)."""

    sub: str
    username: str
    password: str
    email: str
    name: str
    groups: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "sub": self.sub,
            "username": self.username,
            "password": self.password,
            "email": self.email,
            "name": self.name,
            "groups": list(self.groups),
        }


@dataclass(frozen=True)
class OidcClient:
    """A statically registered relying party (OIDC Dynamic Client Registration §2 metadata names)."""

    client_id: str
    client_secret: str
    redirect_uris: tuple[str, ...]
    post_logout_redirect_uris: tuple[str, ...] = ()
    backchannel_logout_uri: str | None = None
    token_endpoint_auth_method: str = "client_secret_basic"

    def to_json(self) -> dict[str, Any]:
        client: dict[str, Any] = {
            "client_id": self.client_id,
            "client_secret": self.client_secret,
            "redirect_uris": list(self.redirect_uris),
            "post_logout_redirect_uris": list(self.post_logout_redirect_uris),
            "token_endpoint_auth_method": self.token_endpoint_auth_method,
        }
        if self.backchannel_logout_uri is not None:
            client["backchannel_logout_uri"] = self.backchannel_logout_uri
        return client


STANDARD_ACCOUNTS: tuple[OidcAccount, ...] = (
    OidcAccount(
        sub="alice-0001",
        username="alice",
        password=DEMO_PASSWORD,
        email="alice@example.com",
        name="Alice Example",
        groups=("chat-agents", "phone-agents", "mail-agents", "supervisors"),
    ),
    OidcAccount(
        sub="bob-0002",
        username="bob",
        password=DEMO_PASSWORD,
        email="bob@example.com",
        name="Bob Example",
        groups=("chat-agents",),
    ),
    OidcAccount(
        sub="carol-0003",
        username="carol",
        password=DEMO_PASSWORD,
        email="carol@example.com",
        name="Carol Example",
        groups=("phone-agents", "mail-agents"),
    ),
)


@dataclass(frozen=True)
class OidcProviderConfig:
    """What the provider serves. ``port`` and ``jwks`` are chosen/generated when left out.

    ``ttl`` overrides oidc-provider lifetimes in seconds, e.g. ``{"IdToken": 5}`` for expiry tests.
    """

    clients: tuple[OidcClient, ...]
    accounts: tuple[OidcAccount, ...] = STANDARD_ACCOUNTS
    port: int | None = None
    jwks: Jwks | None = None
    ttl: Mapping[str, int] = field(default_factory=dict)


def _b64url_uint(value: int) -> str:
    raw = value.to_bytes((value.bit_length() + 7) // 8, "big")
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def generate_signing_key(kid: str | None = None) -> Jwk:
    """A fresh private RSA-2048 JWK (RFC 7517/7518 §6.3) for RS256 ID-token signatures."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_numbers()
    public = private.public_numbers
    return {
        "kty": "RSA",
        "kid": kid or uuid.uuid4().hex,
        "use": "sig",
        "alg": "RS256",
        "n": _b64url_uint(public.n),
        "e": _b64url_uint(public.e),
        "d": _b64url_uint(private.d),
        "p": _b64url_uint(private.p),
        "q": _b64url_uint(private.q),
        "dp": _b64url_uint(private.dmp1),
        "dq": _b64url_uint(private.dmq1),
        "qi": _b64url_uint(private.iqmp),
    }


def new_key_set(*kids: str) -> Jwks:
    """A private JWK set with one fresh key per ``kid`` (one random-kid key when none are given).

    The first key signs; later ones are only published, which is how a provider pre-announces a rotation.
    """
    return {"keys": [generate_signing_key(kid) for kid in kids] or [generate_signing_key()]}


def public_jwks(jwks: Jwks) -> Jwks:
    """The public half of a key set, as the provider's ``jwks_uri`` publishes it."""
    return {"keys": [{k: v for k, v in key.items() if k not in PRIVATE_JWK_MEMBERS} for key in jwks["keys"]]}


def ensure_node_modules() -> None:
    """Install the pinned provider (``npm ci`` from the committed lock file) when node_modules is missing."""
    if (OP_DIR / "node_modules" / "oidc-provider" / "package.json").exists():
        return
    npm = require_executable("npm", "npm")
    run([npm, "ci", "--no-audit", "--no-fund"], what="npm ci", cwd=OP_DIR, timeout=300)


class OidcProvider(ServerProcess, Lifecycle):
    """The provider as a child ``node op.mjs`` process; a context manager.

    ``restart(jwks=...)`` keeps the port and issuer but swaps the signing keys (key-rotation tests). Sessions
    and grants live in memory, so a restart also signs everybody out of the provider.
    """

    def __init__(self, config: OidcProviderConfig, *, startup_timeout: float = 20.0) -> None:
        self.config = config
        self.port = config.port if config.port is not None else free_port()
        self.jwks: Jwks = config.jwks if config.jwks is not None else new_key_set()
        directory = Path(tempfile.mkdtemp(prefix="channelgate-op-"))
        self._config_path = directory / "config.json"
        node = require_executable("node", "nodejs")
        process = ChildProcess(
            [node, str(OP_DIR / "op.mjs"), str(self._config_path)],
            directory / "op.log",
            name=f"oidc-provider :{self.port}",
            cwd=OP_DIR,
        )
        super().__init__(process, directory, startup_timeout=startup_timeout)

    @property
    def issuer(self) -> str:
        """The issuer identifier, ``http://127.0.0.1:PORT`` (no trailing slash)."""
        return f"http://{LOOPBACK}:{self.port}"

    @property
    def url(self) -> str:
        """The provider's base URL (equal to the issuer)."""
        return self.issuer

    @property
    def discovery_url(self) -> str:
        """OpenID Connect Discovery 1.0 §4 metadata URL."""
        return f"{self.issuer}/.well-known/openid-configuration"

    @property
    def log_path(self) -> Path:
        return self.process.log_path

    def metadata(self) -> dict[str, Any]:
        """Fetch the discovery document."""
        response = httpx.get(self.discovery_url, timeout=5.0)
        response.raise_for_status()
        document: dict[str, Any] = response.json()
        return document

    def start(self) -> None:
        """Write the config file, start node and wait until discovery answers."""
        ensure_node_modules()
        document = {
            "port": self.port,
            "issuer": self.issuer,
            "clients": [client.to_json() for client in self.config.clients],
            "accounts": [account.to_json() for account in self.config.accounts],
            "jwks": self.jwks,
            "ttl": dict(self.config.ttl),
        }
        self._config_path.write_text(json.dumps(document, indent=2))
        self._start_and_wait(self._ready, what="discovery document")

    def restart(self, jwks: Jwks | None = None) -> None:
        """Restart on the same port, with ``jwks`` as the new signing keys when given."""
        if jwks is not None:
            self.jwks = jwks
        super().restart()

    def _ready(self) -> bool:
        """Our node said it listens (op.mjs logs it), and the port answers: not another server that took the port
        between ``free_port()`` and node's bind, while our node exits on EADDRINUSE."""
        try:
            said = f"oidc-provider ready at {self.issuer}" in self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return False
        return said and self._answers()

    def _answers(self) -> bool:
        try:
            return httpx.get(self.discovery_url, timeout=1.0).status_code == 200
        except httpx.TransportError:
            return False


def provider_config(
    redirect_uris: Sequence[str],
    *,
    client_id: str = TEST_CLIENT_ID,
    client_secret: str = TEST_CLIENT_SECRET,
    post_logout_redirect_uris: Sequence[str] = (),
    backchannel_logout_uri: str | None = None,
    accounts: Sequence[OidcAccount] = STANDARD_ACCOUNTS,
    jwks: Jwks | None = None,
    ttl: Mapping[str, int] | None = None,
) -> OidcProviderConfig:
    """A one-client configuration, the common case for gateway tests."""
    client = OidcClient(
        client_id=client_id,
        client_secret=client_secret,
        redirect_uris=tuple(redirect_uris),
        post_logout_redirect_uris=tuple(post_logout_redirect_uris),
        backchannel_logout_uri=backchannel_logout_uri,
    )
    return OidcProviderConfig(clients=(client,), accounts=tuple(accounts), jwks=jwks, ttl=dict(ttl or {}))


class OidcProviderFactory(Protocol):
    """Start a provider with one client (``channelgate`` / ``channelgate-test-secret`` by default)."""

    def __call__(
        self,
        redirect_uris: Sequence[str],
        *,
        client_id: str = ...,
        client_secret: str = ...,
        post_logout_redirect_uris: Sequence[str] = ...,
        backchannel_logout_uri: str | None = ...,
        accounts: Sequence[OidcAccount] = ...,
        jwks: Jwks | None = ...,
        ttl: Mapping[str, int] | None = ...,
    ) -> OidcProvider: ...
