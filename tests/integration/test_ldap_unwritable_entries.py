"""Directory entries the gateway cannot write as the directory has them, against a real ``slapd`` on SQLite and
PostgreSQL: an agent deleted over SCIM, values longer than their column or holding U+0000 (PostgreSQL refuses
both), a write that fails at apply time. Each is that one user's problem: the sync goes on, and above all its
disables are carried out."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any

import pytest

from gateway.directory.plan import Change
from tests.components.ldap_server import GROUPS, PEOPLE, LdapServer, group_ldif, person_ldif
from tests.components.ldap_stack import LdapStack, ldap_stack

pytestmark = [pytest.mark.timeout(90)]

TEAM = ("alice", "bob", "carol", "dave")
DATABASES = ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]


def person(uid: str) -> str:
    return f"uid={uid},{PEOPLE}"


def modify(server: LdapServer, uid: str, attribute: str, value: str) -> None:
    """Replace one attribute of ``uid``'s entry; a value holding U+0000 goes base64-encoded (RFC 2849)."""
    line = f"{attribute}:: {base64.b64encode(value.encode()).decode()}" if "\x00" in value else f"{attribute}: {value}"
    server.modify(f"dn: {person(uid)}\nchangetype: modify\nreplace: {attribute}\n{line}\n")


def disable_in_directory(server: LdapServer, uid: str) -> None:
    modify(server, uid, "userAccountControl", "514")


def hire(server: LdapServer, *uids: str) -> None:
    """New people in the directory and in its agents group."""
    server.add("\n".join(person_ldif(uid) for uid in uids))
    members = "".join(f"member: {person(uid)}\n" for uid in uids)
    server.modify(f"dn: cn=agents,{GROUPS}\nchangetype: modify\nadd: member\n{members}")


@pytest.fixture
def directory() -> Iterator[LdapServer]:
    with LdapServer() as server:
        server.add("\n".join(person_ldif(name) for name in TEAM) + "\n" + group_ldif("agents", TEAM))
        yield server


@pytest.fixture(params=DATABASES)
def stack_on(request: pytest.FixtureRequest, directory: LdapServer) -> Callable[[], Any]:
    """``async with stack_on() as stack``: the directory's sync on SQLite or on the suite's PostgreSQL."""
    url = request.getfixturevalue("postgres_url") if request.param == "postgresql" else None

    @asynccontextmanager
    async def build() -> AsyncIterator[LdapStack]:
        async with ldap_stack(directory, database_url=url) as stack:
            yield stack

    return build


async def test_an_agent_deleted_over_scim_is_a_conflict_and_later_syncs_still_disable(
    stack_on: Callable[[], Any], directory: LdapServer
) -> None:
    """SCIM DELETE soft-deletes the LDAP agent and its ldap_entries row stays: the entry is reported as a conflict
    (never planned as a create that the row's primary key refuses), by full and incremental syncs alike."""
    async with stack_on() as stack:
        await stack.sync.full()
        bob = await stack.agent("bob")
        await stack.services.agents.mark_deleted(bob.id, "deleted by SCIM", bob.created_at)
        disable_in_directory(directory, "carol")
        report = await stack.sync.full()
        assert f"conflict   bob: its agent (id {bob.id}) was deleted" in "\n".join(report.planned)
        assert report.applied.get("disable") == 1 and "create" not in report.applied
        assert await stack.active() == {"alice", "dave"}

        modify(directory, "bob", "displayName", "Bob Renamed")
        disable_in_directory(directory, "dave")
        again = await stack.sync.incremental()
        assert again.applied.get("disable") == 1 and "create" not in again.applied
        assert await stack.active() == {"alice"}
        assert await stack.services.agents.find_by_user_name("bob") is None


UNSTORABLE = [
    ("employeeNumber", "X" * 65, "employeeNumber is 65 characters long; the gateway stores at most 64"),
    ("displayName", "D" * 257, "displayName is 257 characters long; the gateway stores at most 256"),
    ("mail", "m" * 310 + "@example.com", "mail is 322 characters long; the gateway stores at most 320"),
    ("displayName", "Null\x00Byte", "displayName contains the character U+0000"),
]
IDS = ["employee-number-65", "display-name-257", "mail-322", "display-name-nul"]


@pytest.mark.parametrize(("attribute", "value", "reason"), UNSTORABLE, ids=IDS)
async def test_a_new_entry_with_a_value_the_database_cannot_store_is_a_conflict_of_that_user_alone(
    stack_on: Callable[[], Any], directory: LdapServer, attribute: str, value: str, reason: str
) -> None:
    async with stack_on() as stack:
        await stack.sync.full()
        hire(directory, "erin", "frank")
        modify(directory, "erin", attribute, value)
        disable_in_directory(directory, "bob")
        report = await stack.sync.full()
        [conflict] = [line for line in report.planned if line.startswith("conflict")]
        assert reason in conflict
        assert (report.applied.get("create"), report.applied.get("disable")) == (1, 1)
        assert await stack.active() == {"alice", "carol", "dave", "frank"}
        again = await stack.sync.full()
        assert again.applied == {"conflict": 1}


@pytest.mark.parametrize(("attribute", "value", "reason"), UNSTORABLE, ids=IDS)
async def test_a_managed_agent_changed_to_a_value_the_database_cannot_store_keeps_its_other_changes(
    stack_on: Callable[[], Any], directory: LdapServer, attribute: str, value: str, reason: str
) -> None:
    """The unstorable column is left as it was and reported; the entry's other changes and its disable apply."""
    async with stack_on() as stack:
        await stack.sync.full()
        bob = await stack.agent("bob")
        other, changed = ("mail", "robert@example.com") if attribute == "displayName" else ("displayName", "Robert")
        modify(directory, "bob", attribute, value)
        modify(directory, "bob", other, changed)
        disable_in_directory(directory, "bob")
        report = await stack.sync.full()
        [conflict] = [line for line in report.planned if line.startswith("conflict")]
        assert reason in conflict
        assert (report.applied.get("update"), report.applied.get("disable")) == (1, 1)
        after = await stack.services.agents.get_any(bob.id)
        assert after is not None and not after.active
        stored = {"mail": after.email, "displayName": after.display_name, "employeeNumber": after.employee_number}
        before = {"mail": bob.email, "displayName": bob.display_name, "employeeNumber": bob.employee_number}
        assert stored == before | {other: changed}


async def test_a_create_refused_at_apply_time_leaves_the_other_creates_and_the_disables_to_happen(
    directory: LdapServer,
) -> None:
    """erin logs in for the first time between the plan and its writes, so her userName is taken when the sync
    creates her: that one create fails (and is reported); frank is created, bob is disabled."""
    async with ldap_stack(directory) as stack:
        await stack.sync.full()
        hire(directory, "erin", "frank")
        disable_in_directory(directory, "bob")
        create = stack.sync._applier._create

        async def first_login_races(creates: list[Change], now: datetime) -> None:
            if await stack.services.agents.find_by_user_name("erin") is None:
                await stack.services.agents.link_or_create_from_login(
                    "https://idp.example", "erin-sub", "erin", None, None, now,
                    link_by="external_id_is_sub", email_verified=False,
                )  # fmt: skip
            await create(creates, now)

        stack.sync._applier._create = first_login_races  # type: ignore[method-assign]
        report = await stack.sync.full()
        assert report.failed == ["create     erin"]
        assert (report.applied.get("create"), report.applied.get("disable"), report.applied.get("failed")) == (1, 1, 1)
        assert (await stack.agent("frank")).source == "ldap"
        assert (await stack.agent("erin")).source == "oidc"
        assert not (await stack.agent("bob")).active
        state = await stack.sync.store.state()
        assert state.last_error is not None and "create     erin" in state.last_error
        follow_up = await stack.sync.full()
        assert follow_up.failed == [] and "userName held by another agent (source oidc" in follow_up.planned[0]
