"""Properties of the SCIM filter translation (RFC 7644 §3.4.2.2), checked with Hypothesis on SQLite.

1. Any string at all either becomes a condition the database runs, or ``InvalidFilter``: never another error.
2. For random valid filters the database returns exactly what a pure-Python reference evaluator of the same
   filter tree returns, so a filter is never widened (nor narrowed), whatever its spelling, nesting or values.
3. SQL-injection and LIKE-wildcard strings inside literals are data: they match only rows literally holding them.
"""

from __future__ import annotations

import json
import string
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, create_engine, insert, select

from gateway.storage.schema import agents, group_members, groups, metadata
from scim.errors import InvalidFilter
from scim.filters import group_filter, user_filter

ENTERPRISE = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"
CORE = "urn:ietf:params:scim:schemas:core:2.0:User"
SETTINGS = settings(deadline=None, max_examples=150, suppress_health_check=[HealthCheck.too_slow])

PAYLOADS = ["' OR 1=1 --", '"; DROP TABLE agents; --', "%", "_", "\\", "/", "a%b", "a_b", "a/%b", "%_%"]
WORDS = ["", "a", "A", "ab", "aB", "Ab", "b", "é", "É", "éva", "ÉVA", "x y", "a'b", 'a"b', *PAYLOADS]
BASE = datetime(2025, 1, 1, tzinfo=UTC)


def _rows() -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for n in range(30):

        def pick(offset: int, n: int = n) -> str | None:
            value = WORDS[(n * 7 + offset) % len(WORDS)]
            return None if (n + offset) % 5 == 0 else value

        user_name = f"{WORDS[n % len(WORDS)]}#{n}"
        rows.append(
            {
                "id": f"id-{n:02d}{'X' if n % 3 else 'x'}",
                "user_name": user_name,
                "user_name_key": user_name.lower(),
                "external_id": pick(1),
                "display_name": pick(2),
                "email": pick(3),
                "employee_number": pick(4),
                "manager_id": pick(6),
                "active": n % 3 != 0,
                "source": "scim",
                "attributes": {},
                "created_at": BASE + timedelta(hours=n * 7),
                "updated_at": BASE + timedelta(hours=n * 7, microseconds=n),
            }
        )
    return rows


ROWS = _rows()
GROUP_ROWS = [
    {"id": f"g{n}", "display_name": WORDS[n], "external_id": WORDS[n + 3] if n % 2 else None} for n in range(12)
]
MEMBERS = [(f"g{n}", ROWS[(n * 5 + k) % len(ROWS)]["id"]) for n in range(12) for k in range(n % 4)]


@pytest.fixture(scope="module")
def engine() -> Iterator[Engine]:
    engine = create_engine("sqlite://")
    metadata.create_all(engine)
    with engine.begin() as conn:
        conn.execute(insert(agents), ROWS)
        conn.execute(insert(groups), [{**g, "created_at": BASE, "updated_at": BASE} for g in GROUP_ROWS])
        conn.execute(insert(group_members), [{"group_id": g, "agent_id": a} for g, a in MEMBERS])
    yield engine
    engine.dispose()


def _select_users(engine: Engine, text: str) -> set[str]:
    with engine.connect() as conn:
        return set(conn.scalars(select(agents.c.id).where(user_filter(text))))


# ------------------------------------------------------------------------------------------ reference evaluator

ASCII_LOWER = str.maketrans(string.ascii_uppercase, string.ascii_lowercase)


def _ascii(value: str) -> str:
    return value.translate(ASCII_LOWER)


def _same(value: str) -> str:
    return value


@dataclass(frozen=True)
class Attr:
    spellings: tuple[str, ...]
    field: str
    kind: str  # "string" / "boolean" / "dateTime"
    fold: Callable[[str], str] = _same


USER_ATTRS = [
    Attr(("userName", "USERNAME", "username", f"{CORE}:userName"), "user_name", "string", str.lower),
    Attr(("id", "ID", f"{CORE}:id"), "id", "string"),
    Attr(("externalId", "EXTERNALID"), "external_id", "string"),
    Attr(("displayName", "displayname", f"{CORE.upper()}:DisplayName"), "display_name", "string", _ascii),
    Attr(("emails.value", "Emails.Value"), "email", "string", _ascii),
    Attr((f"{ENTERPRISE}:employeeNumber", f"{ENTERPRISE.lower()}:employeenumber"), "employee_number", "string", _ascii),
    Attr((f"{ENTERPRISE}:manager.value",), "manager_id", "string"),
    Attr(("active", "Active"), "active", "boolean"),
    Attr(("meta.created", "META.CREATED"), "created_at", "dateTime"),
    Attr(("meta.lastModified", "meta.lastmodified"), "updated_at", "dateTime"),
]
OPERATORS = {
    "string": ["eq", "ne", "co", "sw", "ew", "gt", "ge", "lt", "le", "pr"],
    "boolean": ["eq", "ne", "pr"],
    "dateTime": ["eq", "ne", "gt", "ge", "lt", "le", "pr"],
}


def _present(value: object) -> bool:
    return value is not None and value != ""


def _compare(value: Any, op: str, literal: Any, attr: Attr) -> bool:
    """RFC 7644 §3.4.2.2 on one value, as documented in scim/filters.py (absent fails all but ne)."""
    if op == "pr":
        return _present(value)
    if literal is None:
        return not _present(value) if op == "eq" else _present(value)
    if value is None:
        return op == "ne"
    if attr.kind == "dateTime":
        value, literal = value.replace(tzinfo=UTC), datetime.fromisoformat(literal)
    elif attr.kind == "string":
        value, literal = attr.fold(value), attr.fold(literal)
    checks: dict[str, Callable[[], bool]] = {
        "eq": lambda: value == literal,
        "ne": lambda: value != literal,
        "co": lambda: literal in value,
        "sw": lambda: value.startswith(literal),
        "ew": lambda: value.endswith(literal),
        "gt": lambda: value > literal,
        "ge": lambda: value >= literal,
        "lt": lambda: value < literal,
        "le": lambda: value <= literal,
    }
    return checks[op]()


EMAIL = USER_ATTRS[4]


def evaluate(node: tuple[Any, ...], row: dict[str, Any]) -> bool:
    kind = node[0]
    if kind == "and":
        return evaluate(node[1], row) and evaluate(node[2], row)
    if kind == "or":
        return evaluate(node[1], row) or evaluate(node[2], row)
    if kind == "not":
        return not evaluate(node[1], row)
    if kind == "emails":  # emails[...]: the one work email must exist and satisfy the inner filter
        return row["email"] is not None and evaluate(node[1], row)
    if kind == "work":
        return True
    _, attr, op, literal = node
    if attr.field == "email" and row["email"] is None:
        return False  # multi-valued: no value, so no value matches, not even for "ne"
    return _compare(row[attr.field], op, literal, attr)


# ------------------------------------------------------------------------------------------ filter generator

DATETIMES = [
    (BASE + timedelta(hours=h)).astimezone(tz).isoformat().replace("+00:00", "Z")
    for h in (0, 7, 50, 56, 100, 203)
    for tz in (UTC, timezone(timedelta(hours=-5, minutes=-30)))
]


def _literal(attr: Attr) -> st.SearchStrategy[Any]:
    if attr.kind == "boolean":
        return st.booleans()
    if attr.kind == "dateTime":
        return st.sampled_from(DATETIMES) | st.sampled_from([r["created_at"] for r in ROWS]).map(
            lambda d: d.isoformat()
        )
    near = [r[attr.field] for r in ROWS if r[attr.field] is not None]
    return st.sampled_from(WORDS + near) | st.text(alphabet="aAbBéÉ%_/\\'\" #0123456789", max_size=6)


@st.composite
def _atom(draw: st.DrawFn, attrs: list[Attr] = USER_ATTRS) -> tuple[Any, ...]:
    attr = draw(st.sampled_from(attrs))
    op = draw(st.sampled_from(OPERATORS[attr.kind]))
    if op == "pr":
        return ("cmp", attr, op, None)
    literal = None if op in ("eq", "ne") and draw(st.integers(0, 9)) == 0 else draw(_literal(attr))
    return ("cmp", attr, op, literal)


@st.composite
def _emails(draw: st.DrawFn) -> tuple[Any, ...]:
    inner = draw(
        _trees(
            st.builds(
                lambda op, lit: ("cmp", EMAIL, op, lit), st.sampled_from(OPERATORS["string"][:-1]), _literal(EMAIL)
            ),
            2,
        )
    )
    if draw(st.booleans()):
        inner = ("and", ("work",), inner) if draw(st.booleans()) else ("and", inner, ("work",))
    return ("emails", inner)


def _trees(leaves: st.SearchStrategy[tuple[Any, ...]], size: int) -> st.SearchStrategy[tuple[Any, ...]]:
    return st.recursive(
        leaves,
        lambda children: (
            st.tuples(st.sampled_from(["and", "or"]), children, children) | st.tuples(st.just("not"), children)
        ),
        max_leaves=size,
    )


USER_TREES = _trees(_atom() | _emails(), 6)


def _text(value: str, draw: st.DrawFn) -> str:
    return json.dumps(value, ensure_ascii=draw(st.booleans()))


def render(node: tuple[Any, ...], draw: st.DrawFn, parent: int = 0, inside: bool = False) -> str:
    """Filter text for a tree, leaning on "not" > "and" > "or" precedence and sometimes adding parentheses."""
    kind = node[0]
    if kind in ("and", "or"):
        level = 2 if kind == "and" else 1
        keyword = draw(st.sampled_from([kind, kind.upper(), kind.capitalize()]))
        text = f"{render(node[1], draw, level, inside)} {keyword} {render(node[2], draw, level, inside)}"
        return f"({text})" if level < parent or draw(st.integers(0, 5)) == 0 else text
    if kind == "not":
        return f"{draw(st.sampled_from(['not', 'NOT']))} ({render(node[1], draw, 0, inside)})"
    if kind == "emails":
        return f"emails[{render(node[1], draw, 0, True)}]"
    if kind == "work":
        return f"type eq {_text(draw(st.sampled_from(['work', 'Work', 'WORK'])), draw)}"
    _, attr, op, literal = node
    name = "value" if inside else draw(st.sampled_from(attr.spellings))
    op_text = draw(st.sampled_from([op, op.upper()]))
    if op == "pr":
        return f"{name} {op_text}"
    if isinstance(literal, str):
        return f"{name} {op_text} {_text(literal, draw)}"
    return f"{name} {op_text} {json.dumps(literal)}"


@st.composite
def user_filters(draw: st.DrawFn) -> tuple[tuple[Any, ...], str]:
    tree = draw(USER_TREES)
    return tree, render(tree, draw)


# ------------------------------------------------------------------------------------------ properties

TOKENS = [
    "userName",
    "username",
    "emails",
    "emails.value",
    "members",
    "members.value",
    "active",
    "meta.created",
    "displayName",
    "externalId",
    "nickName",
    "name.givenName",
    f"{ENTERPRISE}:employeeNumber",
    "type",
    "value",
    "urn:",
    "urn:x:",
    ":",
    ".",
    ".value",
    "eq",
    "ne",
    "co",
    "sw",
    "ew",
    "pr",
    "gt",
    "ge",
    "lt",
    "le",
    "regex",
    "and",
    "or",
    "not",
    "AND",
    "Not",
    "(",
    ")",
    "[",
    "]",
    "true",
    "false",
    "null",
    "True",
    "0",
    "12",
    "-1.5e3",
    "1e999",
    "00",
    '"x"',
    '"work"',
    '"a\\"b"',
    '"\\u00e9"',
    '"\\ud800"',
    '"\\u0000"',
    '"',
    "'",
    "\\",
    "%",
    "_",
    '"2025-01-01T00:00:00Z"',
    '"9999-12-31T23:59:59-01:00"',
    "\t",
    "é",
    "$ref",
    ",",
    "'; DROP TABLE agents; --",
]


@st.composite
def token_soup(draw: st.DrawFn) -> str:
    tokens = draw(st.lists(st.sampled_from(TOKENS) | st.text(max_size=3), max_size=14))
    return "".join(token + draw(st.sampled_from(["", " ", " ", "  "])) for token in tokens)


@SETTINGS
@given(text=token_soup() | st.text(max_size=40))
def test_any_text_is_a_runnable_condition_or_invalid_filter(engine: Engine, text: str) -> None:
    for build, table in ((user_filter, agents), (group_filter, groups)):
        try:
            condition = build(text)
        except InvalidFilter:
            continue
        with engine.connect() as conn:
            conn.execute(select(table.c.id).where(condition)).all()


@SETTINGS
@given(case=user_filters())
def test_a_valid_user_filter_selects_exactly_what_the_reference_evaluator_selects(
    engine: Engine, case: tuple[tuple[Any, ...], str]
) -> None:
    tree, text = case
    expected = {row["id"] for row in ROWS if evaluate(tree, row)}

    assert _select_users(engine, text) == expected, text


INJECTABLE = [attr for attr in USER_ATTRS if attr.field in ("user_name", "external_id", "display_name", "email")]


@SETTINGS
@given(
    attr=st.sampled_from(INJECTABLE),
    op=st.sampled_from(["eq", "co", "sw", "ew"]),
    payload=st.sampled_from(PAYLOADS) | st.text(alphabet="%_/\\'\";-= ORa1", min_size=1, max_size=8),
)
def test_injection_and_wildcard_strings_match_only_rows_that_literally_hold_them(
    engine: Engine, attr: Attr, op: str, payload: str
) -> None:
    expected = {row["id"] for row in ROWS if evaluate(("cmp", attr, op, payload), row)}

    assert _select_users(engine, f"{attr.spellings[0]} {op} {json.dumps(payload)}") == expected
    with engine.connect() as conn:
        assert conn.scalar(select(agents.c.id).where(agents.c.id == "id-00x")) == "id-00x"  # the table survived


@SETTINGS
@given(
    op=st.sampled_from(["eq", "ne", "co", "sw", "ew", "gt", "lt"]),
    value=st.sampled_from([row["id"] for row in ROWS] + ["id-0", "ID-00X", "%", "_"]),
    bracket=st.booleans(),
    negate=st.booleans(),
)
def test_a_members_filter_selects_groups_with_a_matching_member(
    engine: Engine, op: str, value: str, bracket: bool, negate: bool
) -> None:
    members_of = {g["id"]: {a for gid, a in MEMBERS if gid == g["id"]} for g in GROUP_ROWS}
    member_attr = Attr(("value",), "value", "string")
    expected = {
        gid for gid, ids in members_of.items() if any(_compare(a, op, value, member_attr) for a in ids) != negate
    }
    condition = f"members[value {op} {json.dumps(value)}]" if bracket else f"members.value {op} {json.dumps(value)}"
    text = f"not ({condition})" if negate else condition

    with engine.connect() as conn:
        assert set(conn.scalars(select(groups.c.id).where(group_filter(text)))) == expected
