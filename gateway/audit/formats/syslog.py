"""RFC 5424 syslog with structured data: every field of the record as a PARAM of one SD-ELEMENT.

``<PRI>1 TIMESTAMP HOSTNAME channelgate - MSGID [channelgate@PEN seq="…" …] MSG``

- PRI = facility × 8 + severity (§6.2.1): facility authpriv (10), security/authorization messages kept apart from
  general logs; severity warning (4) for a refusal, notice (5) for a removal of access, info (6) otherwise.
- TIMESTAMP: RFC 3339 in UTC with microseconds (§6.2.3). MSGID: the record kind.
- HOSTNAME, APP-NAME, PROCID and MSGID are PRINTUSASCII only, at most 255, 48, 128 and 32 characters (§6):
  anything else becomes ``_``.
- The SD-ID is an enterprise one (§7.2.2), ``channelgate@<PEN>``: 32473 by default, the Private Enterprise Number
  IANA reserves for documentation (RFC 5612); set ``[audit] syslog_enterprise_number`` to your own.
- PARAM-VALUE escapes ``"``, ``\\`` and ``]`` (§6.3.3); control characters become ``\\xHH`` (a parser keeps a
  backslash before any other character as text, §6.3.3), so a value can never close the element or the line.
- MSG is a one-line summary, UTF-8 without a BOM (MSG-ANY, §6.4), control characters made visible the same way.
  Consumers should read the structured data; the summary is for people.
- No value is shortened, so a record with a long path or detail exceeds the 2048 octets every receiver must
  accept (RFC 5425 §4.3.1): raise the receiver's maximum message size (rsyslog ``$MaxMessageSize``, syslog-ng
  ``log-msg-size``) rather than lose the end of a record.
"""

from __future__ import annotations

import re
import socket

from gateway.audit.formats._common import Level, level, rfc3339, visible
from gateway.audit.formats.jsonl import dumps
from gateway.storage.access_log import AccessRecord

AUTHPRIV = 10
_SEVERITY = {Level.WARNING: 4, Level.NOTICE: 5, Level.INFO: 6}
#: IANA's documentation PEN (RFC 5612).
DOCUMENTATION_PEN = 32473
APP_NAME = "channelgate"

_NOT_PRINTUSASCII = re.compile("[^\x21-\x7e]")
_PARAM = re.compile(r'["\\\]]')


def header_field(text: str | None, limit: int) -> str:
    """A header field (§6): PRINTUSASCII, at most ``limit`` characters, ``-`` (NILVALUE) when empty."""
    cleaned = _NOT_PRINTUSASCII.sub("_", text or "")[:limit]
    return cleaned or "-"


def param_value(text: str) -> str:
    return visible(_PARAM.sub(lambda m: "\\" + m.group(), text))


def _params(record: AccessRecord) -> list[tuple[str, str]]:
    values: tuple[tuple[str, object], ...] = (
        ("seq", record.seq),
        ("chainPos", record.chain_pos),
        ("hash", record.hash),
        ("prevHash", record.prev_hash),
        ("contentHash", record.content_hash),
        ("kind", record.kind),
        ("requestId", record.request_id),
        ("agentId", record.agent_id),
        ("agentName", record.agent_name),
        ("src", record.source_ip),
        ("channel", record.channel),
        ("method", record.method),
        ("path", record.path),
        ("status", record.status),
        ("decision", record.decision),
        ("reason", record.reason),
        ("bytesIn", record.bytes_in),
        ("bytesOut", record.bytes_out),
        ("durationMs", record.duration_ms),
        ("actor", record.actor),
        ("subject", record.subject),
        ("action", record.action),
        ("detail", dumps(record.detail) if record.detail is not None else None),
        ("purged", "true" if record.purged else None),
    )
    return [(name, str(value)) for name, value in values if value is not None]


def summary(record: AccessRecord) -> str:
    words = [record.kind, record.agent_name or record.agent_id, record.method, record.path, record.decision]
    if record.status is not None:
        words.append(str(record.status))
    # The backslash is doubled so that \\xHH can only be an escaped control character here too.
    return visible(" ".join(word for word in words if word).replace("\\", "\\\\"))


class Syslog:
    name = "syslog"
    media_type = "text/plain; charset=utf-8"

    def __init__(self, *, hostname: str | None = None, enterprise_number: int = DOCUMENTATION_PEN) -> None:
        self.hostname = header_field(hostname or socket.gethostname(), 255)
        self.sd_id = f"{APP_NAME}@{enterprise_number}"

    def format(self, record: AccessRecord) -> str:
        pri = AUTHPRIV * 8 + _SEVERITY[level(record)]
        params = " ".join(f'{name}="{param_value(value)}"' for name, value in _params(record))
        return (
            f"<{pri}>1 {rfc3339(record.time)} {self.hostname} {APP_NAME} - {header_field(record.kind, 32)} "
            f"[{self.sd_id} {params}] {summary(record)}"
        )
