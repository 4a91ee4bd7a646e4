"""The OIDC callback against a real provider: tampered, replayed and forged responses, fixation, cookies, redirects.

Every refused callback must be a 4xx page (never a 500), leave the browser signed out, and leave a
``login_failed`` record naming the check that failed (research items 3, 17, 20, 21; RFC 9700 §2.1, RFC 9207).
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Callable

import httpx
import pytest
import pytest_asyncio

from tests.components.browserless_login import complete_login, login_steps
from tests.components.login_gateway import (
    HTML,
    JSON,
    LoginGateway,
    login_gateway,
    provider_pool,
    with_query,
)
from tests.components.oidc_provider import DEMO_PASSWORD

pytestmark = [
    pytest.mark.oidc,
    pytest.mark.timeout(90),
    pytest.mark.asyncio(loop_scope="module"),
]

SESSION_COOKIE = "channelgate"
LOGIN_COOKIE = "channelgate-login"


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def gateway() -> AsyncIterator[LoginGateway]:
    with provider_pool() as pool:
        async with login_gateway(pool) as running:
            yield running


async def _signed_in(gateway: LoginGateway, client: httpx.AsyncClient, cookie: str | None = None) -> bool:
    headers = {**JSON, "Cookie": f"{SESSION_COOKIE}={cookie}"} if cookie is not None else JSON
    response = await client.get(gateway.url + "/chat/echo", headers=headers)
    assert response.status_code in (200, 401), response.text[:300]
    return response.status_code == 200


async def _fresh_login(
    gateway: LoginGateway, user: str = "alice", return_to: str = "/"
) -> tuple[httpx.AsyncClient, httpx.URL]:
    client = gateway.client()
    steps = await login_steps(gateway.url, user, DEMO_PASSWORD, return_to, client)
    return client, steps.callback_url


async def _assert_refused(gateway: LoginGateway, client: httpx.AsyncClient, response: httpx.Response, mark: int) -> str:
    """The callback was refused properly; returns the reason in its ``login_failed`` record."""
    assert 400 <= response.status_code < 500, (response.status_code, response.text[:300])
    assert response.headers["content-type"].startswith("text/html")
    assert SESSION_COOKIE not in response.cookies
    assert not await _signed_in(gateway, client)
    failed = await gateway.records_since(mark, "login_failed")
    assert len(failed) == 1, failed
    assert await gateway.records_since(mark, "login") == []
    return failed[0].reason or ""


#: What a tampered authorization response looks like → the reason the gateway must log.
Tamper = Callable[[httpx.URL, str], httpx.URL]
TAMPERED_RESPONSES: list[tuple[str, Tamper, str]] = [
    ("wrong state", lambda url, iss: with_query(url, state=secrets.token_urlsafe(32)), "state_mismatch"),
    ("empty state", lambda url, iss: with_query(url, state=""), "state_mismatch"),
    ("no state", lambda url, iss: with_query(url, state=None), "state_mismatch"),
    (
        "state repeated",
        lambda url, iss: url.copy_with(params=url.params.add("state", url.params["state"])),
        "repeated_parameter",
    ),
    (
        "code repeated",
        lambda url, iss: url.copy_with(params=url.params.add("code", "other-code")),
        "repeated_parameter",
    ),
    (
        "iss repeated",
        lambda url, iss: url.copy_with(params=url.params.add("iss", "https://evil.example")),
        "repeated_parameter",
    ),
    ("no code", lambda url, iss: with_query(url, code=None), "missing_code"),
    ("error=access_denied", lambda url, iss: with_query(url, code=None, error="access_denied"), "provider_error"),
    ("iss missing", lambda url, iss: with_query(url, iss=None), "iss_mismatch"),
    ("iss with a trailing slash", lambda url, iss: with_query(url, iss=iss + "/"), "iss_mismatch"),
    ("iss of another provider", lambda url, iss: with_query(url, iss="https://evil.example"), "iss_mismatch"),
    ("iss with a suffix", lambda url, iss: with_query(url, iss=iss + ".evil.example"), "iss_mismatch"),
]


@pytest.mark.parametrize(
    ("tamper", "reason"), [(t, r) for _, t, r in TAMPERED_RESPONSES], ids=[n for n, _, _ in TAMPERED_RESPONSES]
)
async def test_a_tampered_authorization_response_is_refused_logged_and_signs_nobody_in(
    gateway: LoginGateway, tamper: Tamper, reason: str
) -> None:
    client, callback = await _fresh_login(gateway)
    mark = await gateway.audit_mark()
    response = await complete_login(client, tamper(callback, gateway.provider.issuer))
    assert await _assert_refused(gateway, client, response, mark) == reason


async def test_a_callback_without_the_login_cookie_is_refused_as_not_started_here(gateway: LoginGateway) -> None:
    client, callback = await _fresh_login(gateway)
    client.cookies.clear()
    mark = await gateway.audit_mark()
    response = await complete_login(client, callback)
    assert await _assert_refused(gateway, client, response, mark) == "unknown_state"


async def test_a_callback_carried_to_another_browser_is_refused(gateway: LoginGateway) -> None:
    _, callback = await _fresh_login(gateway)
    victim = gateway.client()
    await victim.get(gateway.url + "/.channelgate/login")  # the victim has a login cookie of its own
    mark = await gateway.audit_mark()
    response = await complete_login(victim, callback)
    assert await _assert_refused(gateway, victim, response, mark) == "state_mismatch"


async def test_replaying_the_exact_callback_after_a_successful_login_is_refused(gateway: LoginGateway) -> None:
    client, callback = await _fresh_login(gateway)
    login_id = client.cookies[LOGIN_COOKIE]
    assert (await complete_login(client, callback)).is_redirect
    replayer = gateway.client()
    replayer.cookies.set(LOGIN_COOKIE, login_id)
    mark = await gateway.audit_mark()
    response = await complete_login(replayer, callback)
    assert await _assert_refused(gateway, replayer, response, mark) == "unknown_state"


async def test_a_redeemed_code_replayed_with_a_fresh_state_is_refused_by_the_provider(gateway: LoginGateway) -> None:
    first, used = await _fresh_login(gateway)
    assert (await complete_login(first, used)).is_redirect
    client, fresh = await _fresh_login(gateway)
    mark = await gateway.audit_mark()
    response = await complete_login(client, with_query(fresh, code=used.params["code"]))
    assert await _assert_refused(gateway, client, response, mark) == "token_error"
    [record] = await gateway.records_since(mark, "login_failed")
    assert "invalid_grant" in str(record.detail)


async def test_a_code_injected_into_another_browsers_login_fails_pkce(gateway: LoginGateway) -> None:
    _, stolen = await _fresh_login(gateway, "bob")
    client, own = await _fresh_login(gateway, "carol")
    mark = await gateway.audit_mark()
    response = await complete_login(client, with_query(own, code=stolen.params["code"]))
    assert await _assert_refused(gateway, client, response, mark) == "token_error"
    [record] = await gateway.records_since(mark, "login_failed")
    assert "invalid_grant" in str(record.detail)


async def test_a_planted_session_cookie_is_replaced_at_login_and_ended(gateway: LoginGateway) -> None:
    attacker = await gateway.login("bob")
    planted = attacker.cookies[SESSION_COOKIE]
    victim = gateway.client()
    victim.cookies.set(SESSION_COOKIE, planted)
    steps = await login_steps(gateway.url, "alice", DEMO_PASSWORD, "/", victim)
    response = await complete_login(victim, steps.callback_url)
    issued = response.cookies[SESSION_COOKIE]
    assert issued != planted
    assert not await _signed_in(gateway, gateway.client(), planted)
    assert not await _signed_in(gateway, attacker)
    assert await _signed_in(gateway, gateway.client(), issued)


async def test_an_unknown_planted_cookie_is_not_adopted_by_the_login(gateway: LoginGateway) -> None:
    planted = secrets.token_urlsafe(32)
    victim = gateway.client()
    victim.cookies.set(SESSION_COOKIE, planted)
    steps = await login_steps(gateway.url, "alice", DEMO_PASSWORD, "/", victim)
    issued = (await complete_login(victim, steps.callback_url)).cookies[SESSION_COOKIE]
    assert issued != planted
    assert not await _signed_in(gateway, gateway.client(), planted)


async def test_every_login_issues_a_new_session_id_and_ends_the_previous_one(gateway: LoginGateway) -> None:
    client = await gateway.login("alice")
    seen = [client.cookies[SESSION_COOKIE]]
    for _ in range(2):
        steps = await login_steps(gateway.url, "alice", DEMO_PASSWORD, "/", client)
        seen.append((await complete_login(client, steps.callback_url)).cookies[SESSION_COOKIE])
    assert len(set(seen)) == 3
    still_valid = [await _signed_in(gateway, gateway.client(), cookie) for cookie in seen]
    assert still_valid == [False, False, True]


def _set_cookie(response: httpx.Response, name: str) -> dict[str, str]:
    """The attributes of the ``Set-Cookie`` for ``name``, lower-cased (value under ``""``)."""
    for header in response.headers.get_list("set-cookie"):
        first, *attributes = (part.strip() for part in header.split(";"))
        cookie_name, _, value = first.partition("=")
        if cookie_name == name:
            parsed = {"": value}
            for attribute in attributes:
                key, _, attr_value = attribute.partition("=")
                parsed[key.lower()] = attr_value.lower()
            return parsed
    raise AssertionError(f"no Set-Cookie for {name}: {response.headers.get_list('set-cookie')}")


async def test_dev_mode_cookies_are_httponly_lax_host_only_on_path_root(gateway: LoginGateway) -> None:
    client = gateway.client()
    start = await client.get(gateway.url + "/.channelgate/login", params={"rd": "/chat/"})
    steps = await login_steps(gateway.url, "alice", DEMO_PASSWORD, "/", client)
    done = await complete_login(client, steps.callback_url)
    for response, name in ((start, LOGIN_COOKIE), (done, SESSION_COOKIE)):
        cookie = _set_cookie(response, name)
        assert "httponly" in cookie, name
        assert cookie["samesite"] == "lax", name
        assert cookie["path"] == "/", name
        assert "domain" not in cookie, name
        assert "secure" not in cookie, name  # dev mode on plain-http loopback only
    assert int(_set_cookie(done, SESSION_COOKIE)["max-age"]) == 12 * 3600
    cleared = _set_cookie(done, LOGIN_COOKIE)
    assert cleared["max-age"] == "0" or "expires" in cleared


#: Post-login targets an attacker may pass as ``rd``; after a full login the browser must land on ``/``.
OPEN_REDIRECTS = [
    "//evil.example/",
    "https://evil.example/",
    "/\\evil.example",
    "/%09/evil.example",
    "/%2f%2fevil.example",
    "javascript:alert(1)",
    "//evil.example@127.0.0.1/",
]


@pytest.mark.parametrize("rd", OPEN_REDIRECTS)
async def test_an_off_site_return_target_lands_on_the_home_page_after_login(gateway: LoginGateway, rd: str) -> None:
    client = gateway.client()
    steps = await login_steps(gateway.url, "alice", DEMO_PASSWORD, rd, client)
    response = await complete_login(client, steps.callback_url)
    assert response.status_code == 302
    assert response.headers["location"] == "/"


@pytest.mark.parametrize("rd", ["/chat/", "/chat/?q=1", "/mail/inbox?folder=a&page=2"])
async def test_a_same_site_return_target_is_kept_through_the_login(gateway: LoginGateway, rd: str) -> None:
    client = gateway.client()
    steps = await login_steps(gateway.url, "alice", DEMO_PASSWORD, rd, client)
    response = await complete_login(client, steps.callback_url)
    assert response.headers["location"] == rd
    page = await client.get(gateway.url + rd, headers=HTML)
    assert page.status_code == 200
