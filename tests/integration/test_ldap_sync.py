"""Directory sync against a real OpenLDAP ``slapd``: provisioning, groups, disablement by every mechanism,
incremental sync, quarantine, an unreachable directory or one answering only part of the scope, TLS
verification, escaped DNs."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

import pytest
from ldap3 import BASE, Connection, Server
from pydantic import SecretStr

from gateway.directory.errors import DirectoryUnavailable
from gateway.directory.feed import FeedEntry
from gateway.directory.plan import GONE, LEFT_AGENTS_GROUP
from gateway.directory.runner import DirectoryRunner, sync_lease
from gateway.directory.store import SyncState
from gateway.directory.wiring import open_directory_sync
from tests.components.ldap_server import (
    FORMER,
    GROUPS,
    PEOPLE,
    ROOT_DN,
    ROOT_PASSWORD,
    SUFFIX,
    SYNC_DN,
    SYNC_PASSWORD,
    LdapServer,
    group_ldif,
    person_ldif,
)
from tests.components.ldap_stack import LdapStack, ldap_stack
from tests.components.ports import LOOPBACK

pytestmark = [pytest.mark.timeout(60)]

TEAM = ("alice", "bob", "carol", "dave", "erin", "frank")


def team_ldif(names: tuple[str, ...] = TEAM) -> str:
    people = "\n".join(
        person_ldif(name, employee_number=f"E{i:03}", manager=None if name == "alice" else "alice")
        for i, name in enumerate(names)
    )
    return "\n".join([people, group_ldif("agents", names), group_ldif("chat-agents", names[:2])])


@pytest.fixture
def directory() -> Iterator[LdapServer]:
    with LdapServer() as server:
        server.add(team_ldif())
        yield server


@pytest.fixture
async def stack(directory: LdapServer) -> AsyncIterator[LdapStack]:
    async with ldap_stack(directory) as built:
        yield built


@pytest.mark.postgres
async def test_on_postgresql_the_sync_provisions_disables_and_holds_its_lease_alone(
    directory: LdapServer, postgres_url: str
) -> None:
    async with ldap_stack(directory, database_url=postgres_url) as stack:
        assert (await stack.sync.full()).applied["create"] == len(TEAM)
        modify(directory, person("bob"), "replace: nsAccountLock", "nsAccountLock: true")
        assert (await stack.sync.incremental()).applied.get("disable") == 1
        assert await stack.active() == set(TEAM) - {"bob"}
        first, second = sync_lease(stack.sync), sync_lease(stack.sync)
        assert await first.hold()
        assert not await second.hold()
        await first.release()
        assert await second.hold()
        await second.release()


def modify(server: LdapServer, dn: str, *lines: str) -> None:
    server.modify("\n".join([f"dn: {dn}", "changetype: modify", *lines]) + "\n")


def person(uid: str) -> str:
    return f"uid={uid},{PEOPLE}"


async def test_a_full_sync_provisions_agents_with_their_attributes_groups_and_manager(stack: LdapStack) -> None:
    report = await stack.sync.full()
    assert report.applied["create"] == len(TEAM)
    bob, alice = await stack.agent("bob"), await stack.agent("alice")
    assert (bob.source, bob.active, bob.email, bob.display_name) == ("ldap", True, "bob@example.com", "Bob Agent")
    assert bob.employee_number == "E001"
    assert bob.manager_id == alice.id
    assert await stack.services.groups.names_of(bob.id) == {"agents", "chat-agents"}
    assert await stack.services.groups.names_of((await stack.agent("carol")).id) == {"agents"}
    created = [r for r in await stack.records() if r.decision == "create"]
    assert {r.agent_name for r in created} == set(TEAM)
    assert all(r.actor == "ldap:directory" for r in created)
    again = await stack.sync.full()
    assert again.applied == {} and again.planned == []


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (
            lambda s: modify(s, person("bob"), "replace: userAccountControl", "userAccountControl: 514"),
            "userAccountControl",
        ),
        (
            lambda s: modify(s, person("bob"), "replace: pwdAccountLockedTime", "pwdAccountLockedTime: 000001010000Z"),
            "pwdAccountLockedTime",
        ),
        (lambda s: modify(s, person("bob"), "replace: nsAccountLock", "nsAccountLock: true"), "nsAccountLock"),
        (lambda s: modify(s, f"cn=agents,{GROUPS}", "delete: member", f"member: {person('bob')}"), LEFT_AGENTS_GROUP),
        (lambda s: s.modify(f"dn: {person('bob')}\nchangetype: delete\n"), GONE),
        (
            lambda s: s.modify(
                f"dn: {person('bob')}\nchangetype: modrdn\nnewrdn: uid=bob\ndeleteoldrdn: 1\nnewsuperior: {FORMER}\n"
            ),
            GONE,
        ),
    ],
    ids=["ad-disabled-bit", "ppolicy-lock", "ns-account-lock", "left-agents-group", "deleted", "moved-out"],
)
async def test_each_disable_mechanism_deprovisions_the_agent_through_the_pipeline_on_the_next_sync(
    stack: LdapStack, directory: LdapServer, change: Callable[[LdapServer], None], reason: str
) -> None:
    await stack.sync.full()
    bob = await stack.agent("bob")
    change(directory)
    report = await (stack.sync.full() if reason == GONE else stack.sync.incremental())
    assert report.applied.get("disable") == 1, report.planned
    disabled = await stack.services.agents.get(bob.id)
    assert disabled is not None and not disabled.active
    assert reason in (disabled.disabled_reason or "")
    [run] = await stack.services.pipeline.runs_of_agent(bob.id)
    assert (run.source, run.actor) == ("ldap", "ldap:directory")
    assert await stack.active() == set(TEAM) - {"bob"}


async def test_re_enabling_in_the_directory_reactivates_only_the_agent_the_sync_disabled(
    stack: LdapStack, directory: LdapServer
) -> None:
    await stack.sync.full()
    modify(directory, person("bob"), "replace: userAccountControl", "userAccountControl: 514")
    await stack.sync.incremental()
    carol = await stack.agent("carol")
    await stack.services.killer.deprovision(carol.id, reason="fraud", actor="admin", source="admin")
    await asyncio.sleep(1.1)  # modifyTimestamp has a one-second resolution
    modify(directory, person("bob"), "replace: userAccountControl", "userAccountControl: 512")
    modify(directory, person("carol"), "replace: displayName", "displayName: Carol Renamed")
    report = await stack.sync.incremental()
    assert report.applied.get("reactivate") == 1
    assert (await stack.agent("bob")).active
    assert not (await stack.agent("carol")).active
    assert (await stack.agent("carol")).display_name == "Carol Renamed"


async def test_a_sync_that_would_disable_most_agents_is_quarantined_until_approved(
    stack: LdapStack, directory: LdapServer
) -> None:
    await stack.sync.full()
    for name in TEAM[1:]:
        directory.modify(f"dn: {person(name)}\nchangetype: delete\n")
    report = await stack.sync.full()
    assert report.quarantine_id is not None and report.held == 5
    assert await stack.active() == set(TEAM)
    [held] = await stack.sync.store.quarantines()
    assert (held.state, held.disabling, held.active_agents) == ("held", 5, 6)
    again = await stack.sync.full()
    assert again.quarantine_id == report.quarantine_id  # the same disables: the same quarantine, one alert
    assert [r.decision for r in await stack.records()].count("quarantined") == 1
    assert await stack.sync.approve(report.quarantine_id, "admin:ops")
    released = await stack.sync.full()
    assert released.quarantine_id is None and released.applied["disable"] == 5
    assert await stack.active() == {"alice"}
    assert await stack.sync.store.quarantines() == []


async def test_an_unreachable_directory_disables_nobody(stack: LdapStack, directory: LdapServer) -> None:
    await stack.sync.full()
    directory.kill()
    with pytest.raises(DirectoryUnavailable, match="Cannot connect"):
        await stack.sync.full()
    with pytest.raises(DirectoryUnavailable):
        await stack.sync.incremental()
    assert await stack.active() == set(TEAM)


async def test_a_bad_tls_certificate_is_refused_and_the_issuing_ca_is_accepted() -> None:
    with LdapServer(tls=True) as server:
        server.add(team_ldif())
        async with ldap_stack(server, url=server.ldaps_url) as stack:
            with pytest.raises(DirectoryUnavailable, match="certificate"):
                await stack.sync.full()
            assert await stack.services.agents.list() == []
        async with ldap_stack(server, url=server.ldaps_url, ca_file=str(server.ca_file)) as stack:
            assert (await stack.sync.full()).applied["create"] == len(TEAM)


async def test_start_tls_verifies_the_certificate_before_the_password_is_sent() -> None:
    with LdapServer(tls=True) as server:
        server.add(team_ldif())
        async with ldap_stack(server, start_tls=True) as stack:
            with pytest.raises(DirectoryUnavailable, match="certificate"):
                await stack.sync.full()
        async with ldap_stack(server, start_tls=True, ca_file=str(server.ca_file)) as stack:
            assert (await stack.sync.full()).applied["create"] == len(TEAM)


async def test_a_renamed_and_moved_entry_keeps_its_agent(stack: LdapStack, directory: LdapServer) -> None:
    await stack.sync.full()
    bob = await stack.agent("bob")
    directory.modify(f"dn: {person('bob')}\nchangetype: modrdn\nnewrdn: uid=robert\ndeleteoldrdn: 1\n")
    report = await stack.sync.full()
    assert report.applied.get("create") is None and report.applied.get("disable") is None
    robert = await stack.agent("robert")
    assert robert.id == bob.id and robert.active
    assert await stack.services.groups.names_of(robert.id) == {"agents", "chat-agents"}


async def _until(condition: Callable[[], Awaitable[bool]], what: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not await condition():
        assert time.monotonic() < deadline, f"not {what} after {timeout} s"
        await asyncio.sleep(0.02)


async def test_the_runner_survives_a_directory_outage_disabling_nobody_and_follows_the_feed_again(
    stack: LdapStack, directory: LdapServer
) -> None:
    runner = asyncio.create_task(DirectoryRunner(stack.sync).run_forever())
    try:
        state = stack.sync.store.state
        await _until(lambda: _feed_is(state, "live"), "live")
        directory.kill()
        await _until(lambda: _feed_is(state, "down"), "down")
        await asyncio.sleep(1.0)  # reconnect attempts fail meanwhile
        assert (await state()).last_error is not None
        assert await stack.active() == set(TEAM)

        directory.start()
        await _until(lambda: _feed_is(state, "live"), "live again")
        modify(directory, person("bob"), "replace: userAccountControl", "userAccountControl: 514")
        await _until(lambda: _inactive(stack, "bob"), "bob disabled", timeout=5)
        assert await stack.active() == set(TEAM) - {"bob"}
    finally:
        runner.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await runner


async def _feed_is(state: Callable[[], Awaitable[SyncState]], wanted: str) -> bool:
    return (await state()).feed_state == wanted


async def _inactive(stack: LdapStack, user_name: str) -> bool:
    return not (await stack.agent(user_name)).active


async def test_a_feed_ended_by_the_servers_size_limit_is_reported_and_the_periodic_syncs_go_on() -> None:
    with LdapServer(size_limit=2) as server:
        server.add(team_ldif())
        async with ldap_stack(server, page_size=2, incremental_interval_seconds=0.2, full_interval_seconds=60) as stack:
            runner = asyncio.create_task(DirectoryRunner(stack.sync).run_forever())
            try:
                await _until(lambda: _feed_is(stack.sync.store.state, "refused"), "refused")
                assert await stack.active() == set(TEAM)  # read page by page despite the limit
                modify(server, person("bob"), "replace: userAccountControl", "userAccountControl: 514")
                await _until(lambda: _inactive(stack, "bob"), "bob disabled by an incremental sync", timeout=5)
            finally:
                runner.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await runner


async def test_the_quarantine_window_counts_disables_made_before_a_restart(directory: LdapServer) -> None:
    async with ldap_stack(directory, quarantine={"max_share": 0.3, "min_agents": 2}) as stack:
        await stack.sync.full()
        modify(directory, person("bob"), "replace: userAccountControl", "userAccountControl: 514")
        assert (await stack.sync.incremental()).applied.get("disable") == 1  # one of six: below the share

        restarted = open_directory_sync(stack.services, stack.sync.settings, metrics=False)
        modify(directory, person("carol"), "replace: userAccountControl", "userAccountControl: 514")
        report = await restarted.incremental()
        assert report.quarantine_id is not None and report.held == 1  # two of six within the window
        assert await stack.active() == set(TEAM) - {"bob"}


async def test_a_read_cut_short_by_the_servers_size_limit_disables_nobody() -> None:
    """A paged search capped below the directory's size (OpenLDAP size.prtotal, a replica with stock limits) ends
    with sizeLimitExceeded, which ldap3 does not raise, and no cookie: the agents after the cap are not deleted."""
    with LdapServer(paged_total_limit=4) as server:
        server.add(team_ldif())
        # The root DN has no limits: the first sync sees everybody.
        async with ldap_stack(server, page_size=2, bind_dn=ROOT_DN, bind_password=ROOT_PASSWORD) as stack:
            assert (await stack.sync.full()).applied["create"] == len(TEAM)
            account = {"bind_dn": SYNC_DN, "bind_password": SecretStr(SYNC_PASSWORD)}
            capped = stack.sync.settings.model_copy(update=account)
            limited = open_directory_sync(stack.services, capped, metrics=False)
            with pytest.raises(DirectoryUnavailable, match="sizeLimitExceeded"):
                await limited.full()
            assert await stack.active() == set(TEAM)
            assert [r.decision for r in await stack.records()].count("disable") == 0


REFERRAL_TO_BRANCH = f"""\
dn: ou=branch,{PEOPLE}
objectClass: referral
objectClass: extensibleObject
ou: branch
ref: ldap://branch.example.com/ou=branch,{PEOPLE}
"""


async def test_a_continuation_reference_in_the_users_scope_disables_nobody(
    stack: LdapStack, directory: LdapServer
) -> None:
    """Part of users_base now held by another server: slapd answers with a continuation reference (RFC 4511
    §4.5.3) in place of its entries, and the agents there are not deleted."""
    await stack.sync.full()
    for name in ("erin", "frank"):
        directory.modify(f"dn: {person(name)}\nchangetype: delete\n")
    directory.add(REFERRAL_TO_BRANCH)
    with pytest.raises(DirectoryUnavailable, match=r"continuation reference.*ldap://branch\.example\.com"):
        await stack.sync.full()
    assert await stack.active() == set(TEAM)


async def test_a_referral_answering_the_groups_search_changes_no_group_and_disables_nobody(
    stack: LdapStack, directory: LdapServer
) -> None:
    """groups_base names an entry another server holds: slapd answers the search with the result referral and
    no entry, which must not read as "every group deleted, nobody in the agents group"."""
    await stack.sync.full()
    bob = await stack.agent("bob")
    regional = f"ou=regional,{SUFFIX}"
    directory.add(REFERRAL_TO_BRANCH.replace(f"ou=branch,{PEOPLE}", regional).replace("ou: branch", "ou: regional"))
    moved = stack.sync.settings.model_copy(update={"groups_base": regional})
    with pytest.raises(DirectoryUnavailable, match="referral"):
        await open_directory_sync(stack.services, moved, metrics=False).full()
    assert await stack.active() == set(TEAM)
    assert await stack.services.groups.names_of(bob.id) == {"agents", "chat-agents"}
    assert await stack.sync.store.quarantines() == []


def feed_entry(server: LdapServer, dn: str) -> FeedEntry:
    """What the change feed hands over for a modification of ``dn``: the DN and attributes as the server sends
    them (OpenLDAP writes an escaped comma as ``\\2C``)."""
    connection = Connection(Server(LOOPBACK, port=server.port), SYNC_DN, SYNC_PASSWORD, auto_bind=True)
    try:
        connection.search(dn, "(objectClass=*)", BASE, attributes=["*", "+"])
        [entry] = [e for e in connection.response if e["type"] == "searchResEntry"]
    finally:
        connection.unbind()
    uuid = entry["raw_attributes"]["entryUUID"][0].decode()
    return FeedEntry("modify", uuid, entry["dn"], entry["raw_attributes"])


@pytest.mark.parametrize("partial", ["incremental", "feed"])
async def test_an_approved_quarantine_lasts_until_a_full_sync_carries_its_disables_out(
    directory: LdapServer, partial: str
) -> None:
    """A feed batch or an incremental sync between the approval and the next full sync does not carry the
    approved disables out (deletions show in full syncs only), so it must not end the approval either."""
    async with ldap_stack(directory, agents_group=None, groups_base=None) as stack:
        await stack.sync.full()
        for name in TEAM[1:]:
            directory.modify(f"dn: {person(name)}\nchangetype: delete\n")
        held = await stack.sync.full()
        assert held.quarantine_id is not None and held.held == 5
        assert await stack.sync.approve(held.quarantine_id, "admin:ops")
        modify(directory, person("alice"), "replace: displayName", "displayName: Alice Renamed")
        if partial == "feed":
            assert await stack.sync.feed_batch([feed_entry(directory, person("alice"))]) is not None
        else:
            await stack.sync.incremental()
        assert [q.state for q in await stack.sync.store.quarantines()] == ["approved"]
        released = await stack.sync.full()
        assert released.quarantine_id is None and released.applied["disable"] == 5
        assert await stack.active() == {"alice"}
        assert await stack.sync.store.quarantines() == []


async def test_a_feed_change_to_a_user_under_a_base_with_an_escaped_comma_is_not_a_departure() -> None:
    """users_base as an admin writes it (``ou=Sales\\, EU``) and the entry's DN as OpenLDAP sends it
    (``ou=Sales\\2C EU``) name one subtree: the change is applied, the agent stays."""
    base = f"ou=Sales\\, EU,{SUFFIX}"
    with LdapServer() as server:
        server.add(
            f"dn: {base}\nobjectClass: organizationalUnit\nou: Sales, EU\n\n"
            + person_ldif("zoe").replace(PEOPLE, base)
            + "\n"
            + group_ldif("agents", [f"uid=zoe,{base}"])
        )
        async with ldap_stack(server, users_base=base) as stack:
            assert (await stack.sync.full()).applied["create"] == 1
            modify(server, f"uid=zoe,{base}", "replace: displayName", "displayName: Zoe Renamed")
            change = feed_entry(server, f"uid=zoe,{base}")
            assert "\\2C" in change.dn
            report = await stack.sync.feed_batch([change])
            assert report is not None
            assert report.applied == {"update": 1}, report.planned
            zoe = await stack.agent("zoe")
            assert zoe.active and zoe.display_name == "Zoe Renamed"
