"""ID-token forgeries against the real provider's JWKS, key rotation, and how logins map to agents.

Each forged token changes one thing of a token the provider's own key would have signed, so a refusal proves
that very check (research item 22: ``alg=none``, HS256 keyed with the public key (CVE-2024-33663), unknown
``kid``, ``jku``/``jwk`` headers, ``exp``/``nbf``, ``aud``, nonce, look-alike issuers (CVE-2024-53861),
unknown ``crit``). Item 23: a multi-``@`` username is refused and agents are keyed on (iss, sub).
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator, Callable
from types import SimpleNamespace
from typing import Any, cast

import aiohttp
import httpx
import pytest
import pytest_asyncio
import uvicorn
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from joserfc.jwk import DictKey, RSAKey
from pydantic import SecretStr
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route

from gateway.errors import LoginFailed
from gateway.oidc import discovery
from gateway.oidc.client import OidcClient
from gateway.settings import OidcSettings
from tests.components.browserless_login import complete_login, login_steps
from tests.components.login_gateway import JSON, LoginGateway, login_gateway, provider_pool
from tests.components.oidc_provider import (
    DEMO_PASSWORD,
    STANDARD_ACCOUNTS,
    TEST_CLIENT_ID,
    TEST_CLIENT_SECRET,
    Jwk,
    OidcAccount,
    OidcProvider,
    generate_signing_key,
    new_key_set,
    public_jwks,
)
from tests.components.ports import LOOPBACK, free_port

pytestmark = [
    pytest.mark.oidc,
    pytest.mark.timeout(90),
    pytest.mark.asyncio(loop_scope="module"),
]

NONCE = "nonce-of-this-login"
#: ``ProviderKeys``' default: an unknown ``kid`` re-reads the JWKS at most this often (seconds).
JWKS_REFRESH_INTERVAL = 10.0
MALLORY = OidcAccount(
    sub="mallory-0004", username="a@evil@corp.com", password=DEMO_PASSWORD, email="m@corp.com", name="Mallory"
)
IMPOSTOR = OidcAccount(
    sub="impostor-0005", username="Alice", password=DEMO_PASSWORD, email="i@evil.example", name="Impostor"
)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _json(value: Any) -> str:
    return _b64(json.dumps(value, separators=(",", ":")).encode())


Signer = Callable[[bytes], bytes]


def rs256(private_jwk: Jwk) -> Signer:
    key = RSAKey.import_key(cast(DictKey, private_jwk)).private_key
    assert isinstance(key, rsa.RSAPrivateKey)
    return lambda message: key.sign(message, padding.PKCS1v15(), hashes.SHA256())


def hs256(secret: bytes) -> Signer:
    return lambda message: hmac.new(secret, message, hashlib.sha256).digest()


def compact(header: dict[str, Any], claims: dict[str, Any], sign: Signer | None) -> str:
    signing_input = f"{_json(header)}.{_json(claims)}"
    signature = sign(signing_input.encode()) if sign is not None else b""
    return f"{signing_input}.{_b64(signature)}"


@dataclasses.dataclass
class Forge:
    """What a forgery needs: the provider's issuer and signing key, an attacker key and a JWKS it serves."""

    issuer: str
    provider_key: Jwk
    attacker_key: Jwk
    attacker_jwks_url: str

    def claims(self, **changes: Any) -> dict[str, Any]:
        now = int(time.time())
        claims = {
            "iss": self.issuer,
            "sub": "alice-0001",
            "aud": TEST_CLIENT_ID,
            "exp": now + 300,
            "iat": now,
            "nonce": NONCE,
            "preferred_username": "alice",
        }
        claims.update(changes)
        return {key: value for key, value in claims.items() if value is not None}

    def header(self, **changes: Any) -> dict[str, Any]:
        return {"alg": "RS256", "typ": "JWT", "kid": self.provider_key["kid"], **changes}

    def signed(self, header: dict[str, Any] | None = None, **claims: Any) -> str:
        return compact(header or self.header(), self.claims(**claims), rs256(self.provider_key))

    def public_pem(self) -> bytes:
        public = RSAKey.import_key(cast(DictKey, public_jwks({"keys": [self.provider_key]})["keys"][0]))
        return public.as_pem(private=False)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def attacker_jwks() -> AsyncIterator[tuple[Jwk, str]]:
    """An attacker key and a server publishing its JWKS (a ``jku`` target a careless validator would follow)."""
    key = generate_signing_key("attacker")
    served = public_jwks({"keys": [key]})
    app = Starlette(routes=[Route("/jwks.json", lambda _: JSONResponse(served))])
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host=LOOPBACK, port=port, log_level="critical", lifespan="off"))
    task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.01)
    yield key, f"http://{LOOPBACK}:{port}/jwks.json"
    server.should_exit = True
    await task


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def gateway() -> AsyncIterator[LoginGateway]:
    with provider_pool() as pool:
        async with login_gateway(pool, accounts=[*STANDARD_ACCOUNTS, MALLORY, IMPOSTOR]) as running:
            yield running


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def oidc(gateway: LoginGateway) -> AsyncIterator[OidcClient]:
    """A relying party of its own on the gateway's provider, discovered for real."""
    settings = OidcSettings(
        issuer=gateway.provider.issuer, client_id=TEST_CLIENT_ID, client_secret=SecretStr(TEST_CLIENT_SECRET)
    )
    async with aiohttp.ClientSession() as http:
        client = OidcClient(settings, gateway.url + "/.channelgate/callback", http)
        await client.metadata()
        yield client


@pytest.fixture
def forge(gateway: LoginGateway, attacker_jwks: tuple[Jwk, str]) -> Forge:
    key, url = attacker_jwks
    return Forge(gateway.provider.issuer, gateway.provider.jwks["keys"][0], key, url)


async def test_a_token_signed_by_the_providers_key_is_accepted(oidc: OidcClient, forge: Forge) -> None:
    claims = await oidc._validate_id_token(forge.signed(), NONCE, time.time())
    assert claims["sub"] == "alice-0001"


def _alg_none(forge: Forge, alg: str) -> str:
    return compact(forge.header(alg=alg), forge.claims(), None)


def _public_key_as_hmac_secret(forge: Forge, secret: bytes) -> str:
    return compact(forge.header(alg="HS256"), forge.claims(), hs256(secret))


def _attacker_signed(forge: Forge, **header: Any) -> str:
    return compact(forge.header(**header), forge.claims(), rs256(forge.attacker_key))


def _crit(forge: Forge) -> str:
    return forge.signed(forge.header(crit=["urn:example:must-understand"], **{"urn:example:must-understand": True}))


def _payload_changed_after_signing(forge: Forge) -> str:
    header, _, signature = forge.signed().split(".")
    return f"{header}.{_json(forge.claims(sub='bob-0002'))}.{signature}"


#: name → a forged ID token. Every one must be refused with LoginFailed.
FORGERIES: list[tuple[str, Callable[[Forge], str]]] = [
    ("alg none", lambda f: _alg_none(f, "none")),
    ("alg None", lambda f: _alg_none(f, "None")),
    ("alg NONE", lambda f: _alg_none(f, "NONE")),
    ("HS256 keyed with the public PEM", lambda f: _public_key_as_hmac_secret(f, f.public_pem())),
    (
        "HS256 keyed with the public JWK",
        lambda f: _public_key_as_hmac_secret(
            f, json.dumps(public_jwks({"keys": [f.provider_key]})["keys"][0]).encode()
        ),
    ),
    ("HS256 keyed with the modulus", lambda f: _public_key_as_hmac_secret(f, f.provider_key["n"].encode())),
    ("unknown kid", lambda f: _attacker_signed(f, kid="attacker")),
    ("no kid, attacker key", lambda f: compact({"alg": "RS256"}, f.claims(), rs256(f.attacker_key))),
    ("jku to the attacker's JWKS", lambda f: _attacker_signed(f, kid="attacker", jku=f.attacker_jwks_url)),
    (
        "jku with the provider's kid",
        lambda f: _attacker_signed(f, jku=f.attacker_jwks_url),
    ),
    (
        "embedded jwk of the attacker",
        lambda f: _attacker_signed(f, kid="attacker", jwk=public_jwks({"keys": [f.attacker_key]})["keys"][0]),
    ),
    ("x5u to the attacker", lambda f: _attacker_signed(f, kid="attacker", x5u=f.attacker_jwks_url)),
    ("another RSA key with the provider's kid", lambda f: _attacker_signed(f)),
    ("payload changed after signing", _payload_changed_after_signing),
    ("signature stripped", lambda f: f.signed().rsplit(".", 1)[0] + "."),
    ("expired", lambda f: f.signed(exp=int(time.time()) - 3600, iat=int(time.time()) - 7200)),
    ("not yet valid", lambda f: f.signed(nbf=int(time.time()) + 3600)),
    ("no exp", lambda f: f.signed(exp=None)),
    ("wrong aud", lambda f: f.signed(aud="another-client")),
    ("no aud", lambda f: f.signed(aud=None)),
    ("aud list without us", lambda f: f.signed(aud=["another-client"])),
    ("extra untrusted aud", lambda f: f.signed(aud=[TEST_CLIENT_ID, "another-client"], azp=TEST_CLIENT_ID)),
    ("azp of another client", lambda f: f.signed(azp="another-client")),
    ("wrong nonce", lambda f: f.signed(nonce="nonce-of-another-login")),
    ("no nonce", lambda f: f.signed(nonce=None)),
    ("issuer with a trailing slash", lambda f: f.signed(iss=f.issuer + "/")),
    ("issuer with a suffix", lambda f: f.signed(iss=f.issuer + ".evil")),
    ("issuer with a prefix", lambda f: f.signed(iss="https://evil.example/" + f.issuer)),
    ("issuer truncated (partial match)", lambda f: f.signed(iss=f.issuer[:-1])),
    ("issuer as a list", lambda f: f.signed(iss=[f.issuer])),
    ("another issuer", lambda f: f.signed(iss="https://evil.example")),
    ("no sub", lambda f: f.signed(sub=None)),
    ("unknown crit header", _crit),
]


@pytest.mark.parametrize("forgery", [f for _, f in FORGERIES], ids=[n for n, _ in FORGERIES])
async def test_a_forged_id_token_is_refused(oidc: OidcClient, forge: Forge, forgery: Callable[[Forge], str]) -> None:
    with pytest.raises(LoginFailed) as refused:
        await oidc._validate_id_token(forgery(forge), NONCE, time.time())
    assert refused.value.reason == "invalid_id_token"


async def _login_outcome(gateway: LoginGateway, user: str) -> tuple[httpx.Response, httpx.AsyncClient]:
    client = gateway.client()
    steps = await login_steps(gateway.url, user, DEMO_PASSWORD, "/", client)
    return await complete_login(client, steps.callback_url), client


async def test_a_username_with_several_at_signs_is_refused_and_no_agent_is_made(gateway: LoginGateway) -> None:
    mark = await gateway.audit_mark()
    response, client = await _login_outcome(gateway, MALLORY.username)
    assert response.status_code == 401
    assert (await client.get(gateway.url + "/chat/echo", headers=JSON)).status_code == 401
    assert [r.reason for r in await gateway.records_since(mark, "login_failed")] == ["invalid_username"]
    assert await gateway.services.agents.find_by_oidc(gateway.provider.issuer, MALLORY.sub) is None


async def test_a_new_subject_claiming_an_existing_username_is_refused_not_linked(gateway: LoginGateway) -> None:
    await gateway.login("alice")
    alice = await gateway.agent_id("alice")
    mark = await gateway.audit_mark()
    response, _ = await _login_outcome(gateway, IMPOSTOR.username)
    assert response.status_code == 403
    assert await gateway.services.agents.find_by_oidc(gateway.provider.issuer, IMPOSTOR.sub) is None
    assert await gateway.agent_id("alice") == alice
    assert [r.reason for r in await gateway.records_since(mark, "login_refused")] == ["user_name_conflict"]


async def test_a_renamed_account_keeps_its_agent_because_agents_are_keyed_on_issuer_and_subject() -> None:
    renamed = dataclasses.replace(STANDARD_ACCOUNTS[1], username="robert")
    with provider_pool() as pool:
        async with login_gateway(pool) as gateway:
            await gateway.login("bob")
            before = await gateway.services.agents.find_by_oidc(gateway.provider.issuer, renamed.sub)
            assert before is not None
            _restart_with_accounts(gateway.provider, [renamed])
            robert = await gateway.login("robert")
            after = await gateway.services.agents.find_by_oidc(gateway.provider.issuer, renamed.sub)
            assert after is not None
            # Linked on (iss, sub), returned as found: the id and the userName the agent was created with stay.
            assert (after.id, after.user_name) == (before.id, "bob")
            assert (await robert.get(gateway.url + "/chat/echo", headers=JSON)).status_code == 200
            assert [a.user_name for a in await gateway.services.agents.list()] == ["bob"]


def _restart_with_accounts(provider: OidcProvider, accounts: list[OidcAccount]) -> None:
    provider.config = dataclasses.replace(provider.config, accounts=tuple(accounts))
    provider.restart()


async def test_a_login_after_the_provider_rotated_its_signing_key_succeeds(monkeypatch: pytest.MonkeyPatch) -> None:
    with provider_pool() as pool:
        async with login_gateway(pool) as gateway:
            await gateway.login("alice")
            old_kid = gateway.provider.jwks["keys"][0]["kid"]
            gateway.provider.restart(jwks=new_key_set("k2"))
            assert old_kid != "k2"
            # The JWKS is re-read on an unknown kid at most once per refresh interval (anti-hammering); a real
            # rotation comes long after the last read, so age the cache past that interval (not the whole clock).
            real = time.monotonic
            aged = SimpleNamespace(monotonic=lambda: real() + JWKS_REFRESH_INTERVAL)
            monkeypatch.setattr(discovery, "time", aged)
            carol = await gateway.login("carol")
            assert (await carol.get(gateway.url + "/phone/echo", headers=JSON)).status_code == 200
