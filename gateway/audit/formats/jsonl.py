"""JSON Lines (https://jsonlines.org): one JSON object per record, every column, chain fields included.

With ``seq``, ``chain_pos``, ``content_hash``, ``prev_hash`` and ``hash`` a SIEM can recompute the chain
(``gateway/audit/canonical.py``) and notice a record missing between two it received. JSON escapes every C0
control (RFC 8259 §7); DEL, the C1 controls, U+2028/U+2029 and the bidi controls are escaped as ``\\uXXXX`` too,
so no viewer splits or reorders a line.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Any

from gateway.audit.formats._common import CONTROLS, rfc3339
from gateway.storage.access_log import AccessRecord

_encode = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode


def _unicode_escape(match: Any) -> str:
    return f"\\u{ord(match.group()):04x}"


def dumps(value: object) -> str:
    """Compact JSON on one line, with every control character escaped (they only occur inside strings, where
    ``\\uXXXX`` is the same character to a JSON parser)."""
    return CONTROLS.sub(_unicode_escape, _encode(value))


def record_dict(record: AccessRecord) -> dict[str, Any]:
    values = asdict(record)
    values["time"] = rfc3339(record.time)
    return values


class JsonLines:
    name = "jsonl"
    media_type = "application/x-ndjson"

    def format(self, record: AccessRecord) -> str:
        return dumps(record_dict(record))
