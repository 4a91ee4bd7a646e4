"""Active Directory's accountExpires: the FILETIME parsing, the reason a passed expiry gives, and what the plan
does with a value it cannot read (the agent keeps its state, a conflict says why)."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from gateway.directory.entries import user_attributes, user_from_entry
from gateway.directory.expiry import expired_reason, parse_account_expires
from gateway.directory.groups import GroupGraph
from gateway.directory.membership import wanted
from gateway.directory.plan import KnownAgent, View, plan
from gateway.directory.settings import LdapSettings
from tests.components.ldap_server import filetime

BASE = {"url": "ldap://127.0.0.1", "bind_dn": "cn=sync", "users_base": "ou=people,dc=x"}
SETTINGS = LdapSettings.model_validate(BASE)
NOVEMBER_30 = datetime(2026, 11, 30, tzinfo=UTC)
#: 2026-11-30T00:00:00Z as Active Directory stores it (11,644,473,600 s between 1601 and 1970, in 100 ns).
NOVEMBER_30_FILETIME = 134404704000000000


@pytest.mark.parametrize("value", [None, "", "  ", "0", "9223372036854775807", " 0 "])
def test_no_value_zero_and_the_largest_large_integer_all_mean_never(value: str | None) -> None:
    assert parse_account_expires(value) is None


def test_a_filetime_reads_as_the_utc_moment_it_counts_to_from_1601() -> None:
    assert parse_account_expires(str(NOVEMBER_30_FILETIME)) == NOVEMBER_30
    assert parse_account_expires("1") == datetime(1601, 1, 1, tzinfo=UTC)  # a moment long past, not "never"
    assert parse_account_expires(str(NOVEMBER_30_FILETIME + 15_000_000)) == NOVEMBER_30 + timedelta(seconds=1.5)
    assert filetime(NOVEMBER_30) == NOVEMBER_30_FILETIME


def test_a_filetime_past_the_year_9999_never_comes() -> None:
    assert parse_account_expires("9223372036854775806") is None


@pytest.mark.parametrize(
    "value",
    [
        "-1",
        "abc",
        "1.5",
        "+5",
        "0x7FFFFFFFFFFFFFFF",
        "9223372036854775808",  # past a signed 64-bit Large Integer
        "99999999999999999999",
        "\uff12\uff10\uff12\uff16",  # fullwidth digits, which int() would take
        "1 2",
    ],
)
def test_a_value_that_is_not_a_filetime_raises_naming_the_value(value: str) -> None:
    with pytest.raises(ValueError, match=r"accountExpires .* is not a Windows FILETIME") as raised:
        parse_account_expires(value)
    assert repr(value) in str(raised.value)


def test_a_long_unreadable_value_is_quoted_cut() -> None:
    with pytest.raises(ValueError, match="is not a Windows FILETIME") as raised:
        parse_account_expires("x" * 5000)
    assert len(str(raised.value)) < 400 and "x" * 40 + "..." in str(raised.value)


def test_an_expiry_is_reached_at_its_moment_and_not_a_second_before() -> None:
    reason = "expired in the directory (accountExpires 2026-11-30T00:00:00Z)"
    assert expired_reason(NOVEMBER_30, NOVEMBER_30) == reason
    assert expired_reason(NOVEMBER_30, NOVEMBER_30 + timedelta(days=3)) == reason
    assert expired_reason(NOVEMBER_30, NOVEMBER_30 - timedelta(seconds=1)) is None
    assert expired_reason(None, NOVEMBER_30) is None


def _entry(account_expires: Any) -> dict[str, list[Any]]:
    return {"entryUUID": ["u-bob"], "uid": ["bob"], "accountExpires": [account_expires]}


def test_an_entry_carries_its_expiry_as_read_and_bytes_are_decoded() -> None:
    user = user_from_entry("uid=bob,ou=people,dc=x", _entry(str(NOVEMBER_30_FILETIME).encode()), SETTINGS)
    assert user is not None and (user.expires, user.expiry_unreadable) == (NOVEMBER_30, None)
    assert "accountExpires" in user_attributes(SETTINGS)


def test_an_unreadable_expiry_is_kept_as_a_reason_not_raised() -> None:
    user = user_from_entry("uid=bob,ou=people,dc=x", _entry(b"tomorrow"), SETTINGS)
    assert user is not None and user.expires is None
    assert "'tomorrow' is not a Windows FILETIME" in (user.expiry_unreadable or "")


def test_account_expires_left_out_of_disabled_when_is_ignored() -> None:
    only_ad = LdapSettings.model_validate(BASE | {"disabled_when": ["user_account_control"]})
    for value in ("1", "tomorrow"):
        user = user_from_entry("uid=bob,ou=people,dc=x", _entry(value), only_ad)
        assert user is not None and (user.expires, user.expiry_unreadable) == (None, None)


def test_the_expiry_is_judged_by_the_clock_of_the_sync_and_another_mechanism_is_named_first() -> None:
    user = user_from_entry("uid=bob,ou=people,dc=x", _entry(str(NOVEMBER_30_FILETIME)), SETTINGS)
    assert user is not None
    before = wanted(user, GroupGraph(), None, None, NOVEMBER_30 - timedelta(seconds=1))
    after = wanted(user, GroupGraph(), None, None, NOVEMBER_30)
    assert before.refusal is None
    assert after.refusal == "expired in the directory (accountExpires 2026-11-30T00:00:00Z)"
    locked = user_from_entry(
        "uid=bob,ou=people,dc=x", _entry(str(NOVEMBER_30_FILETIME)) | {"userAccountControl": ["514"]}, SETTINGS
    )
    assert locked is not None
    assert "userAccountControl" in (wanted(locked, GroupGraph(), None, None, NOVEMBER_30).refusal or "")


def _known(*, active: bool, by_sync: bool) -> KnownAgent:
    return KnownAgent("id-bob", "u-bob", "uid=bob,ou=people,dc=x", "bob", None, None, None, None, active, by_sync,
                      frozenset())  # fmt: skip


def _plan_of(known: list[KnownAgent], extra: dict[str, list[str]] | None = None) -> list[tuple[str, str | None]]:
    user = user_from_entry("uid=bob,ou=people,dc=x", _entry("-5") | (extra or {}), SETTINGS)
    assert user is not None
    view = View({"u-bob": wanted(user, GroupGraph(), None, None, NOVEMBER_30)})
    ids = (f"new-{i}" for i in itertools.count())
    return [(c.kind, c.reason) for c in plan({k.entry_id: k for k in known}, view, {}, lambda: next(ids)).changes]


def test_an_unreadable_expiry_creates_no_agent_and_says_why() -> None:
    [(kind, reason)] = _plan_of([])
    assert kind == "conflict" and "accountExpires '-5' is not a Windows FILETIME" in (reason or "")


def test_an_unreadable_expiry_neither_disables_an_active_agent_nor_reactivates_one_the_sync_disabled() -> None:
    assert [kind for kind, _ in _plan_of([_known(active=True, by_sync=False)])] == ["conflict"]
    assert [kind for kind, _ in _plan_of([_known(active=False, by_sync=True)])] == ["conflict"]


def test_another_mechanism_still_disables_an_agent_whose_expiry_is_unreadable() -> None:
    changes = _plan_of([_known(active=True, by_sync=False)], {"userAccountControl": ["514"]})
    assert [kind for kind, _ in changes] == ["conflict", "disable"]
    assert "userAccountControl" in (changes[1][1] or "")
