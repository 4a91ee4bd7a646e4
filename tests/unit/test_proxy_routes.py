"""Route matching: host-bound routes first, then the longest prefix; ``/chat`` redirects to ``/chat/``."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.proxy import RouteTable, upstream_path, upstream_url
from gateway.proxy.routes import RouteCaseMismatch
from gateway.settings import RouteSettings


def route(prefix: str, channel: str, **kwargs: Any) -> RouteSettings:
    return RouteSettings.model_validate(
        {"channel": channel, "prefix": prefix, "upstream": "http://127.0.0.1:9000", **kwargs}
    )


TABLE = RouteTable(
    [
        route("/", "root"),
        route("/chat/", "chat"),
        route("/chat/admin/", "chat-admin"),
        route("/voice/", "voice-host", host="voice.example.com"),
        route("/", "voice-root", host="voice.example.com"),
        route("/mail/", "mail-port", host="mail.example.com:8443"),
    ]
)


@pytest.mark.parametrize(
    ("host", "path", "channel", "redirect"),
    [
        (None, "/chat/inbox", "chat", False),
        (None, "/chat/", "chat", False),
        (None, "/chat/admin/users", "chat-admin", False),
        (None, "/chatroom", "root", False),
        (None, "/chat", "chat", True),
        (None, "/chat/admin", "chat-admin", True),
        ("other.example.com", "/voice/x", "root", False),
        ("voice.example.com", "/voice/x", "voice-host", False),
        ("VOICE.example.com.", "/voice/x", "voice-host", False),
        ("voice.example.com:443", "/voice/x", "voice-host", False),
        ("voice.example.com", "/chat/inbox", "voice-root", False),
        ("mail.example.com:8443", "/mail/x", "mail-port", False),
        ("mail.example.com", "/mail/x", "root", False),
    ],
)
def test_host_bound_routes_win_then_the_longest_prefix(
    host: str | None, path: str, channel: str, redirect: bool
) -> None:
    match = TABLE.match(host, path)
    assert match is not None
    assert (match.route.channel, match.redirect) == (channel, redirect)


def test_a_path_without_its_trailing_slash_redirects_to_the_prefix() -> None:
    match = TABLE.match(None, "/chat")
    assert match is not None
    assert match.redirect
    assert match.location == "/chat/"


def test_no_route_matches_when_nothing_covers_the_path() -> None:
    table = RouteTable([route("/chat/", "chat")])
    assert table.match(None, "/voice/") is None
    assert table.match(None, "/") is None


def test_strip_prefix_keeps_a_leading_slash_and_joins_the_upstream_base_path() -> None:
    table = RouteTable([route("/chat/", "chat", upstream="http://127.0.0.1:9000/console/")])
    match = table.match(None, "/chat/inbox/1")
    assert match is not None
    assert upstream_path(match, "/chat/inbox/1") == "/inbox/1"
    assert upstream_path(match, "/chat/") == "/"
    assert upstream_url(match, "/chat/inbox/1", "a=1") == "http://127.0.0.1:9000/console/inbox/1?a=1"


def test_without_strip_prefix_the_upstream_sees_the_full_path() -> None:
    table = RouteTable([route("/chat/", "chat", strip_prefix=False)])
    match = table.match(None, "/chat/inbox")
    assert match is not None
    assert upstream_path(match, "/chat/inbox") == "/chat/inbox"
    assert upstream_url(match, "/chat/inbox") == "http://127.0.0.1:9000/chat/inbox"


@pytest.mark.parametrize(
    ("host", "path"),
    [
        (None, "/chat/ADMIN/users"),  # would be chat's, not chat-admin's
        (None, "/Chat/Admin"),  # chat-admin's redirect, spelled otherwise
        (None, "/CHAT/inbox"),  # would be root's, not chat's
        ("voice.example.com", "/VOICE/x"),  # would be voice-root's, not voice-host's
    ],
)
def test_a_path_spelling_a_better_routes_prefix_in_other_letters_is_refused(host: str | None, path: str) -> None:
    """A case-insensitive console serves /chat/ADMIN/ as /chat/admin/: deciding it under /chat/ would let a chat
    agent into the admin console. Refused (400) rather than folded, so that the route decided is the one nginx's
    case-sensitive ``location`` forwards to."""
    with pytest.raises(RouteCaseMismatch) as refused:
        TABLE.match(host, path)
    assert refused.value.status == 400


@pytest.mark.parametrize(
    ("host", "path", "channel"),
    [
        (None, "/chatroom/ADMIN/", "root"),  # no better route matches it in any spelling
        ("other.example.com", "/VOICE/x", "root"),  # the voice routes are another host's
        ("mail.example.com", "/MAIL/x", "root"),  # mail-port is bound to another port
    ],
)
def test_a_path_no_better_route_matches_in_any_spelling_keeps_its_route(
    host: str | None, path: str, channel: str
) -> None:
    match = TABLE.match(host, path)
    assert match is not None and match.route.channel == channel


def test_a_table_without_nested_prefixes_matches_case_sensitively_as_before() -> None:
    table = RouteTable([route("/chat/", "chat"), route("/crm/", "crm")])
    assert table.match(None, "/CRM/x") is None
    match = table.match(None, "/crm/EXPORTS/all.csv")
    assert match is not None and match.route.channel == "crm"
