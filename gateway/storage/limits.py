"""What the database cannot store, checked before a write: PostgreSQL refuses a ``VARCHAR(n)`` value longer than
``n`` characters and any text holding U+0000; SQLite takes both.

A write the database refuses for its data is refused again at every retry. SCIM and the directory sync take values
from an identity source that may send more than our columns hold: they refuse them (:func:`unstorable`), with a
message the source's admin can act on. The writers that must not lose anything and retry what failed — the access
log's batches, the deprovisioning pipeline's results — cannot refuse: one such value stopped them for good, and a
client or a channel console chooses some of these values (a request's path decoded from ``%00``, the method nginx
passes on, a console's error text or ticket reference). They fit them instead (:func:`fit_text`), the same way on
every database: a NUL replaced, a value too long cut, both visibly."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy import Column, String, Table

#: What ends a value that was cut: a reviewer sees it is not all of it.
CUT = "…"
NUL = "\x00"
#: What stands for a NUL character (Unicode's replacement character).
NUL_STANDS_FOR = "\ufffd"


def unstorable(table: Table, attributes: Mapping[str, str], columns: Mapping[str, Any]) -> str | None:
    """Why a value of ``columns`` cannot be stored in ``table``, naming it as ``attributes`` maps its column (the
    source's name for it), or None.

    PostgreSQL refuses a string longer than its ``varchar(n)`` and any text holding U+0000, both of which SQLite
    stores: checked here, either database refuses the value the same way, with a message the source's admin can
    act on, instead of a failed write the source would retry for ever.
    """
    for column, attribute in attributes.items():
        value = columns.get(column)
        if not isinstance(value, str):
            continue
        if NUL in value:
            return f"{attribute} contains the character U+0000, which cannot be stored; remove it"
        limit = length_of(table.c[column])
        if limit is not None and len(value) > limit:
            return f"{attribute} is {len(value)} characters long; the gateway stores at most {limit}"
    return None


def needs_fitting(value: object, length: int | None) -> bool:
    """Whether ``value`` is a text the column (``length`` characters at most, None: unbounded) would refuse."""
    return isinstance(value, str) and ((length is not None and len(value) > length) or NUL in value)


def fit_text(value: str, length: int | None) -> str:
    """``value`` with each NUL replaced by ``NUL_STANDS_FOR``, cut to ``length`` characters ending in ``CUT`` when
    longer."""
    value = value.replace(NUL, NUL_STANDS_FOR)
    return value if length is None or len(value) <= length else value[: length - len(CUT)] + CUT


def length_of(column: Column[Any]) -> int | None:
    """The most characters ``column`` holds; None for an unbounded text."""
    return column.type.length if isinstance(column.type, String) else None
