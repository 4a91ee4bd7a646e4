"""The console's pure rules: roles from groups, the CSRF token and origin checks, the search form and its cursor."""

from __future__ import annotations

import base64
import secrets
from datetime import UTC, datetime

import pytest

from gateway.audit.search import encode_cursor
from gateway.console.access import Role, role_of
from gateway.console.csrf import CsrfRejected, check_token, csrf_key, origin_of, refuse_cross_site, token_for
from gateway.console.filters import PAGE_SIZE, read_form
from gateway.console.settings import ConsoleSettings
from gateway.errors import BadRequest
from gateway.settings import Settings
from gateway.storage.access_log import AccessRecord

CONSOLE = ConsoleSettings(reviewer_groups=("auditors", "security"), admin_groups=("gateway-admins",))


@pytest.mark.parametrize(
    ("groups", "role"),
    [
        ({"auditors"}, Role.REVIEWER),
        ({"security", "chat-agents"}, Role.REVIEWER),
        ({"gateway-admins"}, Role.ADMIN),
        ({"gateway-admins", "auditors"}, Role.ADMIN),
        ({"chat-agents"}, None),
        (set(), None),
        ({"Gateway-Admins"}, None),  # group names compare exactly, as the IdP sends them
    ],
)
def test_the_role_is_the_highest_one_the_groups_grant(groups: set[str], role: Role | None) -> None:
    assert role_of(frozenset(groups), CONSOLE) == role


def test_no_configured_group_grants_no_role() -> None:
    assert role_of(frozenset({"gateway-admins"}), ConsoleSettings()) is None


def _settings(vault_key: str | None) -> Settings:
    vault = {"keys": {"k1": vault_key}, "active_key": "k1"} if vault_key else {}
    return Settings.model_validate(
        {
            "server": {"public_url": "https://gw.example.com"},
            "oidc": {"issuer": "https://idp.example.com", "client_id": "c", "client_secret": "s"},
            "vault": vault,
        }
    )


def test_every_replica_derives_the_same_token_key_from_the_shared_vault_key_and_it_is_not_the_vault_key() -> None:
    vault_key = base64.b64encode(secrets.token_bytes(32)).decode()
    one, two = csrf_key(_settings(vault_key)), csrf_key(_settings(vault_key))
    assert one == two
    assert one != base64.b64decode(vault_key) and one != vault_key.encode()
    assert csrf_key(_settings(base64.b64encode(secrets.token_bytes(32)).decode())) != one


def test_a_token_verifies_for_its_own_session_only() -> None:
    key = secrets.token_bytes(32)
    mine, theirs = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
    token = token_for(key, mine)
    assert mine not in token
    check_token(key, mine, token)
    for presented in (None, "", token_for(key, theirs), token_for(secrets.token_bytes(32), mine), token + "x"):
        with pytest.raises(CsrfRejected):
            check_token(key, mine, presented)


@pytest.mark.parametrize(
    ("url", "origin"),
    [
        ("https://gw.example.com/", "https://gw.example.com"),
        ("https://GW.example.com:443", "https://gw.example.com"),
        ("http://127.0.0.1:8080/x", "http://127.0.0.1:8080"),
        ("http://[::1]:80", "http://[::1]"),
    ],
)
def test_origins_are_compared_in_their_serialised_form(url: str, origin: str) -> None:
    assert origin_of(url) == origin


PUBLIC = "https://gw.example.com"


@pytest.mark.parametrize(
    "headers",
    [
        {"sec-fetch-site": "same-origin"},
        {"sec-fetch-site": "same-origin", "origin": "null"},  # Chromium under Referrer-Policy: no-referrer
        {"origin": "https://gw.example.com"},
        {},  # not a browser: left to the token
    ],
)
def test_same_origin_requests_pass_the_metadata_check(headers: dict[str, str]) -> None:
    refuse_cross_site(headers, PUBLIC)


@pytest.mark.parametrize(
    "headers",
    [
        {"sec-fetch-site": "cross-site"},
        {"sec-fetch-site": "same-site"},
        {"sec-fetch-site": "none"},
        {"sec-fetch-site": "cross-site", "origin": PUBLIC},
        {"origin": "https://evil.example"},
        {"origin": "https://gw.example.com.evil.example"},
        {"origin": "http://gw.example.com"},
        {"origin": "null"},
    ],
)
def test_cross_origin_requests_are_refused_by_the_metadata_check(headers: dict[str, str]) -> None:
    with pytest.raises(CsrfRejected):
        refuse_cross_site(headers, PUBLIC)


def test_the_search_form_reads_filters_and_utc_times_and_links_the_next_page_with_the_shared_cursor() -> None:
    form = read_form({"agent": " alice ", "action": "download", "since": "2026-11-01T00:00", "until": "", "x": "1"})
    assert form.values["agent"] == "alice" and form.values["until"] == ""
    search = form.search
    assert search.filters == {"agent": "alice", "action": "download"} and search.until is None
    assert search.since == datetime(2026, 11, 1, tzinfo=UTC)
    assert search.limit == PAGE_SIZE + 1 and search.before is None  # one more than a page: is there a next one?
    record = AccessRecord(time=datetime(2026, 11, 3, 9, 0, 0, 123456, tzinfo=UTC), kind="request", seq=42)
    params = form.next_page(record)
    assert params == {
        "agent": "alice",
        "action": "download",
        "since": "2026-11-01T00:00",
        "before": encode_cursor(record),
    }
    assert read_form(params).search.before == (record.time, 42)


def _cursor(raw: str) -> str:
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"since": "yesterday"}, "since"),
        ({"until": "2026-13-01T00:00"}, "until"),
        ({"since": "2026-11-02T00:00", "until": "2026-11-01T00:00"}, "since"),
        ({"before": "2026-11-01T00:00:00+00:00_5"}, "before"),  # the console's former cursor
        ({"before": _cursor("2026-11-01T00:00:00/5")}, "before"),  # a time without an offset
        ({"before": _cursor("2026-11-01T00:00:00+00:00/x")}, "before"),
        ({"subject": "x" * 300}, "subject"),
        ({"subject": "C-1\tkind=login"}, "subject"),
        ({"action": "delete"}, "action"),
    ],
)
def test_a_bad_search_form_is_refused_naming_what_to_fix(params: dict[str, str], field: str) -> None:
    with pytest.raises(BadRequest, match=field):
        read_form(params)
