"""The path the gateway decides on is the path the upstream sees: ambiguous spellings are refused."""

from __future__ import annotations

import pytest

from gateway.errors import BadRequest
from gateway.proxy import normalise_path, strip_query_values

REFUSED = [
    ("/a/../b", "'..' segment"),
    ("/a/./b", "'.' segment"),
    ("/a/..", "trailing '..'"),
    ("/a/%2e%2e/b", "encoded dot-segment"),
    ("/a/%2E%2e/b", "mixed-case encoded dot-segment"),
    ("/a/.%2e/b", "half-encoded dot-segment (CVE-2021-41773)"),
    ("/a/%2e./b", "half-encoded dot-segment"),
    ("/a%2fb", "encoded slash"),
    ("/a%2Fb", "upper-case encoded slash"),
    ("/a%5cb", "encoded backslash"),
    ("/a\\b", "literal backslash"),
    ("/a/..\\b", "backslash traversal"),
    ("/a;x=1/b", "matrix parameter"),
    ("/a/..;/b", "Tomcat ..;/ traversal"),
    ("/a%3bb", "encoded semicolon (CVE-2020-13933)"),
    ("/%00", "encoded NUL"),
    ("/a\x00b", "literal NUL"),
    ("/a%0d%0aSet-Cookie:x", "encoded CRLF"),
    ("/a\tb", "literal tab"),
    ("/a%7f", "encoded DEL"),
    ("/%252e%252e/admin", "double-encoded dot-segment (CVE-2021-42013)"),
    ("/a%252fb", "double-encoded slash (CVE-2020-11989)"),
    ("/%%32%65%%32%65/", "invalid escape used for double decoding"),
    ("/%u002e%u002e/", "IIS %u escape"),
    ("/a%", "truncated escape"),
    ("/a%g0", "non-hex escape"),
    ("/a/%EF%BC%8E%EF%BC%8E/b", "fullwidth dots become '..' under NFKC"),
    ("/a/%EF%BC%8Fb", "fullwidth solidus becomes '/' under NFKC"),
    ("/a#frag", "fragment"),
    ("/a?b", "query in the path"),
    ("a/b", "relative path"),
    ("", "empty path"),
]

NORMALISED: list[tuple[str | bytes, str]] = [
    ("/", "/"),
    ("/chat/", "/chat/"),
    ("//a", "/a"),
    ("/a//b///c/", "/a/b/c/"),
    ("/%7euser/%41%62", "/~user/Ab"),
    ("/a%2db%5Fc%2E", "/a-b_c."),
    ("/caf\u00e9", "/caf%C3%A9"),
    (b"/caf\xc3\xa9", "/caf%C3%A9"),
    ("/caf%c3%a9", "/caf%C3%A9"),
    ("/\u4e2d\u6587", "/%E4%B8%AD%E6%96%87"),
    ("/a b", "/a%20b"),
    ("/a%20b", "/a%20b"),
    ("/a%23b", "/a%23b"),
    ("/a%3fb", "/a%3Fb"),
    ("/a/...", "/a/..."),
    ("/a/.well-known", "/a/.well-known"),
    ("/a/b..c", "/a/b..c"),
    ("/a:b@c!$&'()*+,=", "/a:b@c!$&'()*+,="),
    ("/100%25", "/100%25"),
]


@pytest.mark.parametrize(("raw", "why"), REFUSED, ids=[why for _, why in REFUSED])
def test_ambiguous_paths_are_refused_with_bad_request(raw: str, why: str) -> None:
    with pytest.raises(BadRequest) as caught:
        normalise_path(raw)
    assert caught.value.status == 400
    assert caught.value.message.startswith("The request path was refused")


@pytest.mark.parametrize(("raw", "expected"), NORMALISED)
def test_unambiguous_paths_are_normalised_to_one_canonical_spelling(raw: str | bytes, expected: str) -> None:
    assert normalise_path(raw) == expected


def test_raw_bytes_and_text_of_the_same_path_normalise_identically() -> None:
    assert normalise_path(b"/chat/%7Eagent//inbox") == normalise_path("/chat/%7eagent/inbox") == "/chat/~agent/inbox"


def test_normalisation_is_idempotent_so_the_upstream_sees_what_was_decided() -> None:
    for raw, _ in NORMALISED:
        once = normalise_path(raw)
        assert normalise_path(once) == once


@pytest.mark.parametrize(
    ("path", "query", "expected"),
    [
        ("/a", "", "/a"),
        ("/a", "token=secret&page=2", "/a?token&page"),
        ("/a", "flag", "/a?flag"),
        ("/a", "a=1&&b=", "/a?a&b"),
        ("/a", "=x", "/a"),
        ("/a", "k%20y=v", "/a?k%20y"),
        ("/a", "evil\r\nline=1", "/a?evil%0D%0Aline"),
    ],
)
def test_access_log_path_keeps_query_keys_but_never_values(path: str, query: str, expected: str) -> None:
    assert strip_query_values(path, query) == expected


def test_a_path_longer_than_the_limit_is_a_414_before_any_work() -> None:
    from gateway.proxy.paths import MAX_PATH_BYTES, PathTooLong

    assert normalise_path(b"/chat/" + b"a" * (MAX_PATH_BYTES - 6)).startswith("/chat/aaa")
    with pytest.raises(PathTooLong) as refused:
        normalise_path(b"/chat/" + b"a" * MAX_PATH_BYTES)
    assert refused.value.status == 414


def test_only_short_paths_are_cached_so_anonymous_long_paths_pin_no_memory() -> None:
    from gateway.proxy import paths

    paths._normalise_cached.cache_clear()
    for n in range(50):
        assert normalise_path(f"/chat/{n}/".encode() + b"x" * 2000) == f"/chat/{n}/" + "x" * 2000
    assert paths._normalise_cached.cache_info().currsize == 0
    normalise_path(b"/chat/inbox")
    assert paths._normalise_cached.cache_info().currsize == 1


def test_the_logged_path_is_bounded_whatever_the_request_spells() -> None:
    from gateway.proxy.paths import MAX_LOGGED_PATH

    logged = strip_query_values("/chat/" + "p" * 3000, "&".join(f"k{n}=v" for n in range(500)))
    assert len(logged) == MAX_LOGGED_PATH and logged.endswith("...(cut)")
    assert strip_query_values("/chat/x", "a=1&b=2") == "/chat/x?a&b"
