"""SCIM filters (RFC 7644 §3.4.2.2) as SQLAlchemy Core conditions, behind an allow-list of attributes.

scim2-filter-parser supplies the grammar and nothing else. Its lexer reads one-digit numbers only, no escaped
quotes and ``true`` as the string ``'TRUE'``; its parser gives ``and`` and ``or`` the same precedence, so
``a or b and c`` became ``(a or b) and c``; its SQL transpiler drops unknown attributes, so a filter on one
returned every row. Here ``scim.filter_syntax`` parses (our tokenizer, its grammar rebuilt with RFC precedence)
and our walk turns the tree into SQL with bound parameters only. What we cannot translate exactly is
``invalidFilter``: never a wider result.

Semantics (the reference evaluator in ``tests/unit/test_scim_filters_properties.py`` pins them down):

* Every condition is two-valued: an absent (NULL) attribute fails every comparison except ``ne``, so ``not``
  cannot turn "unknown" into a match. ``eq null`` means "not present" and ``ne null`` means ``pr``.
* ``pr`` means not null and, for strings, not empty.
* ``userName`` compares through ``user_name_key`` (the storage layer's lower-casing, RFC 7643 §4.1.1). Other
  ``caseExact: false`` strings (displayName, emails.value, employeeNumber) fold ASCII letters only, so SQLite and
  PostgreSQL agree whatever their locale. Ordering (gt/ge/lt/le) is by code point: ``COLLATE "C"`` on PostgreSQL.
* ``emails``: an agent's one work email lives in ``agents.email`` and only it is searchable. Inside brackets
  ``type eq "work"`` is accepted (true of that email) and any other ``type`` condition is ``invalidFilter``,
  since answering "none" for home emails would be a guess.
* Booleans take ``true``/``false`` only; the string ``"true"`` is ``invalidFilter`` (IdPs send string booleans
  in PATCH bodies, not in filters). No allowed attribute is numeric, so a number literal is ``invalidFilter``.
* The condition does not exclude soft-deleted rows; the caller adds ``deleted_at IS NULL``.
"""

from __future__ import annotations

import enum
import re
import string
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

from scim2_filter_parser import ast
from sqlalchemy import Column, ColumnElement, String, and_, exists, func, not_, or_, true
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.functions import FunctionElement

from gateway.storage.agents import user_name_key
from gateway.storage.schema import agents, group_members, groups
from scim.errors import InvalidFilter
from scim.filter_syntax import (
    CompValue,
    json_string,
    parse_filter,
)
from scim.urns import ENTERPRISE_USER_SCHEMA, GROUP_SCHEMA, USER_SCHEMA

# ---------------------------------------------------------------------------------------------- SQL helpers


class _AsciiLower(FunctionElement[str]):
    """Lower-case ASCII letters only, alike on every database (SQLite's built-in lower() folds only ASCII)."""

    type = String()
    inherit_cache = True


@compiles(_AsciiLower)
def _ascii_lower_sql(element: _AsciiLower, compiler: SQLCompiler, **kw: Any) -> str:
    return f"lower({compiler.process(element.clauses, **kw)})"


@compiles(_AsciiLower, "postgresql")
def _ascii_lower_postgresql(element: _AsciiLower, compiler: SQLCompiler, **kw: Any) -> str:
    # PostgreSQL's lower() follows the locale; translate() keeps the fold to A-Z, as in SQLite and in Python.
    upper, lower = string.ascii_uppercase, string.ascii_lowercase
    return f"translate({compiler.process(element.clauses, **kw)}, '{upper}', '{lower}')"


class _CodePointOrder(FunctionElement[str]):
    """Compare strings by code point, as Python does, instead of by the database locale."""

    type = String()
    inherit_cache = True


@compiles(_CodePointOrder)
def _code_point_order_sql(element: _CodePointOrder, compiler: SQLCompiler, **kw: Any) -> str:
    return compiler.process(element.clauses, **kw)  # SQLite's default BINARY collation is code-point order


@compiles(_CodePointOrder, "postgresql")
def _code_point_order_postgresql(element: _CodePointOrder, compiler: SQLCompiler, **kw: Any) -> str:
    return f'({compiler.process(element.clauses, **kw)}) COLLATE "C"'


_ASCII_LOWER: Final = str.maketrans(string.ascii_uppercase, string.ascii_lowercase)

# ---------------------------------------------------------------------------------------------- allow-list


class _Kind(enum.Enum):
    """A SCIM attribute type (RFC 7643 §2.3) and the operators it takes besides ``pr``."""

    STRING = ("string", frozenset({"eq", "ne", "co", "sw", "ew", "gt", "ge", "lt", "le"}))
    BOOLEAN = ("boolean", frozenset({"eq", "ne"}))
    DATETIME = ("dateTime", frozenset({"eq", "ne", "gt", "ge", "lt", "le"}))

    def __init__(self, label: str, operators: frozenset[str]) -> None:
        self.label = label
        self.operators = operators


class _Case(enum.Enum):
    EXACT = "caseExact"
    ASCII = "case-insensitive (ASCII letters)"
    KEY = "case-insensitive (via user_name_key)"


@dataclass(frozen=True)
class _Attribute:
    name: str
    column: ColumnElement[Any]
    kind: _Kind = _Kind.STRING
    case: _Case = _Case.EXACT
    nullable: bool = True


@dataclass(frozen=True)
class _MultiValued:
    """A multi-valued complex attribute; ``wrap`` applies a condition to one and the same value of it."""

    name: str
    sub_attributes: Mapping[str, _Attribute]
    wrap: Callable[[ColumnElement[bool]], ColumnElement[bool]]
    work_email: bool = False

    def sub_attribute(self, name: str) -> _Attribute:
        found = self.sub_attributes.get(name.lower())
        if found is None:
            supported = ", ".join(f"{self.name}.{sub.name}" for sub in self.sub_attributes.values())
            hint = ' (and type eq "work" inside brackets)' if self.work_email else ""
            raise InvalidFilter(f"{self.name}.{name} is not filterable; supported: {supported}{hint}")
        return found


@dataclass(frozen=True)
class _Resource:
    name: str
    schema: str
    attributes: Mapping[str, _Attribute]
    multi_valued: Mapping[str, _MultiValued]

    def supported(self) -> str:
        names = [attribute.name for attribute in self.attributes.values()]
        names += [
            f"{multi.name}.{sub.name}" for multi in self.multi_valued.values() for sub in multi.sub_attributes.values()
        ]
        return ", ".join(names)

    def find(self, path: Any) -> tuple[_MultiValued | None, _Attribute | None]:
        """Look an attrPath up case-insensitively (RFC 7643 §2.1); core attributes may carry their schema URN.

        Returns ``(multi, None)`` for a bare multi-valued attribute, ``(multi, sub)`` for one of its
        sub-attributes and ``(None, attribute)`` for a single-valued attribute.
        """
        name: str = path.attr_name
        sub: str | None = path.sub_attr.value if path.sub_attr is not None else None
        uri: str | None = path.uri
        core = uri is None or uri.lower() == self.schema.lower()
        multi = self.multi_valued.get(name.lower()) if core else None
        if multi is not None:
            if sub is None:
                return multi, None
            if multi.work_email and sub.lower() == "type":
                raise InvalidFilter('emails.type is filterable only as emails[type eq "work"]')
            return multi, multi.sub_attribute(sub)
        dotted = f"{name}.{sub}" if sub else name
        found = self.attributes.get(dotted.lower() if core else f"{uri}:{dotted}".lower())
        if found is None:
            shown = dotted if uri is None else f"{uri}:{dotted}"
            raise InvalidFilter(f"{shown} is not a filterable {self.name} attribute; supported: {self.supported()}")
        return None, found


def _email_value(condition: ColumnElement[bool]) -> ColumnElement[bool]:
    return and_(agents.c.email.is_not(None), condition)


def _member(condition: ColumnElement[bool]) -> ColumnElement[bool]:
    return exists().where(group_members.c.group_id == groups.c.id, condition)


def _meta(table: Any) -> dict[str, _Attribute]:
    return {
        "meta.created": _Attribute("meta.created", table.c.created_at, _Kind.DATETIME, nullable=False),
        "meta.lastmodified": _Attribute("meta.lastModified", table.c.updated_at, _Kind.DATETIME, nullable=False),
    }


_ENTERPRISE = ENTERPRISE_USER_SCHEMA.lower()
_USER: Final = _Resource(
    name="User",
    schema=USER_SCHEMA,
    attributes={
        "id": _Attribute("id", agents.c.id, nullable=False),
        "username": _Attribute("userName", agents.c.user_name_key, case=_Case.KEY, nullable=False),
        "externalid": _Attribute("externalId", agents.c.external_id),
        "displayname": _Attribute("displayName", agents.c.display_name, case=_Case.ASCII),
        "active": _Attribute("active", agents.c.active, _Kind.BOOLEAN, nullable=False),
        **_meta(agents),
        f"{_ENTERPRISE}:employeenumber": _Attribute(
            f"{ENTERPRISE_USER_SCHEMA}:employeeNumber", agents.c.employee_number, case=_Case.ASCII
        ),
        f"{_ENTERPRISE}:manager.value": _Attribute(f"{ENTERPRISE_USER_SCHEMA}:manager.value", agents.c.manager_id),
    },
    multi_valued={
        "emails": _MultiValued(
            "emails", {"value": _Attribute("value", agents.c.email, case=_Case.ASCII)}, _email_value, work_email=True
        ),
    },
)
_GROUP: Final = _Resource(
    name="Group",
    schema=GROUP_SCHEMA,
    attributes={
        "id": _Attribute("id", groups.c.id, nullable=False),
        "displayname": _Attribute("displayName", groups.c.display_name, case=_Case.ASCII, nullable=False),
        "externalid": _Attribute("externalId", groups.c.external_id),
        **_meta(groups),
    },
    multi_valued={
        "members": _MultiValued(
            "members", {"value": _Attribute("value", group_members.c.agent_id, nullable=False)}, _member
        ),
    },
)

# ---------------------------------------------------------------------------------------------- comparisons

_RFC3339: Final = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]{1,6})?(?:Z|[+-][0-9]{2}:[0-9]{2})"
)


def _present(attribute: _Attribute) -> ColumnElement[bool]:
    column = attribute.column
    present: ColumnElement[bool] = column.is_not(None) if attribute.nullable else true()
    if attribute.kind is _Kind.STRING:
        present = and_(present, column != "")
    return present


def _datetime(attribute: _Attribute, literal: CompValue) -> datetime:
    text = literal.value.upper() if isinstance(literal.value, str) else ""
    if _RFC3339.fullmatch(text):
        try:
            return datetime.fromisoformat(text).astimezone(UTC)
        except (ValueError, OverflowError):
            pass
    raise InvalidFilter(
        f'{attribute.name} is a dateTime; compare it with an RFC 3339 string such as "2025-03-01T09:30:00Z", '
        f"not {literal.text}"
    )


def _string_condition(attribute: _Attribute, op: str, value: str) -> ColumnElement[bool]:
    column = attribute.column
    target: ColumnElement[Any] = column
    if attribute.case is _Case.ASCII:
        target, value = _AsciiLower(column), value.translate(_ASCII_LOWER)
    elif attribute.case is _Case.KEY:
        value = user_name_key(value)
    if op == "eq":
        return target == value
    if op == "ne":
        return target != value
    if op in ("co", "sw", "ew"):
        return _substring(attribute, target, op, value)
    ordered = _CodePointOrder(target)
    if op == "gt":
        return ordered > value
    if op == "ge":
        return ordered >= value
    if op == "lt":
        return ordered < value
    return ordered <= value


def _substring(attribute: _Attribute, target: ColumnElement[Any], op: str, value: str) -> ColumnElement[bool]:
    """LIKE with ``%``, ``_`` and the escape character ``/`` escaped, so a value is never a pattern."""
    if op == "co":
        like = target.contains(value, autoescape=True)
    elif op == "sw":
        like = target.startswith(value, autoescape=True)
    else:
        like = target.endswith(value, autoescape=True)
    if attribute.case is not _Case.EXACT:
        return like  # both sides are folded, so LIKE's own case rules cannot add a match
    # SQLite's LIKE ignores ASCII case: confirm a caseExact match with case-sensitive functions both databases have.
    if op == "co":
        exact = target != func.replace(target, value, "") if value else true()
    elif op == "sw":
        exact = func.substr(target, 1, len(value)) == value
    else:
        exact = func.substr(target, func.length(target) - len(value) + 1) == value
    return and_(like, exact)


def _compare(attribute: _Attribute, op: str, literal: CompValue | None) -> ColumnElement[bool]:
    """One attrExp (RFC 7644 §3.4.2.2), two-valued: NULL fails every operator but ``ne``."""
    if op == "pr":
        return _present(attribute)
    assert literal is not None  # the grammar gives every operator but pr a compValue
    if literal.value is None:
        if op in ("eq", "ne"):
            return not_(_present(attribute)) if op == "eq" else _present(attribute)
        raise InvalidFilter(f"{attribute.name} {op} null: null can only be compared with eq or ne")
    if op not in attribute.kind.operators:
        allowed = " ".join(sorted(attribute.kind.operators | {"pr"}))
        raise InvalidFilter(f"{attribute.name} is a {attribute.kind.label} attribute; its operators are {allowed}")
    column = attribute.column
    condition: ColumnElement[bool]
    if attribute.kind is _Kind.BOOLEAN:
        if not isinstance(literal.value, bool):
            raise InvalidFilter(f"{attribute.name} is a boolean; compare it with true or false, not {literal.text}")
        condition = column == literal.value if op == "eq" else column != literal.value
    elif attribute.kind is _Kind.DATETIME:
        moment = _datetime(attribute, literal)
        condition = {
            "eq": column == moment,
            "ne": column != moment,
            "gt": column > moment,
            "ge": column >= moment,
            "lt": column < moment,
            "le": column <= moment,
        }[op]
    else:
        if not isinstance(literal.value, str):
            raise InvalidFilter(f'{attribute.name} is a string; quote the value, as in {attribute.name} {op} "..."')
        condition = _string_condition(attribute, op, literal.value)
    if not attribute.nullable:
        return condition
    if op == "ne":
        return or_(column.is_(None), condition)
    return and_(column.is_not(None), condition)


# ---------------------------------------------------------------------------------------------- the walk


class _Walk:
    """Turns the parse tree into one condition; ``scope`` is the multi-valued attribute inside ``[...]``."""

    def __init__(self, resource: _Resource) -> None:
        self.resource = resource

    def filter(self, node: Any, scope: _MultiValued | None, positive: bool) -> ColumnElement[bool]:
        if isinstance(node, ast.Filter):
            if node.namespace is not None:
                multi = self._multi_valued(node.namespace, scope)
                return multi.wrap(self.filter(node.expr, multi, True))
            inner = self.filter(node.expr, scope, positive and not node.negated)
            return not_(inner) if node.negated else inner
        if isinstance(node, ast.LogExpr):
            conjunction = node.op == "and"
            left = self.filter(node.expr1, scope, positive and conjunction)
            right = self.filter(node.expr2, scope, positive and conjunction)
            return and_(left, right) if conjunction else or_(left, right)
        return self._attr_expr(node, scope, positive)

    def _multi_valued(self, path: Any, scope: _MultiValued | None) -> _MultiValued:
        if scope is not None or not isinstance(path.attr_name, str):
            raise InvalidFilter("value filters [...] cannot be nested")
        multi, _ = self.resource.find(ast.AttrPath(path.attr_name, None, path.uri))
        if multi is None:
            raise InvalidFilter(f"{path.attr_name}[...]: brackets follow a multi-valued attribute such as emails")
        return multi

    def _attr_expr(self, node: Any, scope: _MultiValued | None, positive: bool) -> ColumnElement[bool]:
        op: str = node.value
        literal: CompValue | None = node.comp_value.value if node.comp_value is not None else None
        path = node.attr_path
        if not isinstance(path.attr_name, str):  # emails[type eq "work"].value eq "x": the parser moved ".value"
            value_path = path.attr_name
            namespace = value_path.namespace
            multi = self._multi_valued(namespace, scope)
            if namespace.sub_attr is None:
                raise InvalidFilter(f"{multi.name}[...] {op}: name a sub-attribute, as in {multi.name}[...].value")
            sub = multi.sub_attribute(namespace.sub_attr.value)
            return multi.wrap(and_(self.filter(value_path.expr, multi, True), _compare(sub, op, literal)))
        if scope is not None:
            if path.uri is not None or path.sub_attr is not None:
                raise InvalidFilter(f'inside {scope.name}[...] name its sub-attributes alone, as in value eq "..."')
            if scope.work_email and path.attr_name.lower() == "type":
                return _work_type(op, literal, positive)
            return _compare(scope.sub_attribute(path.attr_name), op, literal)
        parent, attribute = self.resource.find(path)
        if attribute is None:
            assert parent is not None
            if op != "pr":
                raise InvalidFilter(f"{parent.name} {op}: compare a sub-attribute, as in {parent.name}.value {op} ...")
            return parent.wrap(_compare(parent.sub_attribute("value"), "pr", None))
        condition = _compare(attribute, op, literal)
        return condition if parent is None else parent.wrap(condition)


def _work_type(op: str, literal: CompValue | None, positive: bool) -> ColumnElement[bool]:
    """``type eq "work"`` is true of the one stored email; other types are not stored, so they are refused."""
    is_work = literal is not None and isinstance(literal.value, str) and literal.value.lower() == "work"
    if op == "eq" and is_work and positive:
        return true()
    raise InvalidFilter(
        'only the work email is stored, so the only emails type condition is type eq "work", required '
        '(not under "or" or "not")'
    )


def user_filter(text: str) -> ColumnElement[bool]:
    """The condition on ``agents`` for a SCIM User filter (RFC 7644 §3.4.2.2); raises ``InvalidFilter``.

    Unknown attributes and unsupported operators are refused rather than dropped: a dropped condition would
    widen the result, up to every agent.
    """
    return _Walk(_USER).filter(parse_filter(text), None, True)


def group_filter(text: str) -> ColumnElement[bool]:
    """The condition on ``groups`` for a SCIM Group filter (RFC 7644 §3.4.2.2); raises ``InvalidFilter``.

    ``members.value`` and ``members[value ...]`` become a correlated EXISTS on ``group_members``.
    """
    return _Walk(_GROUP).filter(parse_filter(text), None, True)


def user_equality(attribute: str, lexeme: str) -> tuple[str, str]:
    """The ``agents`` column and the value ``<attribute> eq <lexeme>`` compares, its case rule applied.

    For the lookup path (``scim.lookups``), which skips the parser for the one filter shape IdPs send most.
    Only a case-exact or ``userName`` string attribute qualifies: an ASCII-folded one needs a function on the
    column, which the lookup's prebuilt statements do not have. Raises ``InvalidFilter`` like ``user_filter``.
    """
    found = _USER.attributes.get(attribute.lower())
    if found is None or found.kind is not _Kind.STRING or found.case is _Case.ASCII:
        raise InvalidFilter(f"{attribute} is not a lookup attribute")
    value = json_string(lexeme, len(attribute)).value
    assert isinstance(value, str)
    column = found.column
    assert isinstance(column, Column)
    return column.name, user_name_key(value) if found.case is _Case.KEY else value
