"""What a console may run a POST as (``_method``): read as Rails, Laravel, Symfony and Spring read it, and any
method when the gateway cannot read it (gateway/proxy/method_override.py)."""

from __future__ import annotations

import pytest
from starlette.requests import Request
from starlette.types import Message

from gateway.audit.data_access import UNNAMED_METHOD, DataRules, classify, override_candidates
from gateway.proxy.method_override import RunsAs, body_overrides, form_overrides, json_overrides, runs_as
from gateway.settings import DataRuleSettings


@pytest.mark.parametrize(
    ("text", "methods"),
    [
        ("_method=DELETE", {"DELETE"}),
        ("note=x&_method=patch", {"PATCH"}),
        ("_method=delete&_method=PUT", {"DELETE", "PUT"}),  # Rack and PHP take the last, Spring the first
        ("%5Fmethod=PUT", {"PUT"}),
        ("+_method=PUT", {"PUT"}),  # PHP drops leading spaces
        (".method=PUT", {"PUT"}),  # PHP makes "." and " " an "_"
        ("[_method]=PUT", {"PUT"}),  # Rack 2 drops the brackets around a name
        ("a=1;_method=PUT", {"PUT"}),  # Rack 2 splits a query on ";" too
        ("_method%00=PUT", {"PUT"}),  # PHP takes a name as a C string: it ends at the NUL
        ("_method%00x=PUT", {"PUT"}),
        ("+.method%00[=PUT", {"PUT"}),
        ("_meth%00od=PUT", set()),  # PHP reads "_meth"
        ("_method=+delete+", {"DELETE"}),
        ("_method=option%C5%BF", {"OPTIONS"}),  # U+017F (long s) upper-cases to "S", in Ruby too
        ("_method=M-SEARCH", {"M-SEARCH"}),
        ("_method=POST", set()),
        ("_method[]=PUT", set()),  # an array: no framework reads a method from it
        ("_method[=PUT", set()),  # PHP stores it as _method_
        ("_method=DEL%00ETE", set()),
        ("_method=", set()),
        ("method=GET&payment_method=card&_METHOD=PUT", set()),
    ],
)
def test_a_form_or_query_names_the_methods_its_method_fields_hold(text: str, methods: set[str]) -> None:
    assert form_overrides(text) == frozenset(methods)


def test_a_form_too_costly_to_read_may_name_any_method() -> None:
    """Each field that may be ``_method`` is read on its own (~2 µs): past 256 of them, any method, not 12 ms of
    the event loop for a 64 KiB form."""
    many = "&".join(f"%66{number}=x" for number in range(257))
    assert form_overrides(many + "&_method=PUT") is None
    assert form_overrides(many + "&note=x") == frozenset()  # no "method" anywhere: one pass, nothing to decode
    assert form_overrides(many[: many.index("&%66255")] + "&_method=PUT") == frozenset({"PUT"})


@pytest.mark.parametrize(
    ("body", "methods"),
    [
        (b'{"_method": "DELETE", "note": "x"}', {"DELETE"}),
        (b'{"_method": "get", "_method": "PUT"}', {"GET", "PUT"}),
        (b'{"_method": ["DELETE"], "x": {"_method": "PUT"}}', set()),  # only a top-level string counts
        (b'[{"_method": "DELETE"}]', set()),
        (b'"_method"', set()),
        (b"{not json", None),  # what the console reads of it cannot be said: any method
        (b"[" * 100_000, None),
    ],
)
def test_a_json_body_names_its_top_level_method_members(body: bytes, methods: set[str] | None) -> None:
    assert json_overrides(body) == methods


def _part(disposition: bytes, data: bytes = b"GET") -> bytes:
    return b"--b\r\nContent-Disposition: form-data; " + disposition + b"\r\n\r\n" + data + b"\r\n--b--\r\n"


@pytest.mark.parametrize(
    ("body", "methods"),
    [
        (_part(b'name="note"'), set()),
        (_part(b'name="note"; filename="C:\\calls\\7.wav"', b"\\x\\"), set()),  # only names count
        (_part(b'name="_method"'), None),
        (_part(b"name*=utf-8''%5Fm%65thod"), None),  # RFC 7578 §4.2 forbids it; busboy, Go, fileupload decode it
        (_part(b'name="\\_\\m\\e\\t\\h\\o\\d"'), None),  # Rack un-escapes a quoted name: "_method"
        (_part(b"name=_met\\hod"), None),  # Rack 2 un-escapes an unquoted one too
        (_part(b'NAME = "_met\\hod"'), None),
        (_part(b'name="=?utf-8?b?X21ldGhvZA==?="'), None),  # commons-fileupload decodes RFC 2047 words
        (_part(b'name="_met\r\n hod"'), None),  # a quote left open on its line: read otherwise by each parser
    ],
)
def test_a_multipart_body_is_not_parsed_and_may_name_any_method_if_it_mentions_one_or_hides_a_name(
    body: bytes, methods: set[str] | None
) -> None:
    assert body_overrides(body, "multipart") == methods


def _request(headers: list[tuple[str, str]], body: bytes = b"", query: str = "") -> Request:
    sent = False

    async def receive() -> Message:
        nonlocal sent
        if sent:
            raise AssertionError("the body was read twice")
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    scope = {
        "type": "http",
        "method": "POST",
        "path": "/crm/x",
        "query_string": query.encode(),
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers],
    }
    return Request(scope, receive)


FORM = ("content-type", "application/x-www-form-urlencoded")


@pytest.mark.parametrize(
    ("headers", "body", "query", "expected"),
    [
        ([FORM, ("content-length", "14")], b"_method=DELETE", "", RunsAs(frozenset({"DELETE"}))),
        ([("content-length", "11")], b"_method=PUT", "", RunsAs(frozenset({"PUT"}))),  # no type: a form to Rack
        ([("content-type", ""), ("content-length", "11")], b"_method=PUT", "", RunsAs(frozenset({"PUT"}))),  # Rack
        ([("content-type", " \t"), ("content-length", "11")], b"_method=PUT", "", RunsAs(frozenset({"PUT"}))),
        (
            [("content-type", "; charset=utf-8"), ("content-length", "11")],
            b"_method=PUT",
            "",
            RunsAs(frozenset({"PUT"})),
        ),
        (  # read as each type it may be: this JSON is also a form naming PUT
            [("content-type", "application/json"), ("content-type", ""), ("content-length", "21")],
            b'{"a":"&_method=PUT&"}',
            "",
            RunsAs(frozenset({"PUT"})),
        ),
        ([("content-type", "text/plain"), ("content-length", "11")], b"_method=PUT", "", RunsAs()),
        ([("content-type", "text/plain")], b"", "_method=PUT", RunsAs(frozenset({"PUT"}))),
        ([FORM, ("content-length", "200000")], b"", "", RunsAs(any=True)),  # not read
        ([FORM, ("transfer-encoding", "chunked")], b"", "", RunsAs(any=True)),
        ([FORM, ("content-length", "4"), ("content-encoding", "gzip")], b"\x1f\x8b..", "", RunsAs(any=True)),
        ([("content-type", "application/vnd.api+json"), ("content-length", "2")], b"{}", "", RunsAs()),
        ([FORM, ("content-length", "0")], b"", "", RunsAs()),
        ([FORM, ("content-length", "3")], b"\xff=x", "", RunsAs(any=True)),  # not UTF-8
    ],
)
async def test_a_post_runs_as_what_its_query_and_a_small_body_name_or_any_method_when_unread(
    headers: list[tuple[str, str]], body: bytes, query: str, expected: RunsAs
) -> None:
    found = await runs_as(_request(headers, body, query), "POST", query, read_body=True, max_body=64 * 1024)
    assert (found.methods, found.any) == (expected.methods, expected.any)


async def test_only_a_post_is_overridden_and_forward_auth_never_sees_the_body() -> None:
    request = _request([FORM, ("content-length", "14")], b"_method=DELETE")
    assert not await runs_as(request, "PUT", "_method=DELETE", read_body=True, max_body=1024)
    found = await runs_as(request, "POST", "", read_body=False, max_body=1024)
    assert found.any


def test_a_post_that_may_run_as_any_method_is_decided_as_every_method_its_rules_name_and_one_they_do_not() -> None:
    rules = DataRules(
        [
            DataRuleSettings(path="/crm/recordings/**", methods=("GET", "PURGE"), action="download", pii="recording"),
            DataRuleSettings(path="/crm/**", methods=("POST",), action="view"),
        ]
    )
    candidates = override_candidates(rules)
    assert candidates >= {"GET", "HEAD", "OPTIONS", "PUT", "PATCH", "DELETE", "PURGE", UNNAMED_METHOD}
    assert "POST" not in candidates
    assert classify(rules, "PURGE", "/crm/recordings/1", "", {}).action == "download"
    assert classify(rules, UNNAMED_METHOD, "/crm/x", "", {}).action == "change"
    assert {classify(None, m, "/x", "", {}).action for m in override_candidates(None)} == {"view", "change"}
