"""The canonical form of an access record and the chain's hashes.

A record's ``content_hash`` is SHA-256 over its canonical form: a JSON array of every content column in a fixed
order (``FIELDS``), prefixed by the format version, with the time as RFC 3339 UTC with microseconds and ``detail``
with sorted keys. An array, not an object, because the order is the schema and a key cannot be smuggled in.
Values are taken as the database returns them, so the sealer and ``audit verify`` compute the same bytes on
SQLite and PostgreSQL.

The link binds a record to its position and predecessor: ``hash = SHA-256(prev_hash ":" chain_pos ":"
content_hash)``. Binding the position makes a reorder or an insertion visible even where the contents are equal;
keeping ``content_hash`` separate lets retention drop a record's content and keep a stub that still verifies the
link (RFC 6962's Merkle leaves keep hashes for the same reason).
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

VERSION = "cg1"
#: The hash before the first record.
GENESIS = "0" * 64
#: The content columns, in canonical order. Changing this list is a new VERSION.
FIELDS = (
    "seq",
    "time",
    "kind",
    "request_id",
    "agent_id",
    "agent_name",
    "source_ip",
    "channel",
    "method",
    "path",
    "status",
    "decision",
    "reason",
    "bytes_in",
    "bytes_out",
    "duration_ms",
    "actor",
    "detail",
    "subject",
    "action",
)

_encode = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), sort_keys=True, allow_nan=False).encode


def canonical_time(moment: datetime | str) -> str:
    """RFC 3339 in UTC with microseconds, from an aware datetime or SQLite's naive UTC text."""
    if isinstance(moment, str):
        if len(moment) == 26 and moment[10] == " ":  # SQLAlchemy's SQLite DATETIME text, already UTC
            return f"{moment[:10]}T{moment[11:]}Z"
        if len(moment) == 27 and moment[10] == "T" and moment[26] == "Z":  # already canonical (PostgreSQL's to_char)
            return moment
        moment = datetime.fromisoformat(moment)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    elif moment.utcoffset():
        moment = moment.astimezone(UTC)
    return moment.replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


def canonical_detail(detail: Any) -> Any:
    """``detail`` as a value: SQLite hands back JSON text, PostgreSQL a decoded value."""
    if detail is None or detail == "null":
        return None
    if isinstance(detail, str | bytes):
        return json.loads(detail)
    return detail


_TIME, _DETAIL = FIELDS.index("time"), FIELDS.index("detail")


@functools.lru_cache(maxsize=512)
def _parsed(text: str) -> Any:
    # Request records repeat a handful of detail texts ({"via": "forward-auth"}, a policy's ids): parsing each once
    # saves the batch writer a third of its hashing time. The value is only encoded, never changed.
    return json.loads(text)


def canonical_bytes(values: Sequence[Any]) -> bytes:
    """The canonical form of a record given as its ``FIELDS`` values, in that order (a row as read)."""
    items: list[Any] = [VERSION, *values]
    items[_TIME + 1] = canonical_time(values[_TIME])
    detail = values[_DETAIL]
    items[_DETAIL + 1] = _parsed(detail) if type(detail) is str and len(detail) <= 512 else canonical_detail(detail)
    return _encode(items).encode("utf-8")


def content_hash(values: Sequence[Any]) -> str:
    return hashlib.sha256(canonical_bytes(values)).hexdigest()


def link_hash(prev_hash: str, chain_pos: int, content: str) -> str:
    return hashlib.sha256(f"{prev_hash}:{chain_pos}:{content}".encode("ascii")).hexdigest()
