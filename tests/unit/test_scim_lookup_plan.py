"""Which SCIM requests the lookup path (``scim.lookups``) answers itself, and which it leaves to the engine.

The lookup path renders the answer itself, so it must only take requests whose answer it renders exactly as the
engine would: a plain equality on an indexed attribute, no projection, no sorting, paging the engine would not
adjust. Everything else must reach scim2-server untouched (including the errors it renders).
"""

from __future__ import annotations

import pytest
from scim2_server.requests import ScimRequest

from scim.lookups import Lookups


def _request(method: str = "GET", path: str = "/Users", **query: str) -> ScimRequest:
    return ScimRequest(method=method, base_url="http://127.0.0.1/scim/v2", path=path, query=query)


@pytest.mark.parametrize(
    ("request_", "expected"),
    [
        (_request(filter='userName eq "alice@example.org"'), ("userName", '"alice@example.org"', 1, 200)),
        (_request(filter='USERNAME EQ "Alice"'), ("USERNAME", '"Alice"', 1, 200)),
        (_request(filter=' externalId eq "00u1"  '), ("externalId", '"00u1"', 1, 200)),
        (_request(filter='id eq "a\\"b"', startIndex="3", count="7"), ("id", '"a\\"b"', 3, 7)),
    ],
)
def test_an_indexed_equality_lookup_takes_the_lookup_path(
    request_: ScimRequest, expected: tuple[str, str, int, int]
) -> None:
    assert Lookups._plan(request_) == expected


@pytest.mark.parametrize(
    "request_",
    [
        _request(),  # a listing, not a lookup
        _request(method="POST", filter='userName eq "a"'),
        _request(path="/Groups", filter='displayName eq "a"'),
        _request(path="/Users/abc", filter='userName eq "a"'),
        _request(filter='displayName eq "a"'),  # ASCII-folded, not a lookup column
        _request(filter='emails.value eq "a@example.org"'),
        _request(filter='userName eq "a" and active eq true'),
        _request(filter='userName co "a"'),
        _request(filter='userName eq "a" or userName eq "b"'),
        _request(filter="userName eq true"),
        _request(filter='urn:ietf:params:scim:schemas:core:2.0:User:userName eq "a"'),
        _request(filter='userName eq "a"', attributes="userName"),
        _request(filter='userName eq "a"', excludedAttributes="groups"),
        _request(filter='userName eq "a"', sortBy="userName"),
        _request(filter='userName eq "a"', count="0"),  # the engine's answer to count=0
        _request(filter='userName eq "a"', count="201"),  # the engine caps it
        _request(filter='userName eq "a"', startIndex="0"),  # the engine reads it as 1
        _request(filter='userName eq "a"', startIndex="-1"),
        _request(filter='userName eq "a"', count="²"),
        _request(filter='userName eq "unterminated'),
    ],
)
def test_anything_else_is_left_to_the_engine(request_: ScimRequest) -> None:
    assert Lookups._plan(request_) is None
