"""The directory reader against a connection that answers as ldap3 2.9.1 does with ``raise_exceptions=True``: it
does not raise for sizeLimitExceeded, timeLimitExceeded or referral (``ldap3.core.results.DO_NOT_RAISE_EXCEPTIONS``)
and keeps continuation references in ``response`` as ``searchResRef``; only the result dict says the page is short.
Time limits and AD's in-chain search cannot be provoked on the suite's slapd (the integration tests cover size
limits and referrals there)."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.directory import reader
from gateway.directory.errors import DirectoryUnavailable
from gateway.directory.reader import PAGED_RESULTS, DirectoryReader
from gateway.directory.settings import LdapSettings

PEOPLE = "ou=people,dc=example,dc=com"
GROUPS = "ou=groups,dc=example,dc=com"
SUCCESS = {"result": 0, "description": "success", "message": "", "referrals": None, "dn": "", "type": "searchResDone"}
TIME_LIMIT = SUCCESS | {"result": 3, "description": "timeLimitExceeded"}
SIZE_LIMIT = SUCCESS | {"result": 4, "description": "sizeLimitExceeded"}
REFERRAL = SUCCESS | {"result": 10, "description": "referral", "referrals": ["ldap://dc2.example.com/ou=people"]}
CONTINUATION = {"type": "searchResRef", "uri": ["ldap://dc2.example.com/ou=more,ou=people,dc=example,dc=com??sub"]}


def _user(number: int) -> dict[str, Any]:
    uid = f"u{number}"
    return {
        "type": "searchResEntry",
        "dn": f"uid={uid},{PEOPLE}",
        "raw_attributes": {"entryUUID": [f"00000000-0000-0000-0000-{number:012d}".encode()], "uid": [uid.encode()]},
        "attributes": {},
    }


def _group(name: str) -> dict[str, Any]:
    return {
        "type": "searchResEntry",
        "dn": f"cn={name},{GROUPS}",
        "raw_attributes": {"entryUUID": [b"10000000-0000-0000-0000-000000000001"], "cn": [name.encode()]},
        "attributes": {},
    }


class _Directory:
    """Answers each search with two pages (users, in-chain members) or one (groups); ``search`` (users, groups
    or members) ends its page ``page`` (1 or 2) with ``result`` and, when given, the extra ``response`` items."""

    def __init__(self, search: str, page: int, result: dict[str, Any], extra: list[dict[str, Any]]) -> None:
        self._fault = (search, page)
        self._result = result
        self._extra = extra
        self._pages: dict[str, int] = {}
        self.response: list[dict[str, Any]] = []
        self.result: dict[str, Any] = {}

    def search(self, base: str, search_filter: str, **_: Any) -> bool:
        name = "groups" if base == GROUPS else "members" if "memberOf:" in search_filter else "users"
        page = self._pages[name] = self._pages.get(name, 0) + 1
        last = name == "groups" or page == 2
        self.response = [_group("agents")] if name == "groups" else [_user(2 * page - 1), _user(2 * page)]
        controls = {} if last else {PAGED_RESULTS: {"value": {"cookie": b"next", "size": 0}, "criticality": False}}
        self.result = SUCCESS | {"controls": controls}
        if self._fault == (name, page):
            self.response += self._extra
            self.result = self._result | {"controls": {}}
        return True


SETTINGS = LdapSettings(
    url="ldap://127.0.0.1:1", bind_dn="cn=sync,dc=example,dc=com", users_base=PEOPLE, groups_base=GROUPS,
    agents_group=f"cn=agents,{GROUPS}", nested_groups="in_chain",
)  # fmt: skip

FAULTS = [
    (TIME_LIMIT, [], "timeLimitExceeded"),
    (SIZE_LIMIT, [], "sizeLimitExceeded"),
    (REFERRAL, [], "referral"),
    (SUCCESS, [CONTINUATION], "continuation reference"),
]
WHERE = [("users", 1), ("users", 2), ("groups", 1), ("members", 2)]


def _read(monkeypatch: pytest.MonkeyPatch, directory: _Directory, since: str | None = None) -> reader.Snapshot:
    monkeypatch.setattr(reader, "open_connection", lambda *args, **kwargs: directory)
    monkeypatch.setattr(reader, "close", lambda connection: None)
    return DirectoryReader(SETTINGS, "password").read(since)


def test_a_read_whose_every_page_succeeds_returns_every_user_group_and_in_chain_member(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    snapshot = _read(monkeypatch, _Directory("none", 0, SUCCESS, []))
    assert [user.user_name for user in snapshot.users] == ["u1", "u2", "u3", "u4"]
    assert [group.name for group in snapshot.groups] == ["agents"]
    assert snapshot.agents_members is not None and len(snapshot.agents_members) == 4


@pytest.mark.parametrize(("search", "page"), WHERE, ids=[f"{s}-page-{p}" for s, p in WHERE])
@pytest.mark.parametrize(("result", "extra", "named"), FAULTS, ids=[f[2] for f in FAULTS])
@pytest.mark.parametrize("since", [None, "20260101000000Z"], ids=["full", "incremental"])
def test_a_search_ended_by_a_limit_a_referral_or_a_continuation_reference_on_any_page_is_an_incomplete_read(
    monkeypatch: pytest.MonkeyPatch,
    search: str,
    page: int,
    result: dict[str, Any],
    extra: list[dict[str, Any]],
    named: str,
    since: str | None,
) -> None:
    with pytest.raises(DirectoryUnavailable, match=f"{named}.*nothing was changed") as raised:
        _read(monkeypatch, _Directory(search, page, result, extra), since)
    assert (PEOPLE if search != "groups" else GROUPS) in raised.value.message


@pytest.mark.parametrize(("result", "extra", "named"), FAULTS, ids=[f[2] for f in FAULTS])
def test_reading_users_by_id_ended_short_is_an_incomplete_read(
    monkeypatch: pytest.MonkeyPatch, result: dict[str, Any], extra: list[dict[str, Any]], named: str
) -> None:
    directory = _Directory("users", 1, result, extra)
    monkeypatch.setattr(reader, "open_connection", lambda *args, **kwargs: directory)
    monkeypatch.setattr(reader, "close", lambda connection: None)
    with pytest.raises(DirectoryUnavailable, match=named):
        DirectoryReader(SETTINGS, "password").read_users(["00000000-0000-0000-0000-000000000001"])
