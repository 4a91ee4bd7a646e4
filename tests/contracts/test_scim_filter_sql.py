"""SCIM filters give the same, exact answers on SQLite and PostgreSQL (RFC 7644 §3.4.2.2).

Fifty agents and a few groups are written into a migrated database of each kind; every filter in the table must
return exactly the expected ids on both. userName must match case-insensitively on PostgreSQL too, ASCII-only
folding and code-point ordering must not depend on the server's locale, and LIKE wildcards stay literal.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import cast

import pytest
from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from gateway.storage.migrate import upgrade_to_head
from gateway.storage.schema import agents, group_members, groups
from scim.filters import group_filter, user_filter

ENTERPRISE = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"
BASE = datetime(2025, 3, 1, 9, 30, tzinfo=UTC)
FILLERS = range(13, 51)


def _agent(agent_id: str, user_name: str, day: int, **values: object) -> dict[str, object]:
    return {
        "id": agent_id,
        "user_name": user_name,
        "user_name_key": user_name.lower(),
        "external_id": None,
        "display_name": None,
        "email": None,
        "employee_number": None,
        "manager_id": None,
        "active": True,
        "source": "scim",
        "attributes": {},
        "created_at": BASE + timedelta(days=day),
        "updated_at": BASE + timedelta(days=day, minutes=30),
        **values,
    }


SPECIAL = [
    _agent(
        "a01",
        "BJensen",
        1,
        external_id="ext-A",
        display_name="Barbara Jensen",
        email="bjensen@example.com",
        employee_number="E100",
        manager_id="a02",
    ),
    _agent(
        "a02",
        "jsmith",
        2,
        external_id="EXT-a",
        display_name="John SMITH",
        email="J.Smith@Example.COM",
        employee_number="e100",
        active=False,
    ),
    _agent("a03", "o'brien", 3, display_name="", email=""),
    _agent("a04", 'quote"name', 4, display_name="50% off_sale/x\\y", external_id="a%b", employee_number="E_1"),
    _agent("a05", "ÉVA", 5, display_name="Éva Nagy", email="eva@example.com", external_id="aXb"),
    _agent("a06", "admin' OR 1=1 --", 6, display_name='"; DROP TABLE agents; --', external_id="' OR '1'='1"),
    _agent("a07", "Zed", 7, display_name="zed", external_id="Z"),
    _agent("a08", "zoe", 8, display_name="Zoe", external_id="z", active=False),
    _agent("a09", "ALICE@corp.example", 9, email="Alice@Corp.Example", manager_id="a01"),
    _agent("a10", "bob_smith", 10, display_name="Bob", email="bob_smith@corp.example", manager_id="a01"),
    _agent("a11", "bobXsmith", 11, display_name="bob", email="bobxsmith@corp.example"),
    _agent("a12", "straße", 12, display_name="Straße", employee_number="ß"),
]
FILLER_ROWS = [
    _agent(
        f"f{n}",
        f"Filler{n}",
        n,
        display_name=f"Filler {n}",
        email=f"filler{n}@corp.example" if n % 3 else None,
        employee_number=f"F{n:03d}" if n % 2 else None,
        external_id=f"fx-{n}",
        active=n % 4 != 0,
    )
    for n in FILLERS
]
GROUPS: list[dict[str, object]] = [
    {"id": "g1", "display_name": "Ops", "external_id": "OPS"},
    {"id": "g2", "display_name": "ops-night", "external_id": None},
    {"id": "g3", "display_name": "Sales", "external_id": "x"},
    {"id": "g4", "display_name": "Élite", "external_id": "50%"},
]
MEMBERS = [("g1", "a01"), ("g1", "a02"), ("g2", "a03"), ("g4", "f20")]

ALL = {cast(str, row["id"]) for row in SPECIAL + FILLER_ROWS}
FILLER_IDS = {f"f{n}" for n in FILLERS}


def fillers(predicate: Callable[[int], object]) -> set[str]:
    return {f"f{n}" for n in FILLERS if predicate(n)}


USER_CASES: list[tuple[str, set[str]]] = [
    ('userName eq "bjensen"', {"a01"}),
    ('UserName eq "BJENSEN"', {"a01"}),
    ('userName eq "éva"', {"a05"}),
    ('userName eq "STRASSE"', set()),
    ('userName eq "STRAßE"', {"a12"}),
    ('userName sw "BOB_"', {"a10"}),
    ('userName co "x"', {"a09", "a11"}),
    ('userName ew "@CORP.EXAMPLE"', {"a09"}),
    ('userName eq "admin\' OR 1=1 --"', {"a06"}),
    ('userName eq "quote\\"name"', {"a04"}),
    ('userName gt "z"', {"a05", "a07", "a08"}),
    ('userName sw "filler1"', fillers(lambda n: str(n).startswith("1"))),
    ('id eq "a01"', {"a01"}),
    ('id eq "A01"', set()),
    ('externalId eq "ext-A"', {"a01"}),
    ('externalId co "T-a"', {"a02"}),
    ('externalId sw "ext"', {"a01"}),
    ('externalId ew "A"', {"a01"}),
    ('externalId co "%"', {"a04"}),
    ('externalId co "_"', set()),
    ('externalId eq "Z"', {"a07"}),
    ('externalId gt "Z"', {"a04", "a05", "a01", "a08"} | FILLER_IDS),
    ('externalId lt "Z"', {"a02", "a06"}),
    ("externalId eq null", {"a03", "a09", "a10", "a11", "a12"}),
    ('displayName eq "JOHN smith"', {"a02"}),
    ('displayName eq "bob"', {"a10", "a11"}),
    ('displayName co "% OFF_"', {"a04"}),
    ('displayName co "o_f"', set()),
    ('displayName co "/x\\\\y"', {"a04"}),
    ('displayName sw "éva"', set()),
    ('displayName sw "ÉVA"', {"a05"}),
    ('displayName eq "STRASSE"', set()),
    ('displayName eq "STRAßE"', {"a12"}),
    ('displayName gt "zed"', {"a05", "a08"}),
    ("displayName pr", ALL - {"a03", "a09"}),
    ('displayName ne "bob"', ALL - {"a10", "a11"}),
    ("active eq false", {"a02", "a08"} | fillers(lambda n: n % 4 == 0)),
    ("active eq true and emails pr", {"a01", "a05", "a09", "a10", "a11"} | fillers(lambda n: n % 4 and n % 3)),
    ('emails.value eq "j.smith@example.com"', {"a02"}),
    ('emails[type eq "work"].value eq "ALICE@corp.example"', {"a09"}),
    ('emails[type eq "work" and value sw "BOB_"]', {"a10"}),
    ('emails[value co "_"]', {"a10"}),
    ('emails[type eq "work"]', ALL - {"a04", "a06", "a07", "a08", "a12"} - fillers(lambda n: n % 3 == 0)),
    ('emails.value ew "@corp.example" and not (userName sw "filler")', {"a09", "a10", "a11"}),
    (f'{ENTERPRISE}:employeeNumber eq "E100"', {"a01", "a02"}),
    (f'{ENTERPRISE}:employeeNumber eq "SS"', set()),
    (f'{ENTERPRISE}:employeeNumber co "_"', {"a04"}),
    (f'{ENTERPRISE}:employeeNumber sw "f04"', fillers(lambda n: n % 2 and 40 <= n < 50)),
    (f'{ENTERPRISE}:manager.value eq "a01"', {"a09", "a10"}),
    (f"not ({ENTERPRISE}:manager.value pr)", ALL - {"a01", "a09", "a10"}),
    ('meta.created gt "2025-04-19T09:30:00Z"', fillers(lambda n: n > 49)),
    ('meta.created ge "2025-04-19T11:30:00+02:00"', fillers(lambda n: n >= 49)),
    ('meta.created lt "2025-03-02T05:00:00-05:00"', {"a01"}),
    ('meta.lastModified eq "2025-03-03T10:00:00Z"', {"a02"}),
    ('meta.lastModified le "2025-03-03T10:00:00Z" and meta.created ge "2025-03-02T09:30:00.000001Z"', {"a02"}),
    ('userName eq "jsmith" or userName eq "bjensen" and active eq false', {"a02"}),
    ('userName eq "jsmith" or userName eq "bjensen" and active eq true', {"a01", "a02"}),
    ('not (displayName co "a") and not (userName sw "filler")', {"a02", "a03", "a07", "a08", "a09", "a10", "a11"}),
]
GROUP_CASES: list[tuple[str, set[str]]] = [
    ('displayName eq "OPS"', {"g1"}),
    ('displayName sw "ops"', {"g1", "g2"}),
    ('displayName eq "élite"', set()),
    ('displayName eq "ÉLITE"', {"g4"}),
    ('externalId eq "ops"', set()),
    ('externalId co "%"', {"g4"}),
    ('members[value eq "a01"]', {"g1"}),
    ('members.value eq "f20"', {"g4"}),
    ('members[value eq "a01" and value eq "a02"]', set()),
    ('members[value eq "a01"] and members[value eq "a02"]', {"g1"}),
    ("not (members pr)", {"g3"}),
]


@pytest.fixture(
    params=[
        pytest.param("sqlite", id="sqlite"),
        pytest.param("postgresql", id="postgresql", marks=pytest.mark.postgres),
    ]
)
async def engine(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    url = f"sqlite+aiosqlite:///{tmp_path}/channelgate.db"
    if request.param == "postgresql":
        url = request.getfixturevalue("postgres_url")
    await upgrade_to_head(url)
    engine = create_async_engine(url)
    async with engine.begin() as conn:
        await conn.execute(insert(agents), SPECIAL + FILLER_ROWS)
        await conn.execute(insert(groups), [{**g, "created_at": BASE, "updated_at": BASE} for g in GROUPS])
        await conn.execute(insert(group_members), [{"group_id": g, "agent_id": a} for g, a in MEMBERS])
    yield engine
    await engine.dispose()


async def test_every_user_filter_returns_exactly_the_expected_agents(engine: AsyncEngine) -> None:
    wrong = {}
    async with engine.connect() as conn:
        for text, expected in USER_CASES:
            found = set((await conn.scalars(select(agents.c.id).where(user_filter(text)))).all())
            if found != expected:
                wrong[text] = {"missing": expected - found, "extra": found - expected}

    assert wrong == {}


async def test_every_group_filter_returns_exactly_the_expected_groups(engine: AsyncEngine) -> None:
    wrong = {}
    async with engine.connect() as conn:
        for text, expected in GROUP_CASES:
            found = set((await conn.scalars(select(groups.c.id).where(group_filter(text)))).all())
            if found != expected:
                wrong[text] = {"missing": expected - found, "extra": found - expected}

    assert wrong == {}


async def test_injection_strings_in_a_filter_leave_the_tables_intact(engine: AsyncEngine) -> None:
    async with engine.connect() as conn:
        for text in ('displayName eq "\\"; DROP TABLE agents; --"', "externalId eq \"' OR '1'='1\""):
            assert len((await conn.scalars(select(agents.c.id).where(user_filter(text)))).all()) <= 1
        assert len((await conn.scalars(select(agents.c.id))).all()) == len(ALL)
