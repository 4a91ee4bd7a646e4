"""The chat console's OAuth 2.0 mode: RFC 8693 token exchange, RFC 6749 refresh with rotation, RFC 7009
revocation, RFC 7662 introspection, client_secret_basic, and RFC 6750 on the agent routes.

The app runs in-process behind httpx's ASGI transport; the gateway's assertions (the subject tokens) are signed
by a :class:`GatewaySigner` whose JWKS a small HTTP server publishes, as in tests/demo/test_consoles.py. The last
test runs the console's command line and exchanges a token over the network.
"""

from __future__ import annotations

import base64
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote_plus

import httpx
import pytest

from deploy.demo.console_auth import ASSERTION_HEADER
from deploy.demo.consoles import create_app
from deploy.demo.effects import Effect, Effects
from deploy.demo.oauth_server import ACCESS_TOKEN_TYPE, JWT_TOKEN_TYPE, TOKEN_EXCHANGE, OAuthServer
from tests.demo.servers import GatewaySigner, demo_process

CLIENT_ID = "channelgate"
#: ':' and '%' are what RFC 6749 §2.3.1's form-encoding before Basic is for.
SECRET = "s3cret:with%25odd+chars"


def basic(client_id: str, secret: str, *, encode: bool = True) -> str:
    pair = f"{quote_plus(client_id)}:{quote_plus(secret)}" if encode else f"{client_id}:{secret}"
    return "Basic " + base64.b64encode(pair.encode()).decode()


CLIENT = {"Authorization": basic(CLIENT_ID, SECRET)}


class Console:
    """The console app and a client for it."""

    def __init__(self, client: httpx.AsyncClient, oauth: OAuthServer, signer: GatewaySigner) -> None:
        self.client = client
        self.oauth = oauth
        self.signer = signer

    @property
    def effects(self) -> list[Effect]:
        assert isinstance(self.oauth.effects, Effects)
        return self.oauth.effects.entries

    async def token(self, form: dict[str, str], headers: dict[str, str] | None = None) -> httpx.Response:
        return await self.client.post("/oauth/token", data=form, headers=CLIENT if headers is None else headers)

    async def exchange(self, **claims: Any) -> httpx.Response:
        subject = self.signer.sign("gw-1", **claims)
        form = {"grant_type": TOKEN_EXCHANGE, "subject_token": subject, "subject_token_type": JWT_TOKEN_TYPE}
        return await self.token(form)

    async def pair(self, **claims: Any) -> dict[str, Any]:
        answer = await self.exchange(**claims)
        assert answer.status_code == 200, answer.text
        body: dict[str, Any] = answer.json()
        return body

    async def refresh(self, refresh_token: str, **extra: str) -> httpx.Response:
        return await self.token({"grant_type": "refresh_token", "refresh_token": refresh_token, **extra})

    async def revoke(self, token: str, headers: dict[str, str] | None = None, **extra: str) -> httpx.Response:
        return await self.client.post(
            "/oauth/revoke", data={"token": token, **extra}, headers={**CLIENT, **(headers or {})}
        )

    async def active(self, token: str) -> bool:
        answer = await self.client.post("/oauth/introspect", data={"token": token}, headers=CLIENT)
        assert answer.status_code == 200
        verdict: bool = answer.json()["active"]
        return verdict

    async def page(self, access_token: str | None, **claims: Any) -> httpx.Response:
        headers = {ASSERTION_HEADER: self.signer.sign("gw-1", **claims)}
        if access_token is not None:
            headers["Authorization"] = f"Bearer {access_token}"
        return await self.client.get("/", headers=headers)


@asynccontextmanager
async def oauth_console(signer: GatewaySigner, jwks_url: str, **options: Any) -> AsyncIterator[Console]:
    app = create_app("chat", SECRET, jwks_url, signer.issuer, auth="oauth2", **options)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://console.test") as client:
        yield Console(client, app.state.oauth, signer)


@pytest.fixture
async def console(signer: GatewaySigner, jwks_url: str) -> AsyncIterator[Console]:
    async with oauth_console(signer, jwks_url) as console:
        yield console


async def test_the_gateway_assertion_is_exchanged_for_an_opaque_bearer_token_pair(console: Console) -> None:
    answer = await console.exchange()
    assert answer.status_code == 200
    assert answer.headers["cache-control"] == "no-store"  # RFC 6749 §5.1
    body = answer.json()
    assert body["token_type"] == "Bearer"
    assert body["issued_token_type"] == ACCESS_TOKEN_TYPE  # RFC 8693 §2.2.1
    assert body["expires_in"] == 300
    assert body["scope"] == "console"
    for name in ("access_token", "refresh_token"):
        token = body[name]
        assert "." not in token  # opaque, not a JWT carrying claims
        assert len(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))) >= 16  # at least 128 random bits
    assert body["access_token"] != body["refresh_token"]
    assert console.oauth.tokens.exchanges == 1


async def test_an_agent_route_accepts_a_live_token_with_the_assertion_of_its_agent(console: Console) -> None:
    tokens = await console.pair()
    page = await console.page(tokens["access_token"])
    assert page.status_code == 200
    assert "You are <strong>alice</strong>" in page.text
    assert tokens["access_token"] not in page.text


@pytest.mark.parametrize(
    "authorization",
    [
        None,
        basic(CLIENT_ID, "wrong-secret"),
        basic("someone-else", SECRET),
        basic(CLIENT_ID, SECRET, encode=False),  # a ':' in the secret, not form-encoded, splits the pair wrongly
        f"Bearer {SECRET}",
        "Basic !!not-base64!!",
    ],
    ids=["missing", "wrong-secret", "wrong-client-id", "not-form-encoded", "bearer-scheme", "malformed"],
)
@pytest.mark.parametrize("endpoint", ["/oauth/token", "/oauth/revoke", "/oauth/introspect"])
async def test_a_client_that_fails_to_authenticate_gets_401_invalid_client(
    console: Console, endpoint: str, authorization: str | None
) -> None:
    tokens = await console.pair()
    headers = {} if authorization is None else {"Authorization": authorization}
    form = {"token": tokens["access_token"], "grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]}
    answer = await console.client.post(endpoint, data=form, headers=headers)
    assert answer.status_code == 401
    assert answer.json()["error"] == "invalid_client"
    assert answer.headers["www-authenticate"].startswith("Basic ")  # RFC 6749 §5.2
    assert await console.active(tokens["access_token"])
    assert await console.active(tokens["refresh_token"])


async def test_a_second_client_authentication_method_in_the_body_is_refused(console: Console) -> None:
    answer = await console.token({"grant_type": TOKEN_EXCHANGE, "client_secret": SECRET})
    assert answer.status_code == 400
    assert answer.json()["error"] == "invalid_request"  # RFC 6749 §2.3: one method per request


def _exchange_form(signer: GatewaySigner, **changes: str | None) -> dict[str, str]:
    form: dict[str, str | None] = {
        "grant_type": TOKEN_EXCHANGE,
        "subject_token": signer.sign("gw-1"),
        "subject_token_type": JWT_TOKEN_TYPE,
        **changes,
    }
    return {name: value for name, value in form.items() if value is not None}


BAD_TOKEN_REQUESTS: dict[str, tuple[dict[str, str | None], str]] = {
    "no-grant-type": ({"grant_type": None}, "invalid_request"),
    "password-grant": ({"grant_type": "password"}, "unsupported_grant_type"),
    "client-credentials-grant": ({"grant_type": "client_credentials"}, "unsupported_grant_type"),
    "no-subject-token": ({"subject_token": None}, "invalid_request"),
    "no-subject-token-type": ({"subject_token_type": None}, "invalid_request"),
    "access-token-as-subject-type": ({"subject_token_type": ACCESS_TOKEN_TYPE}, "invalid_request"),
    "actor-token": ({"actor_token": "x", "actor_token_type": JWT_TOKEN_TYPE}, "invalid_request"),
    "id-token-requested": ({"requested_token_type": "urn:ietf:params:oauth:token-type:id_token"}, "invalid_request"),
    "unknown-scope": ({"scope": "console admin"}, "invalid_scope"),
}


@pytest.mark.parametrize("case", BAD_TOKEN_REQUESTS)
async def test_a_malformed_token_request_gets_its_rfc_error_code(console: Console, case: str) -> None:
    changes, code = BAD_TOKEN_REQUESTS[case]
    answer = await console.token(_exchange_form(console.signer, **changes))
    assert answer.status_code == 400
    assert answer.headers["content-type"] == "application/json"
    assert answer.json()["error"] == code
    assert console.oauth.tokens.exchanges == 0


async def test_a_repeated_parameter_is_invalid_request(console: Console) -> None:
    body = "&".join(f"{k}={quote_plus(v)}" for k, v in _exchange_form(console.signer).items()) + "&grant_type=x"
    headers = {**CLIENT, "Content-Type": "application/x-www-form-urlencoded"}
    answer = await console.client.post("/oauth/token", content=body, headers=headers)
    assert answer.status_code == 400
    assert answer.json()["error"] == "invalid_request"  # RFC 6749 §3.2


async def test_a_json_body_is_invalid_request(console: Console) -> None:
    answer = await console.client.post("/oauth/token", json=_exchange_form(console.signer), headers=CLIENT)
    assert answer.status_code == 400
    assert answer.json()["error"] == "invalid_request"


SUBJECT_TOKEN_ATTACKS: dict[str, Any] = {
    "assertion-for-another-console": lambda signer: signer.sign("gw-1", aud="phone"),
    "another-issuer": lambda signer: signer.sign("gw-1", iss="http://evil.test"),
    "expired": lambda signer: signer.sign("gw-1", exp=int(time.time()) - 120),
    "no-sub": lambda signer: signer.sign("gw-1", sub=None),
    "garbage": lambda signer: "not.a.jwt",
}


@pytest.mark.parametrize("attack", SUBJECT_TOKEN_ATTACKS)
async def test_a_subject_token_the_console_cannot_verify_is_refused(console: Console, attack: str) -> None:
    subject = SUBJECT_TOKEN_ATTACKS[attack](console.signer)
    answer = await console.token(_exchange_form(console.signer, subject_token=subject))
    assert answer.status_code == 400
    assert answer.json()["error"] == "invalid_request"  # RFC 8693 §2.2.2
    assert answer.json()["error_description"].startswith("subject_token rejected")
    assert console.oauth.tokens.exchanges == 0


async def test_a_refresh_rotates_and_the_used_refresh_token_is_refused_afterwards(console: Console) -> None:
    first = await console.pair()
    answer = await console.refresh(first["refresh_token"])
    assert answer.status_code == 200
    second = answer.json()
    assert second["refresh_token"] != first["refresh_token"]
    assert second["access_token"] != first["access_token"]
    assert (await console.page(second["access_token"])).status_code == 200
    assert not await console.active(first["refresh_token"])
    replayed = await console.refresh(first["refresh_token"])
    assert replayed.status_code == 400
    assert replayed.json()["error"] == "invalid_grant"


async def test_reusing_a_rotated_refresh_token_revokes_the_whole_grant(console: Console) -> None:
    first = await console.pair()
    second = (await console.refresh(first["refresh_token"])).json()
    await console.refresh(first["refresh_token"])
    # RFC 9700 §4.14.2: the reuse means one of the two holders is an attacker; neither keeps the grant.
    assert not await console.active(second["access_token"])
    assert not await console.active(second["refresh_token"])
    assert (await console.refresh(second["refresh_token"])).json()["error"] == "invalid_grant"


async def test_a_refresh_cannot_widen_the_scope(console: Console) -> None:
    tokens = await console.pair()
    answer = await console.refresh(tokens["refresh_token"], scope="console admin")
    assert answer.status_code == 400
    assert answer.json()["error"] == "invalid_scope"


async def test_an_unknown_refresh_token_is_invalid_grant(console: Console) -> None:
    tokens = await console.pair()
    for wrong in ("no-such-token", tokens["access_token"]):
        answer = await console.refresh(wrong)
        assert answer.status_code == 400
        assert answer.json()["error"] == "invalid_grant"


async def test_revoking_a_refresh_token_revokes_the_access_tokens_of_its_grant(console: Console) -> None:
    first = await console.pair()
    second = (await console.refresh(first["refresh_token"])).json()
    answer = await console.revoke(second["refresh_token"], token_type_hint="refresh_token")
    assert answer.status_code == 200
    for token in (first["access_token"], second["access_token"], second["refresh_token"]):
        assert not await console.active(token)
    page = await console.page(second["access_token"])
    assert page.status_code == 401
    assert 'error="invalid_token"' in page.headers["www-authenticate"]  # RFC 6750 §3.1
    [effect] = console.effects
    assert (effect.effect, effect.subject) == ("token_revoked", "alice")
    assert "2 live access tokens" in effect.detail


async def test_revoking_an_access_token_leaves_its_refresh_token_working(console: Console) -> None:
    tokens = await console.pair()
    assert (await console.revoke(tokens["access_token"])).status_code == 200
    assert not await console.active(tokens["access_token"])
    assert (await console.refresh(tokens["refresh_token"])).status_code == 200


async def test_a_wrong_token_type_hint_does_not_stop_a_revocation(console: Console) -> None:
    tokens = await console.pair()
    for hint in ("access_token", "id_token"):
        answer = await console.revoke(tokens["refresh_token"], token_type_hint=hint)
        assert answer.status_code == 200  # RFC 7009 §2.1: search further; §2.2: an invalid hint is ignored
    assert not await console.active(tokens["refresh_token"])


async def test_an_unknown_or_already_revoked_token_is_answered_200_without_an_effect(console: Console) -> None:
    tokens = await console.pair()
    await console.revoke(tokens["access_token"])
    for token in ("never-issued", tokens["access_token"]):
        assert (await console.revoke(token)).status_code == 200  # RFC 7009 §2.2
    assert len(console.oauth.effects.entries) == 1  # type: ignore[attr-defined]


async def test_a_replayed_idempotency_key_gets_the_original_answer_and_no_second_revocation(console: Console) -> None:
    tokens = await console.pair()
    key = {"Idempotency-Key": "run-7:chat:revoke:refresh"}
    first = await console.revoke(tokens["refresh_token"], key)
    again = await console.revoke(tokens["refresh_token"], key)
    assert (first.status_code, again.status_code) == (200, 200)
    assert console.oauth.replays == 1
    [effect] = console.effects
    assert effect.idempotency_key == "run-7:chat:revoke:refresh"


async def test_an_idempotency_key_reused_for_another_token_is_refused_and_revokes_nothing(console: Console) -> None:
    alice, bob = await console.pair(), await console.pair(sub="agent-bob", preferred_username="bob")
    key = {"Idempotency-Key": "run-7:chat:revoke"}
    await console.revoke(alice["access_token"], key)
    reused = await console.revoke(bob["access_token"], key)
    assert reused.status_code == 422
    assert reused.json()["error"] == "idempotency_key_reused"
    assert await console.active(bob["access_token"])


async def test_introspection_describes_a_live_token(console: Console) -> None:
    tokens = await console.pair()
    answer = await console.client.post("/oauth/introspect", data={"token": tokens["access_token"]}, headers=CLIENT)
    assert answer.headers["cache-control"] == "no-store"
    body = answer.json()
    assert {k: body[k] for k in ("active", "sub", "client_id", "token_type", "scope", "username")} == {
        "active": True,
        "sub": "agent-alice",
        "client_id": CLIENT_ID,
        "token_type": "Bearer",
        "scope": "console",
        "username": "alice",
    }
    assert body["exp"] - body["iat"] == 300


async def test_an_expired_access_token_is_inactive_and_refused_by_the_agent_routes(console: Console) -> None:
    tokens = await console.pair()
    console.oauth.tokens.clock = lambda: time.time() + 301
    answer = await console.client.post("/oauth/introspect", data={"token": tokens["access_token"]}, headers=CLIENT)
    assert answer.json() == {"active": False}  # RFC 7662 §2.2: nothing else about an inactive token
    page = await console.page(tokens["access_token"])
    assert page.status_code == 401
    assert 'error="invalid_token"' in page.headers["www-authenticate"]


async def test_an_agent_route_without_a_token_names_the_scheme_and_no_error(console: Console) -> None:
    page = await console.page(None)
    assert page.status_code == 401
    assert page.headers["www-authenticate"] == 'Bearer realm="console"'  # RFC 6750 §3.1


async def test_the_client_secret_itself_does_not_open_an_agent_route(console: Console) -> None:
    page = await console.page(SECRET)
    assert page.status_code == 401
    assert page.json()["error"] == "invalid_token"


async def test_a_token_presented_with_another_agents_assertion_is_refused(console: Console) -> None:
    bob = await console.pair(sub="agent-bob", preferred_username="bob")
    page = await console.page(bob["access_token"])  # the assertion says alice
    assert page.status_code == 401
    assert page.json()["error"] == "invalid_token"


async def test_a_live_token_without_the_gateway_assertion_is_refused(console: Console) -> None:
    tokens = await console.pair()
    answer = await console.client.get("/", headers={"Authorization": f"Bearer {tokens['access_token']}"})
    assert answer.status_code == 401
    assert answer.json()["error"] == "invalid_assertion"


async def test_the_effects_log_is_served_to_the_service_credential_only(console: Console) -> None:
    tokens = await console.pair()
    await console.revoke(tokens["refresh_token"], {"Idempotency-Key": "k-1"})
    refused = await console.client.get("/_effects")
    assert refused.status_code == 401
    served = await console.client.get("/_effects", headers={"Authorization": f"Bearer {SECRET}"})
    assert served.status_code == 200
    [effect] = served.json()["effects"]
    assert (effect["effect"], effect["subject"], effect["idempotency_key"]) == ("token_revoked", "alice", "k-1")


async def test_the_static_mode_serves_no_oauth_endpoints(signer: GatewaySigner, jwks_url: str) -> None:
    app = create_app("chat", SECRET, jwks_url, signer.issuer)
    headers = {"Authorization": f"Bearer {SECRET}", ASSERTION_HEADER: signer.sign("gw-1")}
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://console.test") as client:
        assert (await client.post("/oauth/token", headers=headers)).status_code == 404
        assert (await client.get("/", headers=headers)).status_code == 200
    assert not hasattr(app.state, "oauth")


async def test_the_command_line_serves_the_oauth_mode_with_the_chosen_token_lifetime(
    signer: GatewaySigner, jwks_url: str, tmp_path: Path
) -> None:
    args = {
        "channel": "chat",
        "credential": SECRET,
        "gateway-jwks": jwks_url,
        "gateway-issuer": signer.issuer,
        "auth": "oauth2",
        "token-lifetime": "45",
    }
    with demo_process("deploy.demo.consoles", args, tmp_path) as url:
        async with httpx.AsyncClient(base_url=url) as client:
            form = _exchange_form(signer)
            answer = await client.post("/oauth/token", data=form, headers=CLIENT)
            assert answer.status_code == 200
            assert answer.json()["expires_in"] == 45
            headers = {
                "Authorization": f"Bearer {answer.json()['access_token']}",
                ASSERTION_HEADER: signer.sign("gw-1"),
            }
            assert (await client.get("/", headers=headers)).status_code == 200
