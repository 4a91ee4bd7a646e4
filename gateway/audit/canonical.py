"""The canonical form of an access record and the chain's hashes.

A record's ``content_hash`` binds every content column (``FIELDS``) in two levels, so that retention can empty a
record and its stub still proves its ``seq``, ``time`` and ``kind`` (format ``cg2``)::

    rest_hash    = B64(SHA-256(["cg2", request_id, agent_id, ..., action]))       every column but the head
    content_hash = "cg2:" B64(SHA-256(["cg2", seq, time, kind, rest_hash]))

(B64: unpadded base64url, RFC 4648 §5, so the prefixed value still fits the column the hex digests of ``cg1``
had.)
Each form is a JSON array in a fixed order (an array, not an object: the order is the schema and a key cannot be
smuggled in), the time as RFC 3339 UTC with microseconds, ``detail`` with sorted keys. Values are taken as the
database returns them, so the sealer and ``audit verify`` compute the same bytes on SQLite and PostgreSQL. A stub
keeps the head and ``rest_hash``: ``audit verify`` recomputes its ``content_hash`` from them, so a stub whose time
was moved back to look due for purging, or whose kind was changed, no longer matches (an edited record cannot be
passed off as a stub either). The version rides in ``content_hash`` itself, which the link covers.

Records written before ``cg2`` carry a bare SHA-256 over ``["cg1", *FIELDS values]``; they still verify, but a
stub of one proves only its link (``audit verify`` counts and names them).

The link binds a record to its position and predecessor: ``hash = SHA-256(prev_hash ":" chain_pos ":"
content_hash)``. Binding the position makes a reorder or an insertion visible even where the contents are equal;
keeping ``content_hash`` separate lets retention drop a record's content and keep a stub that still verifies the
link (RFC 6962's Merkle leaves keep hashes for the same reason).
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

#: The current format, and the prefix of its ``content_hash`` values.
VERSION = "cg2"
PREFIX = VERSION + ":"
#: The first format: one SHA-256 over every field, no prefix.
LEGACY_VERSION = "cg1"
#: The hash before the first record.
GENESIS = "0" * 64
#: The content columns, in canonical order. Changing this list is a new VERSION. The first three are a record's
#: head, which a purged stub keeps; the rest are hashed together as ``rest_hash``.
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


HEAD_FIELDS = FIELDS[:3]
#: The columns retention empties (and ``rest_hash`` covers).
REST_FIELDS = FIELDS[3:]
if HEAD_FIELDS != ("seq", "time", "kind"):  # the split is relied on below
    raise RuntimeError(f"the canonical head must be seq, time, kind, not {HEAD_FIELDS}")
_TIME, _DETAIL = FIELDS.index("time"), FIELDS.index("detail")
_REST_DETAIL = _DETAIL - len(HEAD_FIELDS) + 1


@functools.lru_cache(maxsize=512)
def _parsed(text: str) -> Any:
    # Request records repeat a handful of detail texts ({"via": "forward-auth"}, a policy's ids): parsing each once
    # saves the batch writer a third of its hashing time. The value is only encoded, never changed.
    return json.loads(text)


def _detail(detail: Any) -> Any:
    return _parsed(detail) if type(detail) is str and len(detail) <= 512 else canonical_detail(detail)


def legacy_bytes(values: Sequence[Any]) -> bytes:
    """The ``cg1`` form of a record given as its ``FIELDS`` values, in that order (a row as read)."""
    items: list[Any] = [LEGACY_VERSION, *values]
    items[_TIME + 1] = canonical_time(values[_TIME])
    items[_DETAIL + 1] = _detail(values[_DETAIL])
    return _encode(items).encode("utf-8")


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode("ascii")


def rest_hash(values: Sequence[Any]) -> str:
    """The hash of everything after the head, of a record given as its ``FIELDS`` values."""
    items: list[Any] = [VERSION, *values[len(HEAD_FIELDS) : len(FIELDS)]]
    items[_REST_DETAIL] = _detail(items[_REST_DETAIL])
    return _b64(_encode(items).encode("utf-8"))


@functools.lru_cache(maxsize=256)
def _json_text(value: str) -> str:
    return _encode(value)


def head_hash(seq: Any, time: Any, kind: Any, rest: str) -> str:
    """``content_hash`` from a record's head and ``rest_hash``: what a stub is checked against."""
    if type(seq) is int and type(kind) is str:
        # The same bytes as _encode gives (the time's canonical text and a base64url digest need no escaping), written
        # directly: the batch writer hashes every record on the hot path, and this halves the head's cost.
        text = f'["{VERSION}",{seq},"{canonical_time(time)}",{_json_text(kind)},"{rest}"]'
    else:
        text = _encode([VERSION, seq, canonical_time(time), kind, rest])
    return PREFIX + _b64(text.encode("utf-8"))


def content_hash(values: Sequence[Any]) -> str:
    """The ``content_hash`` of a record given as its ``FIELDS`` values, in that order (a row as read)."""
    return head_hash(values[0], values[_TIME], values[2], rest_hash(values))


def content_matches(values: Sequence[Any], stored: str) -> bool:
    """Whether the record's values still hash to ``stored``, in the format ``stored`` was written in."""
    if stored.startswith(PREFIX):
        return content_hash(values) == stored
    return hashlib.sha256(legacy_bytes(values)).hexdigest() == stored


def link_hash(prev_hash: str, chain_pos: int, content: str) -> str:
    return hashlib.sha256(f"{prev_hash}:{chain_pos}:{content}".encode("ascii")).hexdigest()
