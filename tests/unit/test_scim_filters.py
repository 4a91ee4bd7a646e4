"""SCIM filters → SQL (RFC 7644 §3.4.2.2): what each filter selects, the SQL it becomes, and what it refuses.

Every accepted filter is run against a small SQLite table with the awkward values (NULL against empty, case
variants, LIKE wildcards, quotes, non-ASCII); refusals are ``invalidFilter`` with a message naming the problem.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from sqlalchemy import Engine, create_engine, insert, select
from sqlalchemy.dialects import postgresql, sqlite

from gateway.storage.schema import agents, group_members, groups, metadata
from scim.errors import InvalidFilter, ScimError
from scim.filter_syntax import MAX_FILTER_DEPTH, MAX_FILTER_LENGTH, MAX_FILTER_TERMS
from scim.filters import group_filter, user_filter

ENTERPRISE = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"


def _moment(day: int) -> datetime:
    return datetime(2025, 1, day, 9, 30, tzinfo=UTC)


def _agent(agent_id: str, user_name: str, **values: object) -> dict[str, object]:
    row: dict[str, object] = {
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
        "created_at": _moment(int(agent_id[1:])),
        "updated_at": _moment(int(agent_id[1:]) + 10),
    }
    row.update(values)
    return row


AGENTS = [
    _agent(
        "u1",
        "BJensen",
        external_id="ext-A",
        display_name="Barbara Jensen",
        email="bjensen@example.com",
        employee_number="E100",
        manager_id="u2",
    ),
    _agent(
        "u2",
        "jsmith",
        external_id="EXT-a",
        display_name="john smith",
        email="J.Smith@Example.com",
        employee_number="e100",
        active=False,
    ),
    _agent("u3", "o'brien", display_name="", email=""),
    _agent("u4", 'quote"name', display_name="50% off_sale/x\\y", external_id="a%b", employee_number="E_1"),
    _agent("u5", "ÉVA", display_name="Éva Nagy", email="eva@example.com", external_id="aXb"),
    _agent("u6", "admin' OR 1=1 --", display_name='"; DROP TABLE agents; --', external_id="' OR '1'='1"),
]
GROUPS: list[dict[str, object]] = [
    {"id": "g1", "display_name": "Ops", "external_id": "OPS", "created_at": _moment(1), "updated_at": _moment(2)},
    {"id": "g2", "display_name": "ops-night", "external_id": None, "created_at": _moment(3), "updated_at": _moment(4)},
    {"id": "g3", "display_name": "Sales", "external_id": "x", "created_at": _moment(5), "updated_at": _moment(6)},
]
MEMBERS = [("g1", "u1"), ("g1", "u2"), ("g2", "u3")]


@pytest.fixture(scope="module")
def engine() -> Iterator[Engine]:
    engine = create_engine("sqlite://")
    metadata.create_all(engine)
    with engine.begin() as conn:
        conn.execute(insert(agents), AGENTS)
        conn.execute(insert(groups), GROUPS)
        conn.execute(insert(group_members), [{"group_id": g, "agent_id": a} for g, a in MEMBERS])
    yield engine
    engine.dispose()


def _users(engine: Engine, text: str) -> set[str]:
    with engine.connect() as conn:
        return set(conn.scalars(select(agents.c.id).where(user_filter(text))))


def _groups(engine: Engine, text: str) -> set[str]:
    with engine.connect() as conn:
        return set(conn.scalars(select(groups.c.id).where(group_filter(text))))


ALL = {"u1", "u2", "u3", "u4", "u5", "u6"}

USER_FILTERS = [
    # userName is case-insensitive (RFC 7643 §4.1.1), attribute names and operators too (RFC 7644 §3.4.2.2).
    ('userName eq "bjensen"', {"u1"}),
    ('USERNAME EQ "BJENSEN"', {"u1"}),
    ('urn:ietf:params:scim:schemas:core:2.0:User:userName eq "BJensen"', {"u1"}),
    ('userName eq "éva"', {"u5"}),
    ('userName sw "J"', {"u2"}),
    ('userName co "\'"', {"u3", "u6"}),
    ('userName eq "quote\\"name"', {"u4"}),
    ('userName eq "admin\' OR 1=1 --"', {"u6"}),
    ('userName ne "bjensen"', ALL - {"u1"}),
    # id and externalId are caseExact: LIKE must not ignore case on SQLite.
    ('id eq "u1"', {"u1"}),
    ('id eq "U1"', set()),
    ('externalId eq "ext-A"', {"u1"}),
    ('externalId co "T-a"', {"u2"}),
    ('externalId co "t-a"', set()),
    ('externalId sw "EXT"', {"u2"}),
    ('externalId ew "A"', {"u1"}),
    ('externalId co "%"', {"u4"}),
    ('externalId co "_"', set()),
    ('externalId eq "a_b"', set()),
    ('externalId sw "a"', {"u4", "u5"}),
    ('externalId ne "ext-A"', ALL - {"u1"}),
    ("externalId pr", {"u1", "u2", "u4", "u5", "u6"}),
    ("externalId eq null", {"u3"}),
    ("externalId ne null", {"u1", "u2", "u4", "u5", "u6"}),
    ("externalId eq \"' OR '1'='1\"", {"u6"}),
    # displayName is caseExact false: ASCII letters fold, others compare exactly.
    ('displayName eq "BARBARA JENSEN"', {"u1"}),
    ('displayName co "SMITH"', {"u2"}),
    ('displayName sw "ÉVA"', {"u5"}),
    ('displayName sw "éva"', set()),
    ('displayName co "% off_"', {"u4"}),
    ('displayName co "/x\\\\y"', {"u4"}),
    ('displayName co "f_s"', {"u4"}),
    ('displayName co "o_f"', set()),
    ('displayName co "DROP TABLE agents"', {"u6"}),
    ("displayName pr", {"u1", "u2", "u4", "u5", "u6"}),
    ('displayName eq ""', {"u3"}),
    ('displayName gt "j"', {"u2", "u5"}),
    ('displayName le "barbara jensen"', {"u1", "u3", "u4", "u6"}),
    ('displayName ne "john smith"', ALL - {"u2"}),
    # active is boolean.
    ("active eq true", ALL - {"u2"}),
    ("active eq false", {"u2"}),
    ("active ne true", {"u2"}),
    ("active pr", ALL),
    # emails: the one work email in agents.email.
    ('emails.value eq "j.smith@example.com"', {"u2"}),
    ('emails[type eq "work"].value eq "BJENSEN@example.com"', {"u1"}),
    ('emails[type eq "Work"].value co "example"', {"u1", "u2", "u5"}),
    ('emails[value ew ".com"]', {"u1", "u2", "u5"}),
    ('emails[type eq "work" and value sw "eva"]', {"u5"}),
    ('emails[type eq "work"]', {"u1", "u2", "u3", "u5"}),
    ("emails pr", {"u1", "u2", "u5"}),
    ('emails.value ne "eva@example.com"', {"u1", "u2", "u3"}),
    ('not (emails[type eq "work"].value co "example")', {"u3", "u4", "u6"}),
    # Enterprise extension attributes need their URN.
    (f'{ENTERPRISE}:employeeNumber eq "e100"', {"u1", "u2"}),
    (f'{ENTERPRISE.upper()}:EMPLOYEENUMBER co "_"', {"u4"}),
    (f'{ENTERPRISE}:manager.value eq "u2"', {"u1"}),
    (f"{ENTERPRISE}:manager.value pr", {"u1"}),
    # meta timestamps compare chronologically, whatever the offset they are written with.
    ('meta.created gt "2025-01-04T09:30:00Z"', {"u5", "u6"}),
    ('meta.created ge "2025-01-04T11:30:00+02:00"', {"u4", "u5", "u6"}),
    ('meta.created eq "2025-01-02T09:30:00Z"', {"u2"}),
    ('meta.lastModified lt "2025-01-12T09:30:00.000001Z"', {"u1", "u2"}),
    ('meta.created ne "2025-01-02T09:30:00Z"', ALL - {"u2"}),
    # Logic: "not" over "and" over "or" (RFC 7644 §3.4.2.2); absent values never flip to a match under "not".
    ('userName eq "jsmith" or userName eq "bjensen" and active eq true', {"u1", "u2"}),
    ('userName eq "jsmith" or userName eq "bjensen" and active eq false', {"u2"}),
    ('(userName eq "bjensen" or userName eq "jsmith") and active eq false', {"u2"}),
    ('userName eq "jsmith" and active eq false or userName eq "o\'brien"', {"u2", "u3"}),
    ('not (externalId eq "ext-A")', ALL - {"u1"}),
    ('not (not (externalId eq "ext-A"))', {"u1"}),
    ('not (displayName co "A")', {"u2", "u3"}),
    ('active eq true and not (emails pr or displayName eq "")', {"u4", "u6"}),
    ('userName eq"bjensen"and(active eq true)', {"u1"}),
]


@pytest.mark.parametrize(("text", "expected"), USER_FILTERS, ids=[text for text, _ in USER_FILTERS])
def test_a_user_filter_selects_exactly_the_matching_agents(engine: Engine, text: str, expected: set[str]) -> None:
    assert _users(engine, text) == expected


GROUP_FILTERS = [
    ('displayName eq "ops"', {"g1"}),
    ('DisplayName sw "OPS"', {"g1", "g2"}),
    ('urn:ietf:params:scim:schemas:core:2.0:Group:displayName eq "Sales"', {"g3"}),
    ('externalId eq "ops"', set()),
    ('externalId eq "OPS"', {"g1"}),
    ('members[value eq "u1"]', {"g1"}),
    ('members.value eq "u3"', {"g2"}),
    ('members[value eq "u1" and value eq "u2"]', set()),
    ('members[value eq "u1"] and members[value eq "u2"]', {"g1"}),
    ('members.value ne "u1"', {"g1", "g2"}),
    ("members pr", {"g1", "g2"}),
    ("not (members pr)", {"g3"}),
    ('members[value eq "U1"]', set()),
    ('meta.lastModified gt "2025-01-03T00:00:00Z"', {"g2", "g3"}),
    ('id eq "g2" or displayName co "ale"', {"g2", "g3"}),
]


@pytest.mark.parametrize(("text", "expected"), GROUP_FILTERS, ids=[text for text, _ in GROUP_FILTERS])
def test_a_group_filter_selects_exactly_the_matching_groups(engine: Engine, text: str, expected: set[str]) -> None:
    assert _groups(engine, text) == expected


REFUSED_USER_FILTERS = [
    ('nickName eq "zzz"', "nickName is not a filterable User attribute"),
    ('userName eq "b" and nickName eq "zzz"', "nickName is not a filterable"),
    ('name.givenName eq "Barbara"', "name.givenName is not a filterable"),
    ('employeeNumber eq "E100"', "employeeNumber is not a filterable"),
    ('urn:example:custom:User:userName eq "x"', "urn:example:custom:User:userName is not a filterable"),
    ("active gt true", "active is a boolean attribute; its operators are eq ne pr"),
    ('active eq "true"', "compare it with true or false"),
    ('active eq "True"', "compare it with true or false"),
    ("userName eq 12", "quote the value"),
    ("userName eq true", "quote the value"),
    ("active eq True", "lower case"),
    ('meta.created co "2025"', "dateTime attribute; its operators are eq ge gt le lt ne pr"),
    ('meta.created gt "2025-01-01"', "RFC 3339"),
    ('meta.created gt "2025-01-01T00:00:00"', "RFC 3339"),
    ('meta.created gt "9999-12-31T23:59:59-01:00"', "RFC 3339"),
    ("userName gt null", "null can only be compared with eq or ne"),
    ('emails[type eq "home"].value eq "x"', 'type eq "work"'),
    ('emails[type eq "work" or value eq "x"]', 'type eq "work"'),
    ('emails[not (type eq "work")]', 'type eq "work"'),
    ('emails[type ne "work"]', 'type eq "work"'),
    ('emails.type eq "work"', 'emails[type eq "work"]'),
    ("emails[primary eq true]", "emails.primary is not filterable"),
    ('emails eq "x"', "compare a sub-attribute"),
    ('emails[type eq "work"] eq "x"', "name a sub-attribute"),
    ('emails.value[type eq "work"]', "brackets follow the multi-valued attribute"),
    ('emails[value[type eq "x"] eq "y"]', "cannot be nested"),
    ('userName[value eq "x"]', "brackets follow a multi-valued attribute"),
    ('emails[emails.value eq "x"]', "sub-attributes alone"),
    ("userName eq jyoung", "unexpected 'jyoung'"),
    ('userName regex "x"', "unexpected 'regex'"),
    ('userName eq "x" and', "ends too early"),
    ('(userName eq "x"', "ends too early"),
    ('userName eq "x")', "unexpected ')'"),
    ("", "empty"),
    ("   ", "empty"),
    ('userName eq "x\\q"', "not a valid JSON string"),
    ('userName eq "\\u0000"', "NUL"),
    ('userName eq "\\ud800"', "unpaired surrogate"),
    ('userName eq "unterminated', "unexpected character"),
    ('userName\teq "x"', "unexpected character '\\t'"),
    ('a.b.c eq "x"', "not an attribute path"),
    ("userName eq 1x", "unexpected character"),
]


@pytest.mark.parametrize(("text", "message"), REFUSED_USER_FILTERS, ids=[text for text, _ in REFUSED_USER_FILTERS])
def test_an_unsupported_user_filter_is_invalid_filter_never_a_wider_result(text: str, message: str) -> None:
    with pytest.raises(InvalidFilter) as raised:
        user_filter(text)

    assert message in raised.value.message
    assert (raised.value.status, raised.value.scim_type) == (400, "invalidFilter")
    assert isinstance(raised.value, ScimError)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('userName eq "x"', "userName is not a filterable Group attribute"),
        ('members.display eq "x"', "members.display is not filterable"),
        ('members eq "u1"', "compare a sub-attribute"),
        ("displayName gt 3", "quote the value"),
    ],
)
def test_an_unsupported_group_filter_is_invalid_filter(text: str, message: str) -> None:
    with pytest.raises(InvalidFilter, match=message):
        group_filter(text)


def test_the_message_for_an_unknown_attribute_lists_what_can_be_filtered() -> None:
    with pytest.raises(InvalidFilter) as raised:
        user_filter('title eq "x"')

    for name in ("userName", "externalId", "emails.value", "meta.lastModified", f"{ENTERPRISE}:employeeNumber"):
        assert name in raised.value.message


def test_filters_over_the_size_limits_are_refused_before_parsing() -> None:
    clause = 'userName eq "x"'
    with pytest.raises(InvalidFilter, match=f"at most {MAX_FILTER_LENGTH}"):
        user_filter(f'userName eq "{"a" * MAX_FILTER_LENGTH}"')
    with pytest.raises(InvalidFilter, match="nests deeper"):
        user_filter("(" * (MAX_FILTER_DEPTH + 1) + clause + ")" * (MAX_FILTER_DEPTH + 1))
    with pytest.raises(InvalidFilter, match=f"more than {MAX_FILTER_TERMS} comparisons"):
        user_filter(" or ".join([clause] * (MAX_FILTER_TERMS + 1)))


def test_filters_at_the_size_limits_are_accepted(engine: Engine) -> None:
    clause = 'userName eq "bjensen"'
    assert _users(engine, "(" * MAX_FILTER_DEPTH + clause + ")" * MAX_FILTER_DEPTH) == {"u1"}
    assert _users(engine, " or ".join([clause] * MAX_FILTER_TERMS)) == {"u1"}
    assert _users(engine, " and ".join([clause] * MAX_FILTER_TERMS)) == {"u1"}


def _sql(text: str, dialect: object) -> tuple[str, list[object]]:
    compiled = select(agents.c.id).where(user_filter(text)).compile(dialect=dialect)  # type: ignore[arg-type]
    return compiled.string, list(compiled.params.values())


@pytest.mark.parametrize("dialect", [sqlite.dialect(), postgresql.dialect()], ids=["sqlite", "postgresql"])
@pytest.mark.parametrize("payload", ["' OR 1=1 --", '"; DROP TABLE agents; --', "%", "_", "\\", "/", "') OR ('a'='a"])
@pytest.mark.parametrize("operator", ["eq", "co", "sw", "ew", "gt"])
def test_a_value_only_ever_travels_as_a_bound_parameter(payload: str, operator: str, dialect: object) -> None:
    def condition(value: str) -> str:
        literal = value.replace("\\", "\\\\").replace('"', '\\"')
        return f'externalId {operator} "{literal}" or displayName {operator} "{literal}"'

    sql, params = _sql(condition(payload), dialect)
    neutral_sql, _ = _sql(condition("z" * len(payload)), dialect)

    assert sql == neutral_sql
    assert any(payload in str(param) for param in params)


def test_like_wildcards_in_a_value_are_escaped() -> None:
    _, params = _sql('externalId co "50%_a/b"', sqlite.dialect())

    assert "50/%/_a//b" in params


def test_postgresql_folds_ascii_only_and_orders_by_code_point() -> None:
    sql, _ = _sql('displayName gt "a"', postgresql.dialect())

    assert "translate(agents.display_name, 'ABCDEFGHIJKLMNOPQRSTUVWXYZ', 'abcdefghijklmnopqrstuvwxyz')" in sql
    assert 'COLLATE "C"' in sql


def test_username_uses_the_lower_cased_key_column_so_the_index_applies() -> None:
    sql, params = _sql('userName eq "BJensen"', sqlite.dialect())

    assert "agents.user_name_key = ?" in sql
    assert params == ["bjensen"]


def test_a_boolean_literal_is_a_boolean_not_a_string() -> None:
    assert _sql("active eq false", postgresql.dialect()) == (
        "SELECT agents.id \nFROM agents \nWHERE agents.active = false",
        [],
    )
    assert _sql("active eq true", sqlite.dialect()) == ("SELECT agents.id \nFROM agents \nWHERE agents.active = 1", [])
