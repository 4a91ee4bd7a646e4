"""The server-side cookie jar of the cookie-jar connector: RFC 6265 parsing, storage and the Cookie header."""

from __future__ import annotations

import calendar

import pytest

from connectors.console_cookies import (
    MAX_COOKIES,
    CookieJar,
    parse_cookie_date,
    parse_set_cookie,
    path_matches,
)

NOW = 1_700_000_000.0
CONSOLE = "http://127.0.0.1:8103/inbox"
ORIGIN = "http://127.0.0.1:8103"


def _jar(*lines: str, now: float = NOW) -> CookieJar:
    return CookieJar().merge(lines, now)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Sun, 06 Nov 1994 08:49:37 GMT", (1994, 11, 6, 8, 49, 37)),  # RFC 1123 (IMF-fixdate)
        ("Sunday, 06-Nov-94 08:49:37 GMT", (1994, 11, 6, 8, 49, 37)),  # RFC 850
        ("Sun Nov  6 08:49:37 1994", (1994, 11, 6, 8, 49, 37)),  # asctime
        ("Thu, 01 Jan 1970 00:00:00 GMT", (1970, 1, 1, 0, 0, 0)),
        ("Wed, 09 Jun 21 10:18:14 GMT", (2021, 6, 9, 10, 18, 14)),  # two digits, 0-69: 20xx
        ("Wed, 09 Jun 70 10:18:14 GMT", (1970, 6, 9, 10, 18, 14)),  # two digits, 70-99: 19xx
    ],
)
def test_cookie_dates_in_every_format_servers_send_parse_as_rfc_6265_says(text: str, expected: tuple[int, ...]) -> None:
    assert parse_cookie_date(text) == calendar.timegm((*expected, 0, 0, 0))


@pytest.mark.parametrize(
    "text",
    ["", "tomorrow", "Sun, 31 Feb 2021 08:49:37 GMT", "Sun, 06 Nov 1994 24:00:00 GMT", "06 Nov 1600 08:49:37"],
)
def test_a_date_that_does_not_exist_or_does_not_parse_is_ignored(text: str) -> None:
    assert parse_cookie_date(text) is None


def test_a_set_cookie_line_gives_name_value_path_and_flags() -> None:
    cookie = parse_set_cookie("legacy_session=abc123; Path=/app; Secure; HttpOnly; SameSite=Lax", NOW)
    assert cookie is not None
    assert (cookie.name, cookie.value, cookie.path, cookie.secure, cookie.expires) == (
        "legacy_session",
        "abc123",
        "/app",
        True,
        None,
    )


@pytest.mark.parametrize(
    "line",
    ["no-equals-sign", "=value-without-name", "bad name=1", "a=b\x00c", "a=b\x7f", "a=" + "x" * 5000],
)
def test_a_line_rfc_6265_says_to_ignore_stores_nothing(line: str) -> None:
    assert parse_set_cookie(line, NOW) is None
    assert _jar(line).cookies == ()


@pytest.mark.parametrize("path", ["", "relative/path"])
def test_a_missing_or_relative_path_falls_back_to_the_default_path(path: str) -> None:
    cookie = parse_set_cookie(f"a=1; Path={path}", NOW)
    assert cookie is not None and cookie.path == "/"


def test_max_age_wins_over_expires() -> None:
    cookie = parse_set_cookie("a=1; Expires=Thu, 01 Jan 1970 00:00:00 GMT; Max-Age=60", NOW)
    assert cookie is not None and cookie.expires == NOW + 60


def test_a_cookie_of_the_same_name_and_path_replaces_the_old_one_and_keeps_its_place() -> None:
    jar = _jar("first=1", "session=old")
    jar = jar.merge(["session=new"], NOW + 10)
    assert jar.header(CONSOLE, NOW + 10, origin=ORIGIN) == "first=1; session=new"
    assert [c.created for c in jar.cookies] == [NOW, NOW]


def test_the_same_name_on_another_path_is_another_cookie() -> None:
    jar = _jar("s=root; Path=/", "s=inbox; Path=/inbox")
    assert jar.header(CONSOLE, NOW, origin=ORIGIN) == "s=inbox; s=root"  # §5.4: the longer path first
    assert jar.header("http://127.0.0.1:8103/other", NOW, origin=ORIGIN) == "s=root"


@pytest.mark.parametrize(
    "deletion",
    ["session=; Max-Age=0", "session=gone; Max-Age=-1", "session=; Expires=Thu, 01 Jan 1970 00:00:00 GMT"],
)
def test_max_age_zero_or_a_past_expiry_deletes_the_cookie(deletion: str) -> None:
    jar = _jar("session=abc", "theme=dark").merge([deletion], NOW + 1)
    assert jar.header(CONSOLE, NOW + 1, origin=ORIGIN) == "theme=dark"
    assert jar.live(NOW + 1)
    assert not _jar("session=abc").merge([deletion], NOW + 1).live(NOW + 1)


def test_a_cookie_past_its_expiry_is_no_longer_sent_and_the_jar_is_spent() -> None:
    jar = _jar("session=abc; Max-Age=60")
    assert jar.header(CONSOLE, NOW + 59, origin=ORIGIN) == "session=abc"
    assert jar.header(CONSOLE, NOW + 60, origin=ORIGIN) == ""
    assert not jar.live(NOW + 60)


@pytest.mark.parametrize(
    ("cookie_path", "request_path", "matches"),
    [
        ("/", "/anything", True),
        ("/docs", "/docs", True),
        ("/docs", "/docs/", True),
        ("/docs", "/docs/web", True),
        ("/docs/", "/docs/web", True),
        ("/docs", "/docsets", False),
        ("/docs/", "/docs", False),
        ("/docs", "/", False),
    ],
)
def test_path_match_follows_rfc_6265_5_1_4(cookie_path: str, request_path: str, matches: bool) -> None:
    assert path_matches(cookie_path, request_path) is matches


@pytest.mark.parametrize(
    ("url", "sent"),
    [
        ("https://console.example/", True),
        ("http://console.example/", False),
        ("http://127.0.0.1:8103/", True),
        ("http://localhost:8103/", True),
    ],
)
def test_a_secure_cookie_goes_only_over_https_or_to_loopback(url: str, sent: bool) -> None:
    assert (_jar("s=1; Secure").header(url, NOW, origin=url) == "s=1") is sent


def test_a_console_cannot_grow_the_jar_beyond_its_limit() -> None:
    jar = _jar(*(f"c{i}=v" for i in range(MAX_COOKIES + 10)))
    assert len(jar.cookies) == MAX_COOKIES
    assert jar.cookies[-1].name == f"c{MAX_COOKIES + 9}"


def test_a_jar_survives_storage_unchanged() -> None:
    jar = _jar("a=1; Path=/x; Secure; Max-Age=100", "b=2")
    assert CookieJar.loads(jar.dumps()) == jar


def test_no_representation_of_a_jar_or_cookie_shows_a_value() -> None:
    jar = _jar("legacy_session=s3cr3t-session-value")
    assert "s3cr3t" not in repr(jar) + str(jar) + repr(jar.cookies) + f"{jar.cookies[0]}"


@pytest.mark.parametrize(
    "url",
    [
        "http://files.cdn.example/inbox",  # another host
        "https://127.0.0.1:8103/inbox",  # another scheme
        "http://127.0.0.1:8104/inbox",  # another port
        "http://127.0.0.1.evil.example:8103/inbox",
    ],
)
def test_the_jar_gives_no_cookie_for_a_url_on_another_origin_than_its_consoles(url: str) -> None:
    assert _jar("session=abc").header(url, NOW, origin=ORIGIN) == ""


@pytest.mark.parametrize(
    ("url", "origin"),
    [
        ("http://127.0.0.1:8103/inbox", "http://127.0.0.1:8103/"),
        ("https://Console.Example/x", "https://console.example:443"),
    ],
)
def test_the_same_origin_written_another_way_still_gets_the_jar(url: str, origin: str) -> None:
    assert _jar("session=abc").header(url, NOW, origin=origin) == "session=abc"
