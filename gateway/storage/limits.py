"""What the database cannot store, checked before a write: both SCIM and the directory sync take values from an
identity source that may send more than our columns hold."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy import String, Table


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
        if "\x00" in value:
            return f"{attribute} contains the character U+0000, which cannot be stored; remove it"
        column_type = table.c[column].type
        limit = column_type.length if isinstance(column_type, String) else None
        if limit is not None and len(value) > limit:
            return f"{attribute} is {len(value)} characters long; the gateway stores at most {limit}"
    return None
