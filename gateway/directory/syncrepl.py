"""The LDAP Content Synchronization Operation's controls (RFC 4533), encoded and decoded by hand: ldap3 knows
the request as an opaque control and hands back the responses' values as bytes.

Only what a refreshAndPersist consumer needs: the Sync Request Control (§2.2), the Sync State Control on each
entry (§2.3) and the Sync Info Message (§2.5) that ends the refresh stage or lists deleted entries.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Literal

SYNC_REQUEST = "1.3.6.1.4.1.4203.1.9.1.1"
SYNC_STATE = "1.3.6.1.4.1.4203.1.9.1.2"
SYNC_INFO = "1.3.6.1.4.1.4203.1.9.1.4"

REFRESH_ONLY = 1
REFRESH_AND_PERSIST = 3

State = Literal["present", "add", "modify", "delete"]
_STATES: tuple[State, ...] = ("present", "add", "modify", "delete")


def _length(n: int) -> bytes:
    if n < 0x80:
        return bytes([n])
    body = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(body)]) + body


def _tlv(tag: int, value: bytes) -> bytes:
    return bytes([tag]) + _length(len(value)) + value


def sync_request(mode: int = REFRESH_AND_PERSIST, cookie: bytes | None = None) -> tuple[str, bool, bytes]:
    """The Sync Request Control as an ldap3 control tuple: ``SEQUENCE { mode ENUMERATED, cookie OCTET STRING
    OPTIONAL }`` (reloadHint left at its default, FALSE). Critical: a server that cannot sync must refuse."""
    body = _tlv(0x0A, bytes([mode])) + (_tlv(0x04, cookie) if cookie else b"")
    return SYNC_REQUEST, True, _tlv(0x30, body)


def _read(data: bytes, at: int) -> tuple[int, bytes, int]:
    """One BER TLV at ``at``: (tag, value, next offset)."""
    if at + 2 > len(data):
        raise ValueError("truncated BER element")
    tag, first = data[at], data[at + 1]
    at += 2
    if first & 0x80:
        size = first & 0x7F
        length = int.from_bytes(data[at : at + size], "big")
        at += size
    else:
        length = first
    if at + length > len(data):
        raise ValueError("truncated BER element")
    return tag, data[at : at + length], at + length


def _elements(data: bytes) -> list[tuple[int, bytes]]:
    found, at = [], 0
    while at < len(data):
        tag, value, at = _read(data, at)
        found.append((tag, value))
    return found


@dataclass(frozen=True, slots=True)
class SyncState:
    state: State
    entry_uuid: str
    cookie: bytes | None


def parse_sync_state(value: bytes) -> SyncState:
    """``SEQUENCE { state ENUMERATED, entryUUID syncUUID, cookie syncCookie OPTIONAL }`` (RFC 4533 §2.3)."""
    tag, body, _ = _read(value, 0)
    parts = _elements(body)
    if tag != 0x30 or len(parts) < 2 or parts[0][0] != 0x0A or parts[1][0] != 0x04 or len(parts[1][1]) != 16:
        raise ValueError("not a Sync State Control value")
    state = int.from_bytes(parts[0][1], "big")
    if state >= len(_STATES):
        raise ValueError(f"unknown sync state {state}")
    cookie = parts[2][1] if len(parts) > 2 and parts[2][0] == 0x04 else None
    return SyncState(_STATES[state], str(uuid.UUID(bytes=parts[1][1])), cookie)


@dataclass(frozen=True, slots=True)
class SyncInfo:
    #: The refresh stage is over (refreshDelete / refreshPresent with refreshDone TRUE).
    refresh_done: bool
    #: Entries the server says were deleted (syncIdSet with refreshDeletes TRUE).
    deleted: tuple[str, ...]
    cookie: bytes | None


def parse_sync_info(value: bytes) -> SyncInfo:
    """The Sync Info Message's CHOICE (RFC 4533 §2.5): newcookie [0], refreshDelete [1], refreshPresent [2],
    syncIdSet [3]."""
    tag, body, _ = _read(value, 0)
    if tag == 0x80:
        return SyncInfo(False, (), body)
    parts = _elements(body)
    cookie = next((v for t, v in parts if t == 0x04), None)
    flag = next((v for t, v in parts if t == 0x01), None)
    if tag in (0xA1, 0xA2):
        return SyncInfo(flag is None or flag != b"\x00", (), cookie)
    if tag == 0xA3:
        deletes = flag is not None and flag != b"\x00"
        uuids = next((v for t, v in parts if t == 0x31), b"")
        ids = tuple(str(uuid.UUID(bytes=v)) for t, v in _elements(uuids) if t == 0x04 and len(v) == 16)
        return SyncInfo(False, ids if deletes else (), cookie)
    raise ValueError(f"unknown Sync Info Message choice 0x{tag:02x}")
