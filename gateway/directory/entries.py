"""Directory entries → what channelgate needs of them, with no I/O.

An account is disabled when any configured mechanism says so: Active Directory's ``userAccountControl``
ACCOUNTDISABLE bit (0x2, the bit the ``1.2.840.113556.1.4.803`` filter tests), OpenLDAP ppolicy's administrative
lock (``pwdAccountLockedTime: 000001010000Z``; a timed lockout after failed binds expires by itself and is not a
departure), or 389 DS's ``nsAccountLock: true``. Active Directory's ``accountExpires`` is read here too, as the
moment it ends the account (``expiry.py``); the sync compares it with its clock when it plans.

A value a mechanism cannot read never disables by itself: only a value that says "disabled" does. An unreadable
``accountExpires`` is also kept (``expiry_unreadable``) so that the plan can report it and leave the agent as it
is rather than guess either way.
"""

from __future__ import annotations

import functools
import string
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from ldap3.core.exceptions import LDAPInvalidDnError
from ldap3.utils.dn import escape_rdn, parse_dn

from gateway.directory.expiry import parse_account_expires
from gateway.directory.settings import LdapSettings

#: Active Directory ACCOUNTDISABLE (MS-ADTS §2.2.16).
ACCOUNTDISABLE = 0x2
#: ppolicy's "locked by an administrator until unlocked" value (draft-behera-ldap-password-policy §5.3.3).
PERMANENT_LOCK = "000001010000Z"

Attributes = Mapping[str, Sequence[Any]]


@dataclass(frozen=True, slots=True)
class DirectoryUser:
    entry_id: str
    dn: str
    user_name: str
    email: str | None
    display_name: str | None
    employee_number: str | None
    manager_dn: str | None
    #: Why the directory says the account is disabled; None while it is enabled.
    disabled: str | None
    #: DNs of the groups the entry names itself in (memberOf), before nesting.
    member_of: frozenset[str]
    #: When accountExpires ends the account (None: never, or ``account_expires`` not configured).
    expires: datetime | None = None
    #: Why accountExpires could not be read; None when it could (or is not configured).
    expiry_unreadable: str | None = None


def _unescape(value: str) -> str:
    """An attribute value of a DN string with its escapes decoded: ``\\,`` and ``\\2C`` are both a comma, and
    ``\\C3\\A9`` is the UTF-8 of "é" (RFC 4514 §2.4)."""
    raw = bytearray()
    index = 0
    while index < len(value):
        char = value[index]
        pair = value[index + 1 : index + 3]
        if char == "\\" and len(pair) == 2 and all(c in string.hexdigits for c in pair):
            raw.append(int(pair, 16))
            index += 3
        elif char == "\\" and index + 1 < len(value):
            raw += value[index + 1].encode()
            index += 2
        else:
            raw += char.encode()
            index += 1
    return raw.decode("utf-8", "replace")


@functools.lru_cache(maxsize=65536)
def dn_rdns(dn: str) -> tuple[str, ...]:
    """The RDNs of ``dn``, leaf first, each in one canonical form: escapes decoded, attribute type and value
    case-folded, insignificant spaces dropped (RFC 4518 §2.6.1), the values of a multi-valued RDN sorted, then
    escaped again (RFC 4514 §2.4). So ``ou=Sales\\, EU`` (how an admin writes it) and ``OU=Sales\\2C EU`` (how
    OpenLDAP sends it) are one RDN. A string ldap3 cannot parse is split on its commas, as text."""
    try:
        parsed = parse_dn(dn, strip=True)
    except LDAPInvalidDnError:
        return tuple(part.strip().lower() for part in dn.split(","))
    rdns: list[str] = []
    values: list[str] = []
    for attribute_type, value, separator in parsed:
        folded = " ".join(_unescape(value).casefold().split())
        values.append(f"{attribute_type.lower()}={escape_rdn(folded) if folded else ''}")
        if separator != "+":
            rdns.append("+".join(sorted(values)))
            values = []
    return tuple(rdns)


def dn_suffix(dn: str, count: int) -> str:
    """The last ``count`` RDNs of ``dn`` as written (escapes and case kept)."""
    try:
        parsed = parse_dn(dn, strip=True)
    except LDAPInvalidDnError:
        return ",".join(part.strip() for part in dn.split(",")[-count:])
    rdns: list[str] = []
    values: list[str] = []
    for attribute_type, value, separator in parsed:
        values.append(f"{attribute_type}={value}")
        if separator != "+":
            rdns.append("+".join(values))
            values = []
    return ",".join(rdns[-count:])


def normalize_dn(dn: str) -> str:
    """``dn`` in the canonical form of :func:`dn_rdns`: two DNs naming one entry are one string."""
    return ",".join(dn_rdns(dn))


def _first(attributes: Attributes, name: str) -> Any:
    for key, values in attributes.items():
        if key.lower() == name.lower():
            if isinstance(values, (str, bytes)):
                return values
            return values[0] if values else None
    return None


def _all(attributes: Attributes, name: str) -> list[Any]:
    for key, values in attributes.items():
        if key.lower() == name.lower():
            return [values] if isinstance(values, (str, bytes)) else list(values)
    return []


def _text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    text = str(value).strip()
    return text or None


def entry_id_of(value: Any) -> str | None:
    """entryUUID as text; AD's objectGUID (16 bytes, little-endian fields) as the same UUID text form."""
    if isinstance(value, bytes) and len(value) == 16:
        return str(uuid.UUID(bytes_le=value))
    text = _text(value)
    return None if text is None else text.lower().strip("{}")


def disabled_reason(attributes: Attributes, settings: LdapSettings) -> str | None:
    """The first configured mechanism that marks the account disabled, as a reason for the access log."""
    if "user_account_control" in settings.disabled_when:
        control = _text(_first(attributes, "userAccountControl"))
        if control is not None and control.lstrip("-").isdigit() and int(control) & ACCOUNTDISABLE:
            return "disabled in the directory (userAccountControl ACCOUNTDISABLE)"
    if "ppolicy_lock" in settings.disabled_when and _text(_first(attributes, "pwdAccountLockedTime")) == PERMANENT_LOCK:
        return "locked in the directory (pwdAccountLockedTime)"
    if "ns_account_lock" in settings.disabled_when:
        lock = _text(_first(attributes, "nsAccountLock"))
        if lock is not None and lock.lower() == "true":
            return "locked in the directory (nsAccountLock)"
    return None


def account_expiry(attributes: Attributes, settings: LdapSettings) -> tuple[datetime | None, str | None]:
    """(when the account expires, why that cannot be read) when ``account_expires`` is configured."""
    if "account_expires" not in settings.disabled_when:
        return None, None
    try:
        return parse_account_expires(_text(_first(attributes, "accountExpires"))), None
    except ValueError as exc:
        return None, str(exc)


def user_from_entry(dn: str, attributes: Attributes, settings: LdapSettings) -> DirectoryUser | None:
    """The user an entry describes; None when it lacks the stable id or the userName attribute."""
    names = settings.attributes
    entry_id = entry_id_of(_first(attributes, names.entry_id))
    user_name = _text(_first(attributes, names.user_name))
    if entry_id is None or user_name is None:
        return None
    expires, expiry_unreadable = account_expiry(attributes, settings)
    return DirectoryUser(
        entry_id=entry_id,
        dn=dn,
        user_name=user_name,
        email=_text(_first(attributes, names.email)),
        display_name=_text(_first(attributes, names.display_name)),
        employee_number=_text(_first(attributes, names.employee_number)),
        manager_dn=_text(_first(attributes, names.manager)),
        disabled=disabled_reason(attributes, settings),
        member_of=frozenset(normalize_dn(v) for v in map(_text, _all(attributes, names.member_of)) if v),
        expires=expires,
        expiry_unreadable=expiry_unreadable,
    )


def user_attributes(settings: LdapSettings) -> list[str]:
    """The attributes a user search asks for (nothing else crosses the network)."""
    names = settings.attributes
    wanted = [
        names.entry_id,
        names.user_name,
        names.email,
        names.display_name,
        names.employee_number,
        names.manager,
        names.member_of,
        names.changed,
        "userAccountControl",
        "pwdAccountLockedTime",
        "nsAccountLock",
        "accountExpires",
    ]
    return list(dict.fromkeys(wanted))


def group_attributes(settings: LdapSettings) -> list[str]:
    names = settings.attributes
    return list(dict.fromkeys([names.entry_id, names.group_name, names.member, names.member_of, names.changed]))


def in_subtree(dn: str, base: str) -> bool:
    """Whether ``dn`` is ``base`` or below it, RDN by RDN (an escaped comma inside a value separates nothing)."""
    entry, parent = dn_rdns(dn), dn_rdns(base)
    return len(entry) >= len(parent) and entry[len(entry) - len(parent) :] == parent
