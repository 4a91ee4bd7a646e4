"""Session ids and the cookies the login endpoints set (research items 1–2; ASVS 7.2.3, 3.3.1–3.3.4).

Ids come from the CSPRNG with at least 128 bits; in secure mode the cookie is ``__Host-`` prefixed, Secure,
HttpOnly, SameSite=Lax, Path=/ and host-only, so a sibling subdomain cannot plant or read it (RFC 6265bis
§4.1.3.2). Dev mode (plain-http loopback) only drops Secure and therefore the prefix.
"""

from __future__ import annotations

import base64

import pytest
from pydantic import ValidationError
from starlette.responses import Response

from gateway.sessions.base import new_session_id, session_key
from gateway.sessions.cookies import CookiePolicy
from gateway.settings import ServerSettings

SAMPLES = 10_000


def test_ten_thousand_session_ids_are_unique_and_carry_at_least_128_bits() -> None:
    ids = [new_session_id() for _ in range(SAMPLES)]
    assert len(set(ids)) == SAMPLES
    for session_id in ids:
        raw = base64.urlsafe_b64decode(session_id + "=" * (-len(session_id) % 4))
        assert len(raw) * 8 >= 128
    assert len(set().union(*map(set, ids))) == 64  # the whole base64url alphabet: no narrowed generator


def test_a_session_id_is_stored_only_as_its_hash() -> None:
    session_id = new_session_id()
    assert session_id not in session_key(session_id)
    assert session_key(session_id) == session_key(session_id)


def _attributes(response: Response) -> dict[str, dict[str, str]]:
    cookies: dict[str, dict[str, str]] = {}
    for name, value in response.raw_headers:
        if name != b"set-cookie":
            continue
        first, *rest = (part.strip() for part in value.decode().split(";"))
        cookie_name, _, cookie_value = first.partition("=")
        parsed = {"": cookie_value}
        for attribute in rest:
            key, _, attr = attribute.partition("=")
            parsed[key.lower()] = attr.lower()
        cookies[cookie_name] = parsed
    return cookies


@pytest.mark.parametrize(
    ("secure", "session_name", "login_name"),
    [(True, "__Host-channelgate", "__Host-channelgate-login"), (False, "channelgate", "channelgate-login")],
    ids=["secure", "dev"],
)
def test_cookies_are_httponly_lax_host_only_on_path_root_and_secure_unless_dev(
    secure: bool, session_name: str, login_name: str
) -> None:
    policy = CookiePolicy(secure=secure)
    assert (policy.session_name, policy.login_name) == (session_name, login_name)
    response = Response()
    policy.set(response, policy.session_name, "session-value", max_age=3600)
    policy.set(response, policy.login_name, "login-value", max_age=600)
    cookies = _attributes(response)
    assert set(cookies) == {session_name, login_name}
    for cookie in cookies.values():
        assert "httponly" in cookie
        assert cookie["samesite"] == "lax"
        assert cookie["path"] == "/"
        assert "domain" not in cookie
        assert ("secure" in cookie) is secure
    assert cookies[session_name]["max-age"] == "3600"


@pytest.mark.parametrize("secure", [True, False], ids=["secure", "dev"])
def test_clearing_a_cookie_expires_it_with_the_same_name_path_and_flags(secure: bool) -> None:
    policy = CookiePolicy(secure=secure)
    response = Response()
    policy.clear(response, policy.session_name)
    cleared = _attributes(response)[policy.session_name]
    assert cleared[""] in ("", '""')
    assert cleared["max-age"] == "0"
    assert cleared["path"] == "/"
    assert "domain" not in cleared
    assert ("secure" in cleared) is secure


def test_secure_cookies_need_an_https_public_url_and_dev_cookies_a_loopback_one() -> None:
    with pytest.raises(ValidationError, match="insecure_dev_cookies"):
        ServerSettings(public_url="http://gateway.example", insecure_dev_cookies=False)
    with pytest.raises(ValidationError, match="loopback"):
        ServerSettings(public_url="http://gateway.example", insecure_dev_cookies=True)
    secure = ServerSettings(public_url="https://gateway.example")
    assert CookiePolicy(secure=not secure.insecure_dev_cookies).session_name == "__Host-channelgate"
