"""Active Directory's accountExpires against a real OpenLDAP ``slapd`` (the test schema holds it as an integer,
as AD's Large Integer): an expired account is deprovisioned like a disabled one, whether it expired before a sync
or between two; "never" and future expiries stay; a readable future expiry reactivates only what nothing else
disables; an unreadable one disables nobody and is reported."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from datetime import datetime, timedelta

import pytest

from gateway.directory.wiring import open_directory_sync
from gateway.timeutil import utcnow
from tests.components.ldap_server import GROUPS, PEOPLE, LdapServer, filetime, group_ldif, person_ldif
from tests.components.ldap_stack import LdapStack, ldap_stack

pytestmark = [pytest.mark.timeout(60)]

TEAM = ("alice", "bob", "carol", "dave", "erin", "frank")
#: The two values Active Directory writes for "never".
NEVER = 9223372036854775807


@pytest.fixture
def directory() -> Iterator[LdapServer]:
    # alice never expires (the largest Large Integer), dave never either (0), the others carry no value.
    expiries = {"alice": NEVER, "dave": 0}
    people = "\n".join(person_ldif(name, account_expires=expiries.get(name)) for name in TEAM)
    with LdapServer() as server:
        server.add("\n".join([people, group_ldif("agents", TEAM)]))
        yield server


@pytest.fixture
async def stack(directory: LdapServer) -> AsyncIterator[LdapStack]:
    async with ldap_stack(directory, quarantine={"max_share": 0.9, "min_agents": 5}) as built:
        yield built


def set_expiry(server: LdapServer, uid: str, value: int | datetime) -> None:
    ticks = filetime(value) if isinstance(value, datetime) else value
    server.modify(f"dn: uid={uid},{PEOPLE}\nchangetype: modify\nreplace: accountExpires\naccountExpires: {ticks}\n")


async def newer_change_elsewhere(server: LdapServer) -> None:
    """A later change to frank, so that the high-water mark (the newest modifyTimestamp, one-second resolution,
    read inclusively) moves past every earlier change and an incremental sync no longer reads those entries."""
    await asyncio.sleep(1.1)
    server.modify(f"dn: uid=frank,{PEOPLE}\nchangetype: modify\nreplace: displayName\ndisplayName: Frank B\n")


def reason_of(moment: datetime) -> str:
    return f"expired in the directory (accountExpires {moment:%Y-%m-%dT%H:%M:%SZ})"


async def test_an_expired_account_is_deprovisioned_with_its_expiry_as_the_reason_and_never_or_future_ones_stay(
    stack: LdapStack, directory: LdapServer
) -> None:
    await stack.sync.full()
    expired = (utcnow() - timedelta(days=1)).replace(microsecond=0)
    set_expiry(directory, "bob", expired)
    set_expiry(directory, "carol", utcnow() + timedelta(days=30))
    report = await stack.sync.incremental()
    assert report.applied.get("disable") == 1, report.planned
    bob = await stack.agent("bob")
    assert not bob.active and bob.disabled_reason == reason_of(expired)
    [run] = await stack.services.pipeline.runs_of_agent(bob.id)
    assert (run.source, run.actor, run.reason) == ("ldap", "ldap:directory", reason_of(expired))
    [disable] = [r for r in await stack.records() if r.decision == "disable"]
    assert (disable.agent_name, disable.reason) == ("bob", reason_of(expired))
    [disabled] = [r for r in await stack.records("deprovision") if r.decision == "disabled"]
    assert (disabled.agent_name, disabled.reason) == ("bob", reason_of(expired))
    # alice (never: 9223372036854775807), dave (never: 0), carol (in 30 days) and those without a value stay.
    assert await stack.active() == set(TEAM) - {"bob"}
    assert (await stack.sync.full()).planned == []


async def test_an_account_expiring_between_syncs_is_deprovisioned_by_the_next_incremental_sync(
    stack: LdapStack, directory: LdapServer
) -> None:
    expires = (utcnow() + timedelta(hours=1)).replace(microsecond=0)
    set_expiry(directory, "carol", expires)
    await newer_change_elsewhere(directory)
    await stack.sync.full()
    report = await stack.sync.incremental()
    assert (report.users_read, report.planned) == (1, [])  # frank's entry only, carol's is not read again
    assert await stack.active() == set(TEAM)
    stack.sync.clock = lambda: utcnow() + timedelta(hours=2)  # the expiry passes; carol's entry does not change
    report = await stack.sync.incremental()
    assert report.kind == "incremental" and report.applied.get("disable") == 1, report.planned
    carol = await stack.agent("carol")
    assert not carol.active and carol.disabled_reason == reason_of(expires)
    assert await stack.active() == set(TEAM) - {"carol"}


async def test_an_expiry_read_by_another_replica_is_still_found_when_the_sync_comes_back(
    stack: LdapStack, directory: LdapServer
) -> None:
    await stack.sync.full()
    expires = (utcnow() + timedelta(hours=1)).replace(microsecond=0)
    set_expiry(directory, "erin", expires)
    await newer_change_elsewhere(directory)
    other = open_directory_sync(stack.services, stack.sync.settings, metrics=False)
    await other.full()  # the other replica reads erin's expiry and moves the high-water mark past it
    stack.sync.clock = lambda: utcnow() + timedelta(hours=2)
    report = await stack.sync.incremental()
    assert report.applied.get("disable") == 1, report.planned
    assert (await stack.agent("erin")).disabled_reason == reason_of(expires)


async def test_an_expiry_moved_into_the_future_reactivates_only_an_agent_nothing_else_disables(
    stack: LdapStack, directory: LdapServer
) -> None:
    await stack.sync.full()
    past = utcnow() - timedelta(days=1)
    set_expiry(directory, "bob", past)
    set_expiry(directory, "carol", past)
    assert (await stack.sync.incremental()).applied.get("disable") == 2
    await asyncio.sleep(1.1)  # modifyTimestamp has a one-second resolution
    future = utcnow() + timedelta(days=90)
    set_expiry(directory, "bob", future)
    set_expiry(directory, "carol", future)
    directory.modify(
        f"dn: uid=carol,{PEOPLE}\nchangetype: modify\nreplace: userAccountControl\nuserAccountControl: 514\n"
    )
    report = await stack.sync.incremental()
    assert report.applied.get("reactivate") == 1, report.planned
    assert await stack.active() == set(TEAM) - {"carol"}
    assert not (await stack.agent("carol")).active


async def test_an_unreadable_expiry_disables_nobody_creates_nobody_and_is_reported(
    stack: LdapStack, directory: LdapServer
) -> None:
    await stack.sync.full()
    set_expiry(directory, "bob", -1)  # an integer, but no FILETIME
    directory.add(person_ldif("grace", account_expires=-1))
    directory.modify(f"dn: cn=agents,{GROUPS}\nchangetype: modify\nadd: member\nmember: uid=grace,{PEOPLE}\n")
    report = await stack.sync.incremental()
    assert report.applied == {"conflict": 2}, report.planned
    assert sorted(line.split(":")[0].split()[-1] for line in report.planned) == ["bob", "grace"]
    assert all("accountExpires '-1' is not a Windows FILETIME" in line for line in report.planned)
    assert await stack.active() == set(TEAM)
    assert await stack.services.agents.find_by_user_name("grace") is None
    status = await stack.sync.store.state()
    assert status.last_result is not None and len(status.last_result["planned"]) == 2
