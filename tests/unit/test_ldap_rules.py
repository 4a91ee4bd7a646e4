"""The directory sync's pure rules: disablement detection, nested groups, the plan, the quarantine threshold,
the RFC 4533 control encodings, and the settings that refuse an unprotected transport."""

from __future__ import annotations

import itertools
import uuid
from typing import Any

import pytest
from pydantic import ValidationError

from gateway.directory.entries import (
    DirectoryUser,
    disabled_reason,
    entry_id_of,
    in_subtree,
    normalize_dn,
    user_from_entry,
)
from gateway.directory.feed import feed_base
from gateway.directory.groups import DirectoryGroup, GroupGraph
from gateway.directory.plan import GONE, KnownAgent, View, WantedUser, check_quarantine, plan
from gateway.directory.reader import entry_id_filter, newest_change
from gateway.directory.settings import LdapAttributeMap, LdapSettings
from gateway.directory.syncrepl import parse_sync_info, parse_sync_state, sync_request

BASE = {
    "url": "ldap://127.0.0.1",
    "bind_dn": "cn=sync",
    "users_base": "ou=people,dc=x",
    "groups_base": "ou=groups,dc=x",
}
SETTINGS = LdapSettings.model_validate(BASE)


@pytest.mark.parametrize(
    ("attributes", "disabled"),
    [
        ({"userAccountControl": ["512"]}, None),
        ({"userAccountControl": ["514"]}, "userAccountControl"),
        ({"userAccountControl": ["66050"]}, "userAccountControl"),  # 0x10202: disabled, password never expires
        ({"pwdAccountLockedTime": ["000001010000Z"]}, "pwdAccountLockedTime"),
        ({"pwdAccountLockedTime": ["20261204101010Z"]}, None),  # a timed lockout after failed binds expires
        ({"nsAccountLock": ["TRUE"]}, "nsAccountLock"),
        ({"nsAccountLock": ["false"]}, None),
        ({}, None),
    ],
)
def test_each_disable_mechanism_is_recognised_and_a_timed_lockout_is_not_a_departure(
    attributes: dict[str, list[str]], disabled: str | None
) -> None:
    reason = disabled_reason(attributes, SETTINGS)
    assert (reason is None) == (disabled is None)
    if disabled is not None:
        assert disabled in (reason or "")


def test_a_mechanism_left_out_of_disabled_when_is_ignored() -> None:
    only_ad = LdapSettings.model_validate(BASE | {"disabled_when": ["user_account_control"]})
    assert disabled_reason({"nsAccountLock": ["true"]}, only_ad) is None


def test_an_ad_object_guid_reads_as_the_same_uuid_and_is_searched_by_its_raw_bytes() -> None:
    guid = uuid.uuid4()
    assert entry_id_of(guid.bytes_le) == str(guid)
    assert (
        entry_id_filter("objectGUID", str(guid)) == "(objectGUID=" + "".join(f"\\{b:02x}" for b in guid.bytes_le) + ")"
    )
    assert entry_id_filter("entryUUID", "a*b") == "(entryUUID=a\\2ab)"


def test_an_entry_without_a_username_or_stable_id_is_skipped() -> None:
    assert user_from_entry("uid=x,ou=people,dc=x", {"entryUUID": ["u1"]}, SETTINGS) is None
    assert user_from_entry("uid=x,ou=people,dc=x", {"uid": ["x"]}, SETTINGS) is None


def test_nested_groups_are_resolved_transitively_and_a_cycle_ends() -> None:
    graph = GroupGraph.of(
        [
            DirectoryGroup("1", "cn=agents,ou=groups,dc=x", "agents", frozenset({"cn=team-a,ou=groups,dc=x"})),
            DirectoryGroup(
                "2",
                "cn=team-a,ou=groups,dc=x",
                "team-a",
                frozenset({"uid=bob,ou=people,dc=x", "cn=agents,ou=groups,dc=x"}),
            ),
        ]
    )
    found = graph.groups_of("UID=bob, ou=people,dc=x")
    assert graph.names(found) == {"agents", "team-a"}


def _user(name: str, dn: str | None = None, manager: str | None = None) -> DirectoryUser:
    return DirectoryUser(name, dn or f"uid={name},ou=people,dc=x", name, None, None, None, manager, None, frozenset())


def _known(
    name: str, *, active: bool = True, by_sync: bool = False, groups: frozenset[str] = frozenset()
) -> KnownAgent:
    return KnownAgent(
        f"id-{name}", name, f"uid={name},ou=people,dc=x", name, None, None, None, None, active, by_sync, groups
    )


def _plan(
    known: list[KnownAgent],
    wanted: dict[str, str | None],
    *,
    complete: bool = False,
    holders: dict[str, tuple[str, str]] | None = None,
) -> Any:
    ids = (f"new-{i}" for i in itertools.count())
    users = {name: WantedUser(_user(name), frozenset(), refusal) for name, refusal in wanted.items()}
    return plan({k.entry_id: k for k in known}, View(users, complete=complete), holders or {}, lambda: next(ids))


def test_a_complete_view_disables_agents_missing_from_it_and_a_partial_view_does_not() -> None:
    known = [_known("alice"), _known("bob")]
    assert [(c.kind, c.user_name, c.reason) for c in _plan(known, {"alice": None}, complete=True).changes] == [
        ("disable", "bob", GONE)
    ]
    assert _plan(known, {"alice": None}).changes == ()


def test_only_an_agent_the_sync_disabled_is_reactivated() -> None:
    known = [_known("bob", active=False, by_sync=True), _known("carol", active=False, by_sync=False)]
    changes = _plan(known, {"bob": None, "carol": None}).changes
    assert [(c.kind, c.user_name) for c in changes] == [("reactivate", "bob")]


def test_an_agent_of_another_source_with_the_same_username_is_a_conflict_left_alone() -> None:
    [change] = _plan([], {"bob": None}, holders={"bob": ("id-9", "scim")}).changes
    assert (change.kind, change.reason) == ("conflict", "userName held by another agent (source scim, id id-9)")


def test_a_new_entry_with_the_username_of_a_managed_agent_is_a_conflict_not_a_second_agent() -> None:
    old = _known("bob", active=False, by_sync=True)
    changes = _plan([old], {"bob-rehired": None}, holders={"bob": ("id-bob", "ldap")}).changes
    assert [c.kind for c in changes] == ["create"]  # another name: created
    users = {"new-entry": WantedUser(_user("bob"), frozenset(), None)}
    [conflict] = plan({"bob": old}, View(users), {"bob": ("id-bob", "ldap")}, lambda: "x").changes
    assert (conflict.kind, conflict.entry_id) == ("conflict", "new-entry")


def test_a_manager_dn_becomes_the_managers_agent_id_even_when_both_are_new() -> None:
    ids = iter(["id-1", "id-2"])
    users = {
        "alice": WantedUser(_user("alice"), frozenset(), None),
        "bob": WantedUser(_user("bob", manager="UID=alice,ou=people,dc=x"), frozenset(), None),
    }
    changes = plan({}, View(users), {}, lambda: next(ids)).changes
    by_name = {c.user_name: c for c in changes}
    assert by_name["bob"].values["manager_id"] == by_name["alice"].agent_id


def test_an_entry_whose_agent_was_deleted_is_a_conflict_and_never_a_manager() -> None:
    users = {
        "bob": WantedUser(_user("bob"), frozenset(), None),
        "carol": WantedUser(_user("carol", manager="uid=bob,ou=people,dc=x"), frozenset(), None),
    }
    changes = plan({}, View(users, complete=True), {}, lambda: "id-carol", deleted={"bob": "id-old-bob"}).changes
    assert [(c.kind, c.user_name, c.agent_id) for c in changes] == [
        ("conflict", "bob", "id-old-bob"),
        ("create", "carol", "id-carol"),
    ]
    assert "was deleted" in (changes[0].reason or "") and changes[1].values["manager_id"] is None


def test_a_username_holding_nul_names_the_configured_attribute_in_its_conflict() -> None:
    users = {"e": WantedUser(_user("bob\x00"), frozenset(), None)}
    attributes = LdapAttributeMap(user_name="sAMAccountName")
    [change] = plan({}, View(users), {}, lambda: "x", attributes=attributes).changes
    assert change.kind == "conflict" and change.reason is not None
    assert change.reason.startswith("sAMAccountName contains the character U+0000")


def test_a_managed_agent_renamed_to_an_unstorable_username_keeps_its_name_and_is_still_disabled() -> None:
    renamed = DirectoryUser("bob", "uid=bob,ou=people,dc=x", "bob\x00", None, None, None, None, None, frozenset())
    view = View({"bob": WantedUser(renamed, frozenset(), "disabled in the directory")})
    changes = plan({"bob": _known("bob")}, view, {}, lambda: "x").changes
    assert [(c.kind, c.user_name) for c in changes] == [("conflict", "bob\x00"), ("disable", "bob")]
    assert (changes[0].reason or "").startswith("uid contains the character U+0000")


@pytest.mark.parametrize(
    ("dn", "base", "inside"),
    [
        ("uid=zoe,ou=Sales\\2C EU,dc=x", "ou=Sales\\, EU,dc=x", True),
        ("UID=zoe, OU=sales\\2c eu, DC=X", "ou=Sales\\, EU,dc=x", True),
        ("uid=zoe,ou=Sales\\, EU,dc=x", "EU,dc=x", False),
        ("cn=x,ou=a\\,b,dc=x", "ou=b,dc=x", False),
        ("cn=Caf\\C3\\A9,dc=x", "cn=café,dc=x", True),
        ("cn=a+uid=B,dc=x", "UID=b+CN=A,dc=x", True),
        ("uid=zoe,ou=people,dc=x", "ou=people,dc=x", True),
        ("uid=zoe,ou=people,dc=x", "ople,dc=x", False),
    ],
)
def test_dns_are_compared_as_rdn_sequences_with_escapes_decoded_and_case_folded(
    dn: str, base: str, inside: bool
) -> None:
    assert in_subtree(dn, base) is inside


def test_an_escaped_comma_spelled_either_way_is_one_dn_and_the_feed_base_keeps_the_admins_spelling() -> None:
    assert normalize_dn("ou=Sales\\, EU,dc=x") == normalize_dn("OU = Sales\\2C EU , DC=X")
    assert normalize_dn("ou=a\\,b,dc=x") != normalize_dn("ou=a,ou=b,dc=x")
    sales = BASE | {"users_base": "ou=people,ou=Sales\\, EU,dc=x", "groups_base": "ou=groups,ou=Sales\\2C EU,DC=X"}
    assert feed_base(LdapSettings.model_validate(sales)) == "ou=Sales\\, EU,dc=x"
    split = BASE | {"users_base": "ou=people,ou=a\\,b,dc=x", "groups_base": "ou=groups,ou=b,dc=x"}
    assert feed_base(LdapSettings.model_validate(split)) == "dc=x"


@pytest.mark.parametrize(
    ("disabling", "active", "recent", "held"),
    [(9, 10, 0, True), (1, 10, 0, False), (4, 10, 0, False), (4, 10, 3, True), (4, 10, 2, False), (3, 4, 0, False)],
)
def test_the_quarantine_holds_a_plan_above_the_share_once_enough_agents_are_involved(
    disabling: int, active: int, recent: int, held: bool
) -> None:
    known = [_known(f"a{i}") for i in range(active)]
    wanted = {f"a{i}": ("locked" if i < disabling else None) for i in range(active)}
    result = check_quarantine(
        _plan(known, wanted), recent_disables=recent, approved=frozenset(), max_share=0.5, min_agents=5
    )
    assert result.held is held


def test_approved_disables_do_not_count_towards_the_quarantine() -> None:
    known = [_known(f"a{i}") for i in range(10)]
    p = _plan(known, {f"a{i}": "locked" for i in range(10)})
    approved = frozenset(f"id-a{i}" for i in range(10))
    assert not check_quarantine(p, recent_disables=0, approved=approved, max_share=0.1, min_agents=1).held


def test_the_sync_request_control_is_rfc_4533_refresh_and_persist() -> None:
    oid, critical, value = sync_request()
    assert (oid, critical, value) == ("1.3.6.1.4.1.4203.1.9.1.1", True, b"\x30\x03\x0a\x01\x03")
    assert sync_request(cookie=b"c")[2] == b"\x30\x06\x0a\x01\x03\x04\x01c"


def test_sync_state_and_sync_info_values_are_decoded() -> None:
    entry = uuid.uuid4()
    state = parse_sync_state(b"\x30\x15\x0a\x01\x03\x04\x10" + entry.bytes + b"\x04\x00")
    assert (state.state, state.entry_uuid) == ("delete", str(entry))
    assert parse_sync_info(b"\xa2\x03\x01\x01\xff").refresh_done
    assert not parse_sync_info(b"\xa2\x03\x01\x01\x00").refresh_done
    assert parse_sync_info(b"\xa1\x00").refresh_done  # refreshDone defaults to TRUE
    deleted = parse_sync_info(b"\xa3\x17\x01\x01\xff\x31\x12\x04\x10" + entry.bytes)
    assert deleted.deleted == (str(entry),)
    with pytest.raises(ValueError, match="truncated"):
        parse_sync_state(b"\x30\x15\x0a")


def test_the_feed_searches_the_closest_common_ancestor_of_users_and_groups() -> None:
    assert feed_base(SETTINGS) == "dc=x"
    assert feed_base(LdapSettings.model_validate(BASE | {"groups_base": None})) == "ou=people,dc=x"


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"url": "ldap://dc.example.com"}, "clear"),
        ({"url": "ldaps://dc.example.com", "verify_certificates": False}, "loopback"),
        ({"url": "ldaps://dc.example.com", "start_tls": True}, "start_tls"),
        ({"url": "https://dc.example.com"}, "ldaps://"),
        ({"incremental_interval_seconds": 600, "full_interval_seconds": 60}, "full_interval_seconds"),
        ({"url": "ldaps://dc.example.com", "ca_file": "/nonexistent/ca.pem"}, "not a file"),
    ],
)
def test_settings_refuse_an_unprotected_or_inconsistent_directory(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        LdapSettings.model_validate(BASE | changes)


def test_the_bind_password_never_prints() -> None:
    settings = LdapSettings.model_validate(BASE | {"bind_password": "hunter2"})
    assert "hunter2" not in repr(settings) and "hunter2" not in str(settings.model_dump())


@pytest.mark.parametrize(
    ("values", "newest"),
    [(["20261204101010Z", "20261204090909Z"], "20261204101010Z"), (["999", "1000", "20"], "1000")],
)
def test_the_high_water_mark_is_the_newest_change_for_timestamps_and_update_sequence_numbers(
    values: list[str], newest: str
) -> None:
    mark = None
    for value in values:
        mark = newest_change(mark, {"whenChanged": [value]}, "whenChanged")
    assert mark == newest
