"""The change feed: an RFC 4533 refreshAndPersist search that stays open, so the directory pushes every change
within milliseconds of the write (OpenLDAP syncprov).

ldap3's ASYNC_STREAM strategy reads the connection in its own thread and hands each response of the persistent
search to a callback; the callback passes it to the event loop. Entries of the refresh stage (the whole content)
are skipped: a sync runs right after the refresh ends to cover anything missed while the feed was down, and
the periodic syncs stay the source of truth. ``DEREF_NEVER``: OpenLDAP refuses alias dereferencing in a sync.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ldap3 import ASYNC_STREAM, DEREF_NEVER, SUBTREE, Connection
from ldap3.core.exceptions import LDAPException

from gateway.directory.connection import close, open_connection
from gateway.directory.entries import dn_rdns, dn_suffix, group_attributes, user_attributes
from gateway.directory.settings import LdapSettings
from gateway.directory.syncrepl import SYNC_INFO, SYNC_STATE, parse_sync_info, parse_sync_state, sync_request

log = logging.getLogger("channelgate.ldap")


@dataclass(frozen=True, slots=True)
class FeedEntry:
    """An entry added, modified (renamed and moved included) or deleted, after the refresh stage."""

    state: str
    entry_uuid: str
    dn: str
    attributes: Mapping[str, Sequence[Any]]


@dataclass(frozen=True, slots=True)
class FeedDeleted:
    entry_uuids: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class FeedRefreshed:
    """The refresh stage ended: from now on every change is pushed."""


@dataclass(frozen=True, slots=True)
class FeedEnded:
    reason: str
    #: The LDAP result the server ended the search with (RFC 4511 §4.1.9), when it did.
    result: str | None = None

    @property
    def refused_by_limits(self) -> bool:
        """The refresh stage sends the whole scope in one search, so a size or time limit below the directory's
        size ends every attempt: the bind account needs those limits lifted, as a syncrepl consumer does."""
        return self.result in {"sizeLimitExceeded", "timeLimitExceeded", "adminLimitExceeded"}


FeedEvent = FeedEntry | FeedDeleted | FeedRefreshed | FeedEnded


def feed_base(settings: LdapSettings) -> str:
    """The closest common ancestor of the users and groups bases: one feed sees both, and sees a user moved out
    of the users base (a modify with the new DN) rather than nothing."""
    bases = [settings.users_base] + ([settings.groups_base] if settings.groups_base else [])
    common = 0
    for rdns in zip(*(reversed(dn_rdns(base)) for base in bases), strict=False):
        if len(set(rdns)) != 1:
            break
        common += 1
    return dn_suffix(settings.users_base, common) if common else settings.users_base


class ChangeFeed:
    """One persistent search; ``events`` receives what it pushes until a :class:`FeedEnded`."""

    def __init__(self, settings: LdapSettings, password: str, events: asyncio.Queue[FeedEvent]) -> None:
        self._settings = settings
        self._password = password
        self._events = events
        self._loop = asyncio.get_running_loop()
        self._connection: Connection | None = None
        self._refreshed = False

    def _emit(self, event: FeedEvent) -> None:
        self._loop.call_soon_threadsafe(self._events.put_nowait, event)

    def _on_response(self, response: dict[str, Any]) -> None:
        """Runs in ldap3's receiver thread."""
        try:
            self._handle(response)
        except (ValueError, KeyError) as exc:
            self._emit(FeedEnded(f"undecodable sync response: {exc}"))

    def _handle(self, response: dict[str, Any]) -> None:
        kind = response.get("type")
        if kind == "intermediateResponse" and response.get("responseName") == SYNC_INFO:
            info = parse_sync_info(response.get("responseValue") or b"")
            if info.refresh_done and not self._refreshed:
                self._refreshed = True
                self._emit(FeedRefreshed())
            if info.deleted and self._refreshed:
                self._emit(FeedDeleted(info.deleted))
            return
        if kind == "searchResEntry":
            control = (response.get("controls") or {}).get(SYNC_STATE)
            if control is None or not self._refreshed:
                return
            state = parse_sync_state(control["value"])
            attributes = response.get("raw_attributes") or {}
            self._emit(FeedEntry(state.state, state.entry_uuid, response.get("dn", ""), attributes))
            return
        if kind == "searchResDone":
            result = str(response.get("description"))
            self._emit(FeedEnded(f"the server ended the sync: {result} {response.get('message') or ''}", result))

    def start(self) -> None:
        """Connect, bind and send the search (blocking: run in a thread)."""
        settings = self._settings
        connection = open_connection(settings, self._password, client_strategy=ASYNC_STREAM)
        connection.strategy.callback = self._on_response
        attributes = sorted(set(user_attributes(settings)) | set(group_attributes(settings)))
        search_filter = f"(|{settings.users_filter}{settings.groups_filter})"
        try:
            # The lock keeps the receiver thread from handling a response before the search is marked persistent.
            with connection.strategy.async_lock:
                message_id = connection.search(
                    feed_base(settings),
                    search_filter,
                    search_scope=SUBTREE,
                    dereference_aliases=DEREF_NEVER,
                    attributes=attributes,
                    controls=[sync_request()],
                )
                connection.strategy.persistent_search_message_id = message_id
        except LDAPException:
            close(connection)
            raise
        self._connection = connection

    @property
    def alive(self) -> bool:
        connection = self._connection
        if connection is None or connection.closed:
            return False
        receiver = getattr(connection.strategy, "receiver", None)
        return receiver is None or bool(receiver.is_alive())

    def stop(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            close(connection)
