"""Reading the directory: users and groups by paged search (RFC 2696), a whole scope or what changed since a
high-water mark. Blocking ldap3 calls; callers run them in a thread.

A read is all or nothing: any error, or a page missing, raises :class:`DirectoryUnavailable` and the partial
result is dropped, so a connection cut in the middle of a full read never looks like deleted users. That covers
the answers ldap3 does not raise for even with ``raise_exceptions``: a search ended by the server's size or time
limit, a referral, and continuation references to parts of the scope another server holds (RFC 4511 §4.5.3).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from ldap3 import SUBTREE, Connection
from ldap3.core.exceptions import LDAPException
from ldap3.utils.conv import escape_filter_chars

from gateway.directory.connection import close, open_connection
from gateway.directory.entries import (
    DirectoryUser,
    entry_id_of,
    group_attributes,
    normalize_dn,
    user_attributes,
    user_from_entry,
)
from gateway.directory.errors import DirectoryUnavailable
from gateway.directory.groups import DirectoryGroup
from gateway.directory.settings import LdapSettings

#: Simple Paged Results control (RFC 2696).
PAGED_RESULTS = "1.2.840.113556.1.4.319"
#: LDAP_MATCHING_RULE_IN_CHAIN: transitive membership evaluated by the server (Active Directory).
IN_CHAIN = "1.2.840.113556.1.4.1941"


@dataclass(frozen=True, slots=True)
class Snapshot:
    users: list[DirectoryUser]
    groups: list[DirectoryGroup]
    #: Normalised DNs of the agents group's (transitive) members, when asked of the server (``in_chain``).
    agents_members: frozenset[str] | None
    #: The newest ``changed`` value seen (GeneralizedTime), the next incremental sync's lower bound.
    high_water: str | None


def paged_search(
    connection: Connection, base: str, search_filter: str, attributes: list[str], page_size: int
) -> Iterator[tuple[str, dict[str, Any]]]:
    """(DN, attributes) of every entry, page by page: the server returns a cookie with each page and an empty
    cookie after the last one (RFC 2696 §3)."""
    cookie: bytes | None = None
    while True:
        connection.search(
            base,
            search_filter,
            search_scope=SUBTREE,
            attributes=attributes,
            paged_size=page_size,
            paged_cookie=cookie,
        )
        _require_complete(connection, base)
        for entry in connection.response or ():
            if entry.get("type") == "searchResEntry":
                yield entry["dn"], entry["raw_attributes"]
        control = (connection.result.get("controls") or {}).get(PAGED_RESULTS)
        cookie = control["value"]["cookie"] if control else None
        if not cookie:
            return


#: LDAP result code success (RFC 4511 §4.1.9); any other ends a search short of its scope.
_SUCCESS = 0
_LIMITS_HINT = (
    " (lift the bind account's size and time limits for paged searches: OpenLDAP olcLimits "
    "size.prtotal=unlimited time=unlimited; AD MaxQueryDuration)"
)
_HINTS = {
    "sizeLimitExceeded": _LIMITS_HINT,
    "timeLimitExceeded": _LIMITS_HINT,
    "adminLimitExceeded": _LIMITS_HINT,
    "referral": " (point the base at entries this server holds)",
}


def _require_complete(connection: Connection, base: str) -> None:
    """Raise unless the page just read is the whole answer for its part of the scope: result ``success``
    (RFC 4511 §4.1.9) and no continuation reference. ldap3 returns sizeLimitExceeded, timeLimitExceeded and
    referral as ordinary results, and a page cut short by them carries no cookie, so it would pass for the last."""
    result = connection.result or {}
    references = [
        str(uri)
        for entry in connection.response or ()
        if entry.get("type") == "searchResRef"
        for uri in entry.get("uri") or ()
    ]
    if result.get("result") != _SUCCESS:
        description = str(result.get("description") or f"result {result.get('result')}")
        said = str(result.get("message") or "").strip()[:200]
        referrals = ", ".join(str(uri) for uri in result.get("referrals") or ())[:300]
        raise DirectoryUnavailable(
            f"The search of {base!r} ended with {description}"
            + (f" ({said})" if said else "")
            + (f", referred to {referrals}" if referrals else "")
            + f": the read is incomplete and nothing was changed{_HINTS.get(description, '')}"
        )
    if references:
        raise DirectoryUnavailable(
            f"The search of {base!r} returned continuation references to {', '.join(references)[:300]}: part of "
            "the scope is held by another server, so the read is incomplete and nothing was changed (point the "
            "base at entries this server holds)"
        )


#: Entries asked for by id in one search (the filter stays well under servers' size limits).
_IDS_PER_SEARCH = 50


def entry_id_filter(attribute: str, entry_id: str) -> str:
    """``(attribute=value)`` for one stable id; AD's objectGUID is matched on its 16 raw bytes (RFC 4515 §3)."""
    if attribute.lower() == "objectguid":
        raw = uuid.UUID(entry_id).bytes_le
        escaped = "".join("\\" + format(b, "02x") for b in raw)
        return f"({attribute}={escaped})"
    return f"({attribute}={escape_filter_chars(entry_id)})"


def _text(values: Any) -> str | None:
    value = values[0] if isinstance(values, list) and values else values
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value if isinstance(value, str) and value else None


def group_from_entry(dn: str, attributes: Mapping[str, Any], settings: LdapSettings) -> DirectoryGroup | None:
    names = settings.attributes
    lowered = {key.lower(): value for key, value in attributes.items()}
    entry_id = entry_id_of((lowered.get(names.entry_id.lower()) or [None])[0])
    name = _text(lowered.get(names.group_name.lower()))
    if entry_id is None or name is None:
        return None
    members = lowered.get(names.member.lower()) or []
    return DirectoryGroup(
        entry_id, dn, name, frozenset(normalize_dn(m.decode() if isinstance(m, bytes) else m) for m in members)
    )


def _order(value: str) -> tuple[int, str]:
    """GeneralizedTime (modifyTimestamp, whenChanged) orders as text; an update sequence number (AD's
    uSNChanged) as a number, so "1000" comes after "999"."""
    return (len(value), value) if value.isdigit() else (0, value)


def newest_change(current: str | None, attributes: dict[str, Any], name: str) -> str | None:
    for key, values in attributes.items():
        if key.lower() == name.lower():
            value = _text(values)
            if value is not None and (current is None or _order(value) > _order(current)):
                return value
    return current


class DirectoryReader:
    def __init__(self, settings: LdapSettings, password: str) -> None:
        self._settings = settings
        self._password = password

    def read(self, since: str | None = None) -> Snapshot:
        """Every user in scope (or those changed at or after ``since``), every group, and the agents group's
        members when the server resolves nesting."""
        settings = self._settings
        connection = open_connection(settings, self._password)
        try:
            users_filter = settings.users_filter
            if since is not None:
                changed = f"({settings.attributes.changed}>={escape_filter_chars(since)})"
                users_filter = f"(&{users_filter}{changed})"
            users: list[DirectoryUser] = []
            high_water = since
            for dn, attributes in paged_search(
                connection, settings.users_base, users_filter, user_attributes(settings), settings.page_size
            ):
                high_water = newest_change(high_water, attributes, settings.attributes.changed)
                user = user_from_entry(dn, attributes, settings)
                if user is not None:
                    users.append(user)
            groups = self.read_groups(connection)
            members = self._agents_members(connection)
        except LDAPException as exc:
            raise DirectoryUnavailable(
                f"Reading the directory {settings.url} failed part-way ({type(exc).__name__}: {str(exc)[:200]}); "
                "nothing was changed"
            ) from None
        finally:
            close(connection)
        return Snapshot(users, groups, members, high_water)

    def read_users(self, entry_ids: list[str]) -> list[DirectoryUser]:
        """The users in scope among ``entry_ids`` (an id not returned is out of scope)."""
        settings = self._settings
        connection = open_connection(settings, self._password)
        found: list[DirectoryUser] = []
        try:
            for start in range(0, len(entry_ids), _IDS_PER_SEARCH):
                ids = "".join(
                    entry_id_filter(settings.attributes.entry_id, e) for e in entry_ids[start : start + _IDS_PER_SEARCH]
                )
                search_filter = f"(&{settings.users_filter}(|{ids}))"
                for dn, attributes in paged_search(
                    connection, settings.users_base, search_filter, user_attributes(settings), settings.page_size
                ):
                    user = user_from_entry(dn, attributes, settings)
                    if user is not None:
                        found.append(user)
        except LDAPException as exc:
            raise DirectoryUnavailable(
                f"Reading users of the directory {settings.url} failed ({type(exc).__name__}); nothing was changed"
            ) from None
        finally:
            close(connection)
        return found

    def read_groups(self, connection: Connection) -> list[DirectoryGroup]:
        settings = self._settings
        if settings.groups_base is None:
            return []
        found = []
        for dn, attributes in paged_search(
            connection, settings.groups_base, settings.groups_filter, group_attributes(settings), settings.page_size
        ):
            group = group_from_entry(dn, attributes, settings)
            if group is not None:
                found.append(group)
        return found

    def _agents_members(self, connection: Connection) -> frozenset[str] | None:
        settings = self._settings
        if settings.agents_group is None or settings.nested_groups != "in_chain":
            return None
        in_chain = f"(memberOf:{IN_CHAIN}:={escape_filter_chars(settings.agents_group)})"
        search_filter = f"(&{settings.users_filter}{in_chain})"
        return frozenset(
            normalize_dn(dn)
            for dn, _ in paged_search(connection, settings.users_base, search_filter, ["1.1"], settings.page_size)
        )
