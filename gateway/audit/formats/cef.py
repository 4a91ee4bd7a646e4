"""ArcSight Common Event Format (CEF, "Implementing ArcSight CEF" revision 25).

``CEF:0|channelgate|channelgate|<version>|<kind>|<name>|<severity>|<extension>``. Header fields escape ``\\`` and
``|``; extension values escape ``\\``, ``=``, CR (``\\r``) and LF (``\\n``), so neither a second record (a line
break) nor a second key (`` key=``) can be forged. CEF has no escape for the other control characters: they are
written ``\\xHH`` after the backslash was escaped, so the sequence can only stand for an escaped character, and a
consumer that does not know it shows the text rather than emitting the control byte.

Extension keys, from the standard dictionary:

=================  ======================================
rt                 time (ms since the epoch)
src / c6a2         source address (IPv4 / IPv6 with c6a2Label; shost if not an address)
suser / suid       agent userName / agent id
request            path (query keys only)
requestMethod      HTTP method
cat                record kind
act                decision (allow, deny, disabled ...)
outcome            success / failure
reason             reason
in / out           request / response bytes
externalId         request id
cs1 … cs6          channel, dataSubject, dataAction, actor, contentHash, detail (JSON)
cn1 … cn3          chainPos, seq, durationMs
flexNumber1        httpStatus
flexString1 / 2    chainHash / prevHash
=================  ======================================
"""

from __future__ import annotations

import ipaddress
import re

from gateway.audit.formats._common import PRODUCT, VERSION, Level, epoch_ms, level, outcome, visible
from gateway.audit.formats.jsonl import dumps
from gateway.storage.access_log import AccessRecord

#: CEF severity 0-10: Low 0-3, Medium 4-6, High 7-8.
_SEVERITY = {Level.INFO: 3, Level.NOTICE: 5, Level.WARNING: 7}

NAMES = {
    "request": "Proxied request",
    "login": "Login",
    "login_failed": "Login failed",
    "logout": "Logout",
    "backchannel_logout": "Back-channel logout",
    "expired": "Session expired",
    "sessions_revoked": "Sessions revoked",
    "deprovision": "Agent disabled",
    "deprovision_step": "Deprovisioning step",
    "deprovision_complete": "Deprovisioning complete",
    "deprovision_attention": "Deprovisioning needs attention",
    "deprovision_held": "Deprovisioning held for approval",
    "deprovision_approved": "Deprovisioning approved",
    "deprovision_retried": "Deprovisioning retried",
    "security_event": "Shared Signals event",
    "scim": "SCIM provisioning",
    "audit_search": "Access log searched",
    "audit_export": "Access log exported",
}

_HEADER = re.compile(r"[\\|]")
_VALUE = re.compile(r"[\\=\r\n]")
_VALUE_ESCAPES = {"\\": "\\\\", "=": "\\=", "\r": "\\r", "\n": "\\n"}


def header_field(text: str) -> str:
    return visible(_HEADER.sub(lambda m: "\\" + m.group(), text))


def extension_value(text: str) -> str:
    return visible(_VALUE.sub(lambda m: _VALUE_ESCAPES[m.group()], text))


def _address(text: str) -> list[tuple[str, str]]:
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        # Not an address (the writers record one, but the value is kept rather than dropped): as a host name.
        return [("shost", text)]
    if address.version == 4:
        return [("src", str(address))]
    return [("c6a2", str(address)), ("c6a2Label", "sourceAddress")]


class Cef:
    name = "cef"
    media_type = "text/plain; charset=utf-8"

    def format(self, record: AccessRecord) -> str:
        header = "|".join(
            header_field(part)
            for part in (
                "CEF:0",
                PRODUCT,
                PRODUCT,
                VERSION,
                record.kind,
                NAMES.get(record.kind, record.kind),
                str(_SEVERITY[level(record)]),
            )
        )
        return header + "|" + " ".join(f"{key}={extension_value(value)}" for key, value in self.extension(record))

    def extension(self, record: AccessRecord) -> list[tuple[str, str]]:
        """The (key, value) pairs, in a fixed order, values not yet escaped."""
        pairs: list[tuple[str, str]] = [("rt", str(epoch_ms(record.time)))]
        if record.source_ip is not None:
            pairs += _address(record.source_ip)
        text = (
            ("suser", record.agent_name),
            ("suid", record.agent_id),
            ("request", record.path),
            ("requestMethod", record.method),
            ("cat", record.kind),
            ("act", record.decision),
            ("outcome", outcome(record)),
            ("reason", record.reason),
            ("externalId", record.request_id),
        )
        pairs += [(key, value) for key, value in text if value is not None]
        numbers = (("in", record.bytes_in), ("out", record.bytes_out))
        pairs += [(key, str(value)) for key, value in numbers if value is not None]
        labelled = (
            ("cs1", "channel", record.channel),
            ("cs2", "dataSubject", record.subject),
            ("cs3", "dataAction", record.action),
            ("cs4", "actor", record.actor),
            ("cs5", "contentHash", record.content_hash),
            ("cs6", "detail", dumps(record.detail) if record.detail is not None else None),
            ("cn1", "chainPos", _text(record.chain_pos)),
            ("cn2", "seq", _text(record.seq)),
            ("cn3", "durationMs", _text(record.duration_ms)),
            ("flexNumber1", "httpStatus", _text(record.status)),
            ("flexString1", "chainHash", record.hash),
            ("flexString2", "prevHash", record.prev_hash),
        )
        for key, label, value in labelled:
            if value is not None:
                pairs += [(key, value), (key + "Label", label)]
        return pairs


def _text(value: int | None) -> str | None:
    return None if value is None else str(value)
