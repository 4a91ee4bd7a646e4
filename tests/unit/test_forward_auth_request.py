"""What /.channelgate/auth believes about the request a proxy asks about: nginx's and Traefik's headers at the
endpoint itself, Envoy's ext_authz request line (``path_prefix`` + the original path, the original method, query
and Host, as Envoy 1.40 sends them), and the descriptions it refuses to judge."""

from __future__ import annotations

import pytest
from starlette.requests import Request

from gateway.forward_auth import MOUNT, OriginalRequest, answer_mode


def request(
    method: str = "GET", raw_path: str = MOUNT, query: str = "", headers: dict[str, str] | None = None
) -> Request:
    raw = raw_path.encode("latin-1")
    return Request(
        {
            "type": "http",
            "method": method,
            "path": raw_path,
            "raw_path": raw,
            "query_string": query.encode("latin-1"),
            "headers": [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()],
        }
    )


def test_nginx_describes_the_request_in_x_original_headers() -> None:
    asked = request(
        headers={"X-Original-URI": "/phone/x?y=1", "X-Original-Method": "post", "X-Forwarded-Host": "consoles"}
    )
    original = OriginalRequest(asked)
    assert (original.method, original.path, original.query, original.host) == ("POST", "/phone/x", "y=1", "consoles")
    assert original.problem is None and not original.envoy
    assert answer_mode(asked, original) == ""


def test_traefik_describes_the_request_in_x_forwarded_headers_and_asks_for_redirects_in_the_query() -> None:
    asked = request(
        query="mode=redirect",
        headers={"X-Forwarded-Uri": "/phone/", "X-Forwarded-Method": "DELETE", "X-Forwarded-Host": "consoles"},
    )
    original = OriginalRequest(asked)
    assert (original.method, original.uri, original.host) == ("DELETE", "/phone/", "consoles")
    assert original.problem is None
    assert answer_mode(asked, original) == "redirect"


def test_envoy_sends_the_original_request_line_after_the_prefix_and_its_query_is_the_consoles() -> None:
    asked = request(
        "POST",
        MOUNT + "/phone/notes",
        query="mode=explain&a=%2F",
        headers={"Host": "consoles.example.com", "X-Channelgate-Auth-Mode": "redirect"},
    )
    original = OriginalRequest(asked)
    assert original.envoy and original.problem is None
    assert (original.method, original.path, original.query) == ("POST", "/phone/notes", "mode=explain&a=%2F")
    assert original.uri == "/phone/notes?mode=explain&a=%2F"  # the login comes back to it, query and all
    assert original.host == "consoles.example.com"
    assert answer_mode(asked, original) == "redirect"  # from Envoy's headers_to_add, never from the query


def test_in_envoys_form_a_query_named_mode_is_not_a_mode() -> None:
    asked = request("GET", MOUNT + "/phone/", query="mode=explain")
    assert answer_mode(asked, OriginalRequest(asked)) == ""


def test_in_envoys_form_headers_describing_another_request_are_ignored() -> None:
    forged = {
        "Host": "consoles",
        "X-Original-URI": "/chat/",
        "X-Original-Method": "GET",
        "X-Forwarded-Uri": "/chat/",
        "X-Forwarded-Method": "GET",
        "X-Forwarded-Host": "elsewhere",
    }
    original = OriginalRequest(request("PUT", MOUNT + "/phone/", headers=forged))
    assert (original.method, original.path, original.host) == ("PUT", "/phone/", "consoles")
    assert original.problem is None


@pytest.mark.parametrize(
    ("headers", "problem"),
    [
        ({}, "did not say which request"),
        ({"X-Original-URI": "/phone/", "X-Forwarded-Uri": "/chat/"}, "describe different requests"),
        ({"X-Original-URI": "/phone/", "X-Forwarded-Uri": "/Phone/"}, "describe different requests"),
        (
            {"X-Original-URI": "/phone/", "X-Original-Method": "GET", "X-Forwarded-Method": "POST"},
            "describe different requests",
        ),
    ],
)
def test_a_request_described_twice_differently_or_not_at_all_is_refused(headers: dict[str, str], problem: str) -> None:
    original = OriginalRequest(request(headers=headers))
    assert original.problem is not None and problem in original.problem


def test_two_descriptions_that_agree_are_one_request() -> None:
    same = {"X-Original-URI": "/phone/?a=1", "X-Forwarded-Uri": "/phone/?a=1"}
    original = OriginalRequest(request(headers=same | {"X-Original-Method": "get", "X-Forwarded-Method": "GET"}))
    assert original.problem is None and original.method == "GET"


def test_the_mount_spelled_otherwise_is_refused() -> None:
    asked = Request(
        {
            "type": "http",
            "method": "GET",
            "path": MOUNT + "/phone/",
            "raw_path": b"/.channelgate/%61uth/phone/",
            "query_string": b"",
            "headers": [],
        }
    )
    original = OriginalRequest(asked)
    assert original.problem is not None and original.path == "/"


@pytest.mark.parametrize("client_query", ["mode=redirect", "mode=anything", "mode=", "mode=EXPLAIN"])
def test_a_clients_query_never_turns_an_explain_call_into_a_decision(client_query: str) -> None:
    # nginx's explain location sets the header but passes on a query string the client chose: a default or
    # redirect answer there would be a 200 carrying the channel credential, returned to the browser as it is.
    asked = request(query=client_query, headers={"X-Original-URI": "/chat/", "X-Channelgate-Auth-Mode": "explain"})
    assert answer_mode(asked, OriginalRequest(asked)) == "explain"


def test_the_mode_header_wins_over_the_query_and_explain_in_the_query_wins_over_any_header() -> None:
    both = request(query="mode=explain", headers={"X-Original-URI": "/chat/", "X-Channelgate-Auth-Mode": "redirect"})
    assert answer_mode(both, OriginalRequest(both)) == "explain"
    header = request(query="mode=bogus", headers={"X-Original-URI": "/chat/", "X-Channelgate-Auth-Mode": "Redirect"})
    assert answer_mode(header, OriginalRequest(header)) == "redirect"
