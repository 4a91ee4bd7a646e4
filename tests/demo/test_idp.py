"""The development OpenID provider, driven over real HTTP through the code flow the gateway uses."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
import pytest
from authlib.common.security import generate_token
from authlib.oauth2.rfc7636 import create_s256_code_challenge
from joserfc import jwt
from joserfc.jwk import KeySet

from deploy.demo.idp import create_app
from tests.demo.servers import demo_process, serve_wsgi

CLIENT_ID = "channelgate-demo"
CLIENT_SECRET = "demo-client-secret"
REDIRECT_URI = "http://127.0.0.1:8000/.channelgate/callback"
POST_LOGOUT_URI = "http://127.0.0.1:8000/"
SCOPE = "openid profile email groups"


@dataclass(frozen=True)
class Login:
    """One authorization request's secrets, as the gateway keeps them until the callback."""

    url: str
    state: str
    nonce: str
    verifier: str


@pytest.fixture
def issuer() -> Iterator[str]:
    """A fresh provider in this process, served at the URL it names as its issuer."""
    app = partial(
        create_app,
        client_id=CLIENT_ID,
        client_secret=CLIENT_SECRET,
        redirect_uris=[REDIRECT_URI],
        post_logout_redirect_uris=[POST_LOGOUT_URI],
    )
    with serve_wsgi(lambda base: app(issuer=base)) as base:
        yield base


@pytest.fixture
async def browser(issuer: str) -> AsyncIterator[httpx.AsyncClient]:
    """The agent's browser: keeps the provider's cookie, does not follow redirects (we inspect them)."""
    async with httpx.AsyncClient(base_url=issuer) as client:
        yield client


def start_login(issuer: str) -> Login:
    """The gateway's authorization request (OIDC Core §3.1.2.1) with S256 PKCE, a nonce and a state."""
    state, nonce, verifier = generate_token(20), generate_token(20), generate_token(64)
    params = {
        "response_type": "code",
        "client_id": CLIENT_ID,
        "redirect_uri": REDIRECT_URI,
        "scope": SCOPE,
        "state": state,
        "nonce": nonce,
        "code_challenge": create_s256_code_challenge(verifier),
        "code_challenge_method": "S256",
    }
    return Login(f"{issuer}/authorize?{urlencode(params)}", state, nonce, verifier)


async def redeem(
    issuer: str, callback: str, verifier: str, auth_method: str = "client_secret_basic", secret: str = CLIENT_SECRET
) -> httpx.Response:
    """The gateway's token request (RFC 6749 §4.1.3) with the PKCE verifier, authenticated as ``auth_method``."""
    code = query(callback)["code"]
    form = {"grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT_URI, "code_verifier": verifier}
    async with httpx.AsyncClient() as client:
        if auth_method == "client_secret_post":
            return await client.post(f"{issuer}/token", data={**form, "client_id": CLIENT_ID, "client_secret": secret})
        return await client.post(f"{issuer}/token", data=form, auth=(CLIENT_ID, secret))


async def tokens(issuer: str, callback: str, verifier: str, auth_method: str = "client_secret_basic") -> dict[str, Any]:
    answer = await redeem(issuer, callback, verifier, auth_method)
    assert answer.status_code == 200, answer.text
    token: dict[str, Any] = answer.json()
    return token


async def sign_in(browser: httpx.AsyncClient, login: Login, username: str = "alice") -> str:
    """Show the form, submit the demo password, and return the redirect the provider answers with."""
    form = await browser.get(login.url)
    assert form.status_code == 200
    assert 'name="password"' in form.text
    answer = await browser.post(login.url, data={"username": username, "password": "demo"})
    assert answer.status_code == 302, answer.text
    return answer.headers["location"]


def query(url: str) -> dict[str, str]:
    return {name: values[0] for name, values in parse_qs(urlsplit(url).query).items()}


async def validated_id_token(issuer: str, id_token: str, nonce: str) -> dict[str, Any]:
    """OIDC Core §3.1.3.7 checks: signature by a key in the provider's JWKS, iss, aud, exp, and our nonce."""
    async with httpx.AsyncClient() as client:
        jwks = (await client.get(f"{issuer}/jwks.json")).json()
    token = jwt.decode(id_token, KeySet.import_key_set(jwks), algorithms=["RS256"])
    assert token.header["kid"] in {key["kid"] for key in jwks["keys"]}
    jwt.JWTClaimsRegistry(
        iss={"essential": True, "value": issuer},
        aud={"essential": True, "value": CLIENT_ID},
        nonce={"essential": True, "value": nonce},
        exp={"essential": True},
    ).validate(token.claims)
    return dict(token.claims)


async def test_discovery_announces_s256_pkce_the_iss_parameter_and_logout(issuer: str) -> None:
    async with httpx.AsyncClient() as client:
        metadata = (await client.get(f"{issuer}/.well-known/openid-configuration")).json()
    assert metadata["issuer"] == issuer
    assert metadata["authorization_response_iss_parameter_supported"] is True
    assert metadata["code_challenge_methods_supported"] == ["S256"]
    assert metadata["end_session_endpoint"] == f"{issuer}/logout"
    assert set(metadata["token_endpoint_auth_methods_supported"]) == {"client_secret_basic", "client_secret_post"}
    assert metadata["id_token_signing_alg_values_supported"] == ["RS256"]


@pytest.mark.parametrize("auth_method", ["client_secret_basic", "client_secret_post"])
async def test_code_flow_with_pkce_yields_an_id_token_bound_to_the_nonce(
    issuer: str, browser: httpx.AsyncClient, auth_method: str
) -> None:
    login = start_login(issuer)
    callback = await sign_in(browser, login)

    params = query(callback)
    assert callback.startswith(REDIRECT_URI + "?")
    assert params["iss"] == issuer  # RFC 9207 §2
    assert params["state"] == login.state
    token = await tokens(issuer, callback, login.verifier, auth_method)
    claims = await validated_id_token(issuer, token["id_token"], login.nonce)
    assert claims["sub"] == str(uuid.uuid5(uuid.NAMESPACE_URL, "urn:channelgate-demo:agent:alice"))
    assert claims["preferred_username"] == "alice"
    assert claims["email"] == "alice@example.org"
    assert claims["email_verified"] is True
    assert claims["groups"] == ["chat-agents", "phone-agents", "mail-agents", "supervisors"]


@pytest.mark.parametrize(
    ("username", "groups"),
    [("bob", ["chat-agents"]), ("carol", ["phone-agents", "mail-agents", "security-reviewers"])],
)
async def test_each_demo_account_gets_its_own_groups_and_name(
    issuer: str, browser: httpx.AsyncClient, username: str, groups: list[str]
) -> None:
    login = start_login(issuer)
    callback = await sign_in(browser, login, username)
    token = await tokens(issuer, callback, login.verifier)
    claims = await validated_id_token(issuer, token["id_token"], login.nonce)
    assert (claims["preferred_username"], claims["groups"]) == (username, groups)
    assert claims["name"].startswith(username.capitalize())


@pytest.mark.parametrize(("username", "password"), [("alice", "wrong"), ("mallory", "demo"), ("alice", "")])
async def test_wrong_password_or_unknown_user_is_refused_and_issues_no_code(
    issuer: str, browser: httpx.AsyncClient, username: str, password: str
) -> None:
    login = start_login(issuer)
    answer = await browser.post(login.url, data={"username": username, "password": password})
    assert answer.status_code == 401
    assert "Wrong username or password" in answer.text
    assert "location" not in answer.headers
    assert (await browser.get(login.url)).status_code == 200  # still asked to sign in


@pytest.mark.parametrize(
    "pkce",
    [
        {},
        {"code_challenge": create_s256_code_challenge("v" * 43), "code_challenge_method": "plain"},
        {"code_challenge": create_s256_code_challenge("v" * 43)},
    ],
    ids=["missing", "plain", "no-method"],
)
async def test_authorization_without_s256_pkce_is_refused_back_at_the_client(
    issuer: str, browser: httpx.AsyncClient, pkce: dict[str, str]
) -> None:
    params = {"response_type": "code", "client_id": CLIENT_ID, "redirect_uri": REDIRECT_URI, "scope": SCOPE}
    answer = await browser.get("/authorize", params={**params, "state": "s1", "nonce": "n1", **pkce})
    assert answer.status_code == 302
    error = query(answer.headers["location"])
    assert (error["error"], error["state"], error["iss"]) == ("invalid_request", "s1", issuer)


async def test_unregistered_redirect_uri_gets_an_error_page_not_a_redirect(browser: httpx.AsyncClient) -> None:
    params = {
        "response_type": "code",
        "client_id": CLIENT_ID,
        "redirect_uri": "http://attacker.test/cb",
        "scope": SCOPE,
        "code_challenge": create_s256_code_challenge("v" * 43),
        "code_challenge_method": "S256",
    }
    answer = await browser.get("/authorize", params=params)
    assert answer.status_code == 400
    assert "location" not in answer.headers


async def test_token_request_with_the_wrong_code_verifier_is_refused(issuer: str, browser: httpx.AsyncClient) -> None:
    login = start_login(issuer)
    answer = await redeem(issuer, await sign_in(browser, login), "x" * 64)
    assert (answer.status_code, answer.json()["error"]) == (400, "invalid_grant")


async def test_token_request_with_the_wrong_client_secret_is_refused(issuer: str, browser: httpx.AsyncClient) -> None:
    login = start_login(issuer)
    answer = await redeem(issuer, await sign_in(browser, login), login.verifier, secret="wrong")
    assert (answer.status_code, answer.json()["error"]) == (401, "invalid_client")


async def test_a_code_is_redeemed_once(issuer: str, browser: httpx.AsyncClient) -> None:
    login = start_login(issuer)
    callback = await sign_in(browser, login)
    await tokens(issuer, callback, login.verifier)
    again = await redeem(issuer, callback, login.verifier)
    assert (again.status_code, again.json()["error"]) == (400, "invalid_grant")


async def test_userinfo_answers_the_access_token_and_refuses_without_one(
    issuer: str, browser: httpx.AsyncClient
) -> None:
    login = start_login(issuer)
    callback = await sign_in(browser, login, "carol")
    access_token = (await tokens(issuer, callback, login.verifier))["access_token"]
    async with httpx.AsyncClient() as client:
        info = (await client.get(f"{issuer}/userinfo", headers={"Authorization": f"Bearer {access_token}"})).json()
        carol = ("carol", ["phone-agents", "mail-agents", "security-reviewers"])
        assert (info["preferred_username"], info["groups"]) == carol
        assert (await client.get(f"{issuer}/userinfo")).status_code == 401


async def test_a_signed_in_agent_is_sent_straight_back_and_logout_ends_that(
    issuer: str, browser: httpx.AsyncClient
) -> None:
    first = start_login(issuer)
    callback = await sign_in(browser, first)
    token = await tokens(issuer, callback, first.verifier)

    second = start_login(issuer)
    again = await browser.get(second.url)
    assert again.status_code == 302
    assert query(again.headers["location"])["state"] == second.state

    logout = await browser.get(
        "/logout",
        params={
            "client_id": CLIENT_ID,
            "id_token_hint": token["id_token"],
            "post_logout_redirect_uri": POST_LOGOUT_URI,
            "state": "bye",
        },
    )
    assert logout.status_code == 302
    assert logout.headers["location"] == POST_LOGOUT_URI + "?state=bye"
    assert (await browser.get(start_login(issuer).url)).status_code == 200  # the form again


async def test_logout_without_an_id_token_hint_asks_before_signing_out(issuer: str, browser: httpx.AsyncClient) -> None:
    await sign_in(browser, start_login(issuer))
    params = {"client_id": CLIENT_ID, "post_logout_redirect_uri": POST_LOGOUT_URI}
    confirm = await browser.get("/logout", params=params)
    assert (confirm.status_code, "Sign out" in confirm.text) == (200, True)
    assert (await browser.get(start_login(issuer).url)).status_code == 302  # still signed in

    done = await browser.post("/logout", data=params)
    assert (done.status_code, done.headers["location"]) == (302, POST_LOGOUT_URI)
    assert (await browser.get(start_login(issuer).url)).status_code == 200


async def test_logout_to_an_unregistered_uri_does_not_redirect(browser: httpx.AsyncClient) -> None:
    done = await browser.post("/logout", data={"client_id": CLIENT_ID, "post_logout_redirect_uri": "http://evil.test/"})
    assert done.status_code == 200
    assert "signed out" in done.text


async def test_the_command_line_serves_discovery_with_its_port_as_issuer(tmp_path: Path) -> None:
    args = {
        "client-id": CLIENT_ID,
        "client-secret": CLIENT_SECRET,
        "redirect-uri": REDIRECT_URI,
        "post-logout-redirect-uri": POST_LOGOUT_URI,
    }
    with demo_process("deploy.demo.idp", args, tmp_path) as base:
        async with httpx.AsyncClient() as client:
            metadata = (await client.get(f"{base}/.well-known/openid-configuration")).json()
    assert metadata["issuer"] == base
