"""The agent repository's contract on SQLite and PostgreSQL: a login finds or creates one agent keyed on (issuer,
subject), a link rule links only the provisioned agent it names and never one an earlier login made, concurrent
logins link once, and a deleted agent frees its userName but never signs in again."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta, timezone

import pytest
from pydantic import SecretStr
from sqlalchemy import insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.errors import AccessDenied, NotFound
from gateway.settings import DatabaseSettings, LinkRule
from gateway.storage.agents import AgentRepository, AmbiguousLink, UserNameConflict
from gateway.storage.database import Database
from gateway.storage.quick_reads import QuickReads
from gateway.storage.schema import agents
from tests.contracts.agent_logins import BY_NAME, ISSUER, NOW


async def _provision(
    engine: AsyncEngine,
    user_name: str,
    agent_id: str = "scim-1",
    *,
    external_id: str | None = None,
    source: str = "scim",
    active: bool = True,
) -> None:
    """An agent created by SCIM (or ``source``): it has a userName but no (issuer, subject) link yet."""
    async with engine.begin() as conn:
        await conn.execute(
            insert(agents).values(
                id=agent_id,
                user_name=user_name,
                user_name_key=user_name.lower(),
                external_id=external_id,
                active=active,
                source=source,
                attributes={},
                version=1,
                created_at=NOW,
                updated_at=NOW,
            )
        )


async def test_first_login_creates_an_active_agent_linked_to_issuer_and_subject(repo: AgentRepository) -> None:
    agent = await repo.link_or_create_from_login(
        ISSUER, "sub-1", "Alice", "alice@example.com", "Alice A", NOW, **(BY_NAME | {"email_verified": True})
    )

    assert (agent.user_name, agent.email, agent.display_name) == ("Alice", "alice@example.com", "Alice A")
    assert (agent.oidc_issuer, agent.oidc_subject, agent.source) == (ISSUER, "sub-1", "oidc")
    assert agent.active
    assert not agent.deleted
    assert agent.may_sign_in
    assert agent.version == 1
    assert agent.created_at == agent.updated_at == NOW
    assert await repo.get(agent.id) == agent


async def test_a_login_with_an_unverified_email_creates_an_agent_without_it_so_no_email_event_finds_it(
    repo: AgentRepository,
) -> None:
    alice = await repo.link_or_create_from_login(
        ISSUER, "sub-1", "alice", "alice@example.com", None, NOW, **(BY_NAME | {"email_verified": True})
    )
    claimant = await repo.link_or_create_from_login(
        ISSUER, "sub-2", "mallory", "Alice@Example.com", None, NOW, **BY_NAME
    )

    assert claimant.email is None
    assert await repo.find_by_email("ALICE@example.com") == [alice]


async def test_find_by_email_returns_every_live_agent_with_that_email_by_user_name(repo: AgentRepository) -> None:
    verified = BY_NAME | {"email_verified": True}
    found = [
        await repo.link_or_create_from_login(ISSUER, f"sub-{name}", name, "shared@example.com", None, NOW, **verified)
        for name in ("carol", "alice", "bob", "dave")
    ]
    await repo.mark_deleted(found[3].id, None, NOW)

    assert [agent.user_name for agent in await repo.find_by_email("Shared@Example.com")] == ["alice", "bob", "carol"]


async def test_login_returns_the_same_agent_for_the_same_issuer_and_subject(repo: AgentRepository) -> None:
    first = await repo.link_or_create_from_login(ISSUER, "sub-1", "alice", None, None, NOW, **BY_NAME)
    again = await repo.link_or_create_from_login(ISSUER, "sub-1", "alice-renamed", None, None, NOW, **BY_NAME)

    assert again == first
    assert await repo.find_by_oidc(ISSUER, "sub-1") == first


async def test_user_name_is_unique_case_insensitively_among_live_agents(
    repo: AgentRepository, engine: AsyncEngine
) -> None:
    await repo.link_or_create_from_login(ISSUER, "sub-1", "Alice", None, None, NOW, **BY_NAME)

    with pytest.raises(UserNameConflict):
        await repo.link_or_create_from_login(ISSUER, "sub-2", "ALICE", None, None, NOW, **BY_NAME)
    with pytest.raises(IntegrityError):
        await _provision(engine, "aLiCe")
    assert (await repo.find_by_user_name("aLIce")) is not None


async def test_a_login_the_link_rule_does_not_name_never_takes_a_provisioned_agent_by_user_name(
    repo: AgentRepository, engine: AsyncEngine
) -> None:
    await _provision(engine, "alice", external_id="alice-sub")

    with pytest.raises(UserNameConflict) as refused:
        await repo.link_or_create_from_login(
            ISSUER, "attacker-sub", "Alice", None, None, NOW, link_by="external_id_is_sub", email_verified=False
        )

    assert isinstance(refused.value, AccessDenied)
    assert refused.value.status == 403
    provisioned = await repo.get("scim-1")
    assert provisioned is not None
    assert (provisioned.oidc_issuer, provisioned.oidc_subject) == (None, None)
    assert await repo.find_by_oidc(ISSUER, "attacker-sub") is None


LINK_CASES = [
    pytest.param("external_id_is_sub", "sub-1", "someone-else", None, False, id="external_id_is_sub"),
    pytest.param(
        "user_name_is_preferred_username", "sub-1", "ALICE", None, False, id="user_name_is_preferred_username"
    ),
    pytest.param("user_name_is_email", "sub-1", "ally", "Alice@Example.com", True, id="user_name_is_email"),
]


@pytest.mark.parametrize(("rule", "subject", "user_name", "email", "verified"), LINK_CASES)
async def test_each_link_rule_links_exactly_the_provisioned_agent_it_names(
    repo: AgentRepository,
    engine: AsyncEngine,
    rule: LinkRule,
    subject: str,
    user_name: str,
    email: str | None,
    verified: bool,
) -> None:
    named = "alice@example.com" if rule == "user_name_is_email" else "alice"
    await _provision(engine, named, "scim-alice", external_id="sub-1")
    await _provision(engine, "bob", "scim-bob", external_id="sub-2")

    agent = await repo.link_or_create_from_login(
        ISSUER, subject, user_name, email, None, NOW, link_by=rule, email_verified=verified
    )

    assert (agent.id, agent.source, agent.oidc_issuer, agent.oidc_subject) == ("scim-alice", "scim", ISSUER, "sub-1")
    assert (agent.user_name, agent.version, agent.updated_at) == (named, 1, NOW)
    assert await repo.find_by_oidc(ISSUER, "sub-1") == agent
    bob = await repo.get("scim-bob")
    assert bob is not None and bob.oidc_subject is None
    assert len(await repo.list()) == 2
    again = await repo.link_or_create_from_login(
        ISSUER, subject, "renamed", None, None, NOW, link_by=rule, email_verified=False
    )
    assert again == agent


async def test_an_unverified_email_links_nothing_and_the_taken_user_name_is_refused(
    repo: AgentRepository, engine: AsyncEngine
) -> None:
    await _provision(engine, "alice@example.com")

    with pytest.raises(UserNameConflict):
        await repo.link_or_create_from_login(
            ISSUER, "sub-1", "alice@example.com", "alice@example.com", None, NOW,
            link_by="user_name_is_email", email_verified=False,
        )  # fmt: skip

    provisioned = await repo.get("scim-1")
    assert provisioned is not None and provisioned.oidc_subject is None


async def test_a_provisioned_agent_the_rule_does_not_name_is_left_alone_and_a_new_agent_is_created(
    repo: AgentRepository, engine: AsyncEngine
) -> None:
    await _provision(engine, "alice", external_id="alice-sub")

    agent = await repo.link_or_create_from_login(
        ISSUER, "carol-sub", "carol", None, None, NOW, link_by="external_id_is_sub", email_verified=False
    )

    assert (agent.source, agent.user_name) == ("oidc", "carol")
    provisioned = await repo.get("scim-1")
    assert provisioned is not None and provisioned.oidc_subject is None


@pytest.mark.parametrize(("rule", "subject", "user_name", "email", "verified"), LINK_CASES)
async def test_an_agent_created_by_an_earlier_login_is_never_linked_by_any_rule(
    repo: AgentRepository,
    engine: AsyncEngine,
    rule: LinkRule,
    subject: str,
    user_name: str,
    email: str | None,
    verified: bool,
) -> None:
    named = "alice@example.com" if rule == "user_name_is_email" else "alice"
    await _provision(engine, named, "oidc-alice", external_id="sub-1", source="oidc")

    with pytest.raises(UserNameConflict):
        await repo.link_or_create_from_login(
            ISSUER, subject, named, email, None, NOW, link_by=rule, email_verified=verified
        )

    victim = await repo.get("oidc-alice")
    assert victim is not None and victim.oidc_subject is None
    assert await repo.find_by_oidc(ISSUER, subject) is None


async def test_a_deleted_provisioned_agent_is_not_linked(repo: AgentRepository, engine: AsyncEngine) -> None:
    await _provision(engine, "alice", external_id="sub-1")
    await repo.mark_deleted("scim-1", "left", NOW)

    agent = await repo.link_or_create_from_login(
        ISSUER, "sub-1", "alice", None, None, NOW, link_by="external_id_is_sub", email_verified=False
    )

    assert agent.id != "scim-1"
    assert agent.source == "oidc"


async def test_a_disabled_provisioned_agent_is_linked_and_returned_disabled(
    repo: AgentRepository, engine: AsyncEngine
) -> None:
    await _provision(engine, "alice", active=False)

    agent = await repo.link_or_create_from_login(ISSUER, "sub-1", "alice", None, None, NOW, **BY_NAME)

    assert (agent.id, agent.oidc_subject, agent.may_sign_in) == ("scim-1", "sub-1", False)


async def test_a_rule_naming_two_provisioned_agents_links_neither(repo: AgentRepository, engine: AsyncEngine) -> None:
    await _provision(engine, "alice", "scim-a", external_id="sub-1")
    await _provision(engine, "alice2", "ldap-a", external_id="sub-1", source="ldap")

    with pytest.raises(AmbiguousLink):
        await repo.link_or_create_from_login(
            ISSUER, "sub-1", "al", None, None, NOW, link_by="external_id_is_sub", email_verified=False
        )

    assert await repo.find_by_oidc(ISSUER, "sub-1") is None


async def test_an_already_linked_agent_cannot_be_taken_by_a_second_account(
    repo: AgentRepository, engine: AsyncEngine
) -> None:
    await _provision(engine, "alice")
    owner = await repo.link_or_create_from_login(ISSUER, "sub-1", "alice", None, None, NOW, **BY_NAME)

    with pytest.raises(UserNameConflict):
        await repo.link_or_create_from_login(ISSUER, "sub-2", "Alice", None, None, NOW, **BY_NAME)

    assert await repo.get("scim-1") == owner
    assert await repo.find_by_oidc(ISSUER, "sub-2") is None


async def test_concurrent_link_attempts_by_two_accounts_link_one_and_refuse_the_other(
    repo: AgentRepository, engine: AsyncEngine
) -> None:
    await _provision(engine, "alice")

    results = await asyncio.gather(
        *(repo.link_or_create_from_login(ISSUER, f"sub-{n}", "alice", None, None, NOW, **BY_NAME) for n in range(6)),
        return_exceptions=True,
    )

    linked = [r for r in results if not isinstance(r, BaseException)]
    assert len(linked) == 1, results
    assert all(isinstance(r, UserNameConflict) for r in results if r not in linked)
    assert linked[0].id == "scim-1"
    winner = await repo.get("scim-1")
    assert winner is not None and winner.oidc_subject == linked[0].oidc_subject
    assert len(await repo.list()) == 1


async def test_concurrent_logins_of_one_account_link_the_provisioned_agent_once(
    repo: AgentRepository, engine: AsyncEngine
) -> None:
    await _provision(engine, "alice")

    results = await asyncio.gather(
        *(repo.link_or_create_from_login(ISSUER, "sub-1", "alice", None, None, NOW, **BY_NAME) for _ in range(5))
    )

    assert {agent.id for agent in results} == {"scim-1"}
    assert len(await repo.list()) == 1


async def test_the_same_subject_at_another_issuer_is_another_account(repo: AgentRepository) -> None:
    await repo.link_or_create_from_login(ISSUER, "sub-1", "alice", None, None, NOW, **BY_NAME)

    with pytest.raises(UserNameConflict):
        await repo.link_or_create_from_login(
            "https://other-idp.example.com", "sub-1", "alice", None, None, NOW, **BY_NAME
        )


async def test_concurrent_first_logins_of_one_account_create_one_agent(repo: AgentRepository) -> None:
    results = await asyncio.gather(
        *(repo.link_or_create_from_login(ISSUER, "sub-1", "alice", None, None, NOW, **BY_NAME) for _ in range(5))
    )

    assert len({agent.id for agent in results}) == 1
    assert len(await repo.list()) == 1


async def test_deleted_agent_frees_its_user_name_for_rehire(repo: AgentRepository) -> None:
    leaver = await repo.link_or_create_from_login(ISSUER, "sub-old", "alice", None, None, NOW, **BY_NAME)
    deleted = await repo.mark_deleted(leaver.id, "left the company", NOW + timedelta(days=1))

    rehired = await repo.link_or_create_from_login(
        ISSUER, "sub-new", "Alice", None, None, NOW + timedelta(days=30), **BY_NAME
    )

    assert (deleted.deleted, deleted.active, deleted.version) == (True, False, 2)
    assert rehired.id != leaver.id
    assert await repo.get(leaver.id) is None
    assert await repo.find_by_user_name("alice") == rehired


async def test_a_deleted_agent_signing_in_again_gets_its_deleted_record_not_a_fresh_one(
    repo: AgentRepository,
) -> None:
    leaver = await repo.link_or_create_from_login(ISSUER, "sub-1", "alice", None, None, NOW, **BY_NAME)
    await repo.mark_deleted(leaver.id, "left", NOW)

    again = await repo.link_or_create_from_login(ISSUER, "sub-1", "alice", None, None, NOW, **BY_NAME)

    assert again.id == leaver.id
    assert not again.may_sign_in


async def test_disabling_keeps_the_reason_and_bumps_the_version(repo: AgentRepository) -> None:
    agent = await repo.link_or_create_from_login(ISSUER, "sub-1", "alice", None, None, NOW, **BY_NAME)
    later = NOW + timedelta(hours=1)

    disabled = await repo.set_active(agent.id, False, "SCIM active=false", later)
    enabled = await repo.set_active(agent.id, True, None, later + timedelta(hours=1))

    assert (disabled.active, disabled.disabled_reason, disabled.version, disabled.updated_at) == (
        False,
        "SCIM active=false",
        2,
        later,
    )
    assert not disabled.may_sign_in
    assert (enabled.active, enabled.disabled_reason, enabled.version) == (True, None, 3)
    assert enabled.created_at == NOW


async def test_changing_an_unknown_or_deleted_agent_raises_not_found(repo: AgentRepository) -> None:
    agent = await repo.link_or_create_from_login(ISSUER, "sub-1", "alice", None, None, NOW, **BY_NAME)
    await repo.mark_deleted(agent.id, None, NOW)

    with pytest.raises(NotFound):
        await repo.set_active("no-such-agent", False, "x", NOW)
    with pytest.raises(NotFound):
        await repo.set_active(agent.id, True, None, NOW)


@pytest.fixture(params=["engine", "quick-reader"])
async def finder(
    request: pytest.FixtureRequest, database: Database, database_url: str
) -> AsyncIterator[AgentRepository]:
    """The repository whose ``find`` reads through the engine, or through the quick reader (the admin path)."""
    if request.param == "engine":
        yield AgentRepository(database.engine)
        return
    reads = QuickReads.open(DatabaseSettings(url=SecretStr(database_url)), database.engine)
    yield AgentRepository(database.engine, reads)
    await reads.dispose()


async def test_find_accepts_an_id_or_a_user_name_and_prefers_the_id(finder: AgentRepository) -> None:
    agent = await finder.link_or_create_from_login(ISSUER, "sub-1", "Alice", None, None, NOW, **BY_NAME)
    # Another agent whose userName is spelled like the first one's id: the id decides.
    namesake = await finder.link_or_create_from_login(ISSUER, "sub-2", agent.id, None, None, NOW, **BY_NAME)

    assert await finder.find(agent.id) == agent
    assert await finder.find(agent.id.upper()) == namesake
    assert await finder.find("ALICE") == agent
    assert await finder.find("bob") is None
    await finder.mark_deleted(agent.id, None, NOW)
    assert await finder.find("alice") is None


async def test_list_pages_through_live_agents_by_user_name(repo: AgentRepository) -> None:
    for number, name in enumerate(["carol", "Alice", "bob", "dave"]):
        await repo.link_or_create_from_login(ISSUER, f"sub-{number}", name, None, None, NOW, **BY_NAME)
    dave = await repo.find("dave")
    assert dave is not None
    await repo.mark_deleted(dave.id, None, NOW)

    first_page = await repo.list(limit=2)
    second_page = await repo.list(limit=2, offset=2)

    assert [a.user_name for a in first_page + second_page] == ["Alice", "bob", "carol"]


async def test_timestamps_are_stored_and_returned_as_aware_utc(repo: AgentRepository) -> None:
    paris = datetime(2025, 3, 1, 10, 30, tzinfo=timezone(timedelta(hours=1)))

    agent = await repo.link_or_create_from_login(ISSUER, "sub-1", "alice", None, None, paris, **BY_NAME)

    assert agent.created_at == NOW
    assert agent.created_at.tzinfo is UTC
    with pytest.raises(ValueError, match="timezone-aware"):
        await repo.set_active(agent.id, False, "x", datetime(2025, 3, 1, 9, 30))


async def test_making_an_inactive_agent_active_stamps_when_and_updating_an_active_one_does_not(
    repo: AgentRepository,
) -> None:
    # A late Shared Signals disable is stale only after a re-enable (gateway/signals/receiver.py), not any update.
    agent = await repo.link_or_create_from_login(ISSUER, "sub-1", "alice", None, None, NOW, **BY_NAME)
    assert agent.enabled_at is None and agent.active_since == NOW

    await repo.set_active(agent.id, True, None, NOW + timedelta(hours=1))  # already active: an update
    assert (await repo.get(agent.id)).active_since == NOW  # type: ignore[union-attr]

    await repo.set_active(agent.id, False, "left", NOW + timedelta(hours=2))
    disabled = await repo.get(agent.id)
    assert disabled is not None and disabled.enabled_at is None

    await repo.set_active(agent.id, True, None, NOW + timedelta(hours=3))
    await repo.set_active(agent.id, True, None, NOW + timedelta(hours=4))
    enabled = await repo.get(agent.id)
    assert enabled is not None and enabled.enabled_at == enabled.active_since == NOW + timedelta(hours=3)
