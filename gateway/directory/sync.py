"""One directory's sync: full reconciliation, incremental sync by high-water mark, change-feed batches, each
planned (``plan``), checked against the quarantine threshold, then applied (``apply``).

Every read completes before anything is written: a directory that is unreachable, or fails part-way, raises
:class:`DirectoryUnavailable` and changes nobody. A plan that would disable more than the configured share of
the directory's active agents (counting the disables of the last ``window_seconds``) applies everything but the
disables, records a quarantine, raises the alert (log, metric, access-log record) and waits for
``channelgate ldap approve``.

An accountExpires passing changes no entry, so neither the high-water mark nor the feed brings it: the sync
remembers the expiries ahead of every user it read and each incremental sync reads again, by id, the entries
whose time has come. That memory covers the directory only while this object saved the stored high-water mark
itself; after a restart, or another replica syncing meanwhile, the next incremental sync is a full one.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal
from uuid import uuid4

from gateway.audit.writer import AuditLog
from gateway.directory.apply import PlanApplier
from gateway.directory.entries import DirectoryUser, in_subtree, user_from_entry
from gateway.directory.feed import FeedDeleted, FeedEntry, FeedEvent
from gateway.directory.groups import DirectoryGroup, GroupGraph
from gateway.directory.membership import stale_agents, wanted
from gateway.directory.metrics import DirectoryMetrics
from gateway.directory.plan import Holder, KnownAgent, Plan, View, check_quarantine, plan
from gateway.directory.reader import DirectoryReader, group_from_entry
from gateway.directory.settings import LdapSettings
from gateway.directory.store import DirectoryStore
from gateway.storage.access_log import AccessRecord
from gateway.storage.agents import user_name_key
from gateway.timeutil import utcnow

log = logging.getLogger("channelgate.ldap")

SyncKind = Literal["full", "incremental", "feed"]


@dataclass(slots=True)
class SyncReport:
    kind: SyncKind
    dry_run: bool
    planned: list[str] = field(default_factory=list)
    applied: dict[str, int] = field(default_factory=dict)
    #: Changes whose writes failed while the rest of the plan was applied (a full sync tries them again).
    failed: list[str] = field(default_factory=list)
    quarantine_id: str | None = None
    held: int = 0
    active_agents: int = 0
    users_read: int = 0
    duration_ms: float = 0.0

    @property
    def error(self) -> str | None:
        """What ``ldap status`` shows as the last error: the failed changes, if any."""
        if not self.failed:
            return None
        return f"{len(self.failed)} change(s) failed, the rest applied (see the log): " + "; ".join(self.failed)[:800]

    def as_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "dry_run": self.dry_run,
            "planned": self.planned,
            "applied": self.applied,
            "failed": self.failed,
            "quarantine_id": self.quarantine_id,
            "held_disables": self.held,
            "active_agents": self.active_agents,
            "users_read": self.users_read,
            "duration_ms": round(self.duration_ms, 1),
        }


class DirectorySync:
    def __init__(
        self,
        settings: LdapSettings,
        store: DirectoryStore,
        applier: PlanApplier,
        audit: AuditLog,
        password: Callable[[], Awaitable[str]],
        metrics: DirectoryMetrics | None = None,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.settings = settings
        self.store = store
        self._applier = applier
        self._audit = audit
        self.password = password
        self.metrics = metrics
        self.clock = clock
        self._graph: GroupGraph | None = None
        self._agents_members: frozenset[str] | None = None
        #: Entry id → accountExpires still ahead when last read (an expiry passing changes no entry).
        self._expiring: dict[str, datetime] = {}
        #: The high-water mark this object last saved: while it is the stored one, ``_expiring`` is complete.
        self._high_water: str | None = None
        #: One sync at a time in this process (replicas are kept apart by the runner's lease).
        self.lock = asyncio.Lock()

    async def _reader(self) -> DirectoryReader:
        return DirectoryReader(self.settings, await self.password())

    # ------------------------------------------------------------------------------------------ kinds

    async def full(self, *, dry_run: bool = False) -> SyncReport:
        """Every user and group in scope; an agent missing from the directory is disabled."""
        async with self.lock:
            started = time.perf_counter()
            reader = await self._reader()
            snapshot = await asyncio.to_thread(reader.read)
            report = await self._run(
                "full", snapshot.users, snapshot.groups, snapshot.agents_members, complete=True, dry_run=dry_run
            )
            if not dry_run:
                await self.store.save_state(
                    self.clock(),
                    last_full_at=self.clock(),
                    high_water=snapshot.high_water,
                    last_result=report.as_dict(),
                    last_error=report.error,
                )
                self._high_water = snapshot.high_water
            return self._done(report, started)

    async def incremental(self, *, feed_users: Iterable[DirectoryUser] = (), gone: Iterable[str] = ()) -> SyncReport:
        """Users changed at or after the high-water mark, every group, and the users whose memberships changed
        (read again by id: a removal from a group does not touch the user's entry)."""
        state = await self.store.state()
        if state.high_water is None or not self._expiries_known(state.high_water):
            return await self.full()
        async with self.lock:
            started = time.perf_counter()
            reader = await self._reader()
            snapshot = await asyncio.to_thread(reader.read, state.high_water)
            users = {u.entry_id: u for u in snapshot.users} | {u.entry_id: u for u in feed_users}
            graph = GroupGraph.of(snapshot.groups)
            missing = await self._read_stale(reader, graph, snapshot.agents_members, users, set(gone))
            report = await self._run(
                "incremental",
                list(users.values()),
                snapshot.groups,
                snapshot.agents_members,
                complete=False,
                gone=frozenset(missing),
            )
            await self.store.save_state(
                self.clock(),
                last_incremental_at=self.clock(),
                high_water=snapshot.high_water,
                last_result=report.as_dict(),
                last_error=report.error,
            )
            self._high_water = snapshot.high_water
            return self._done(report, started)

    async def feed_batch(self, events: Iterable[FeedEvent]) -> SyncReport | None:
        """Changes pushed by the feed: user entries as they are, group entries into the cached group graph (the
        members whose groups that changes are read again by id), deletes and moves out of scope as gone."""
        users: dict[str, DirectoryUser] = {}
        changed_groups: dict[str, DirectoryGroup] = {}
        gone: set[str] = set()
        settings = self.settings
        for event in events:
            if isinstance(event, FeedDeleted):
                gone |= set(event.entry_uuids)
            elif isinstance(event, FeedEntry):
                if event.state == "delete":
                    gone.add(event.entry_uuid)
                elif settings.groups_base and in_subtree(event.dn, settings.groups_base):
                    group = group_from_entry(event.dn, event.attributes, settings)
                    if group is not None:
                        changed_groups[group.entry_id] = group
                elif in_subtree(event.dn, settings.users_base):
                    user = user_from_entry(event.dn, event.attributes, settings)
                    if user is not None:
                        users[user.entry_id] = user
                        gone.discard(user.entry_id)
                else:
                    gone.add(event.entry_uuid)  # moved out of the users base
        if self._graph is None or (changed_groups and self._agents_members is not None):
            # No group graph yet, or nesting resolved by the server: ask the directory again.
            return await self.incremental(feed_users=users.values(), gone=gone)
        cached = {group.entry_id: group for group in self._graph.groups.values()}
        groups: list[DirectoryGroup] | None = None
        if changed_groups or gone & cached.keys():
            groups = list(({k: v for k, v in cached.items() if k not in gone} | changed_groups).values())
            gone -= cached.keys()
        if not users and not gone and groups is None:
            return None
        async with self.lock:
            started = time.perf_counter()
            if groups is not None:
                reader = await self._reader()
                gone = await self._read_stale(reader, GroupGraph.of(groups), None, users, gone)
            report = await self._run(
                "feed", list(users.values()), groups, self._agents_members, complete=False, gone=frozenset(gone)
            )
            return self._done(report, started)

    async def _read_stale(
        self,
        reader: DirectoryReader,
        graph: GroupGraph,
        agents_members: frozenset[str] | None,
        users: dict[str, DirectoryUser],
        gone: set[str],
    ) -> set[str]:
        """Read again the managed agents whose memberships ``graph`` changes, and the entries whose accountExpires
        has come since they were read, into ``users``; those no longer in scope are added to the returned ``gone``."""
        skip = users.keys() | gone
        known = (await self.store.known()).values()
        stale = stale_agents(known, graph, self.settings.agents_group, agents_members, skip)
        now = self.clock()
        stale += [e for e, expires in self._expiring.items() if expires <= now and e not in skip and e not in stale]
        if not stale:
            return gone
        found = await asyncio.to_thread(reader.read_users, stale)
        users |= {user.entry_id: user for user in found}
        return gone | (set(stale) - {user.entry_id for user in found})

    async def approve(self, quarantine_id: str, actor: str) -> bool:
        """Release a held sync: its disables no longer count towards the threshold (the next full sync applies
        them). False when no sync of this directory with that id is held."""
        approved = await self.store.approve(quarantine_id, actor, self.clock())
        if approved:
            await self._audit.write(
                AccessRecord(
                    time=self.clock(),
                    kind="ldap",
                    actor=actor,
                    decision="quarantine_approved",
                    detail={"directory": self.store.directory, "quarantine": quarantine_id},
                )
            )
        return approved

    # ------------------------------------------------------------------------------------------ shared

    async def _run(
        self,
        kind: SyncKind,
        users: list[DirectoryUser],
        groups: list[DirectoryGroup] | None,
        agents_members: frozenset[str] | None,
        *,
        complete: bool,
        gone: frozenset[str] = frozenset(),
        dry_run: bool = False,
    ) -> SyncReport:
        """Plan ``users`` (and, when given, the whole set of ``groups``) against the managed agents, check the
        quarantine, apply."""
        now = self.clock()
        if groups is not None:
            self._graph = GroupGraph.of(groups)
            self._agents_members = agents_members
        graph = self._graph or GroupGraph()
        known, others, scope = await self._current(users, gone, complete=complete)
        if groups is not None and not dry_run:
            renamed = await self._applier.sync_groups(groups, now, complete=True)
            await self._push_groups(renamed)
        agents_group = self.settings.agents_group
        view = View(
            {u.entry_id: wanted(u, graph, agents_group, self._agents_members, now) for u in users},
            gone=gone,
            complete=complete,
        )
        changes = plan(known, view, others, lambda: str(uuid4()), **scope)
        report = SyncReport(kind, dry_run, [c.describe() for c in changes.changes], users_read=len(users))
        report.active_agents = changes.active_agents
        approved = frozenset(
            entry["agent_id"] for q in await self.store.quarantines(states=("approved",)) for entry in q.agents
        )
        check = check_quarantine(
            changes,
            recent_disables=await self.store.recent_disables(
                now - timedelta(seconds=self.settings.quarantine.window_seconds)
            ),
            approved=approved,
            max_share=self.settings.quarantine.max_share,
            min_agents=self.settings.quarantine.min_agents,
        )
        if check.held:
            report.held = check.disabling
        if dry_run:
            return report
        if check.held:
            report.quarantine_id = await self._hold(changes, now)
            changes = changes.without_disables()
        applied = await self._applier.apply(changes, now)
        report.applied = applied.counts
        report.failed = [c.describe() for c in applied.failed]
        self._remember_expiries(users, gone, now, complete=complete, retry={c.entry_id for c in applied.failed})
        # An approval ends once its disables were carried out: a complete view plans every one still to make
        # (the others were made, or the agents are back in the directory); a partial view says nothing of them.
        pending = approved & {c.agent_id for c in applied.failed if c.kind == "disable"}
        if approved and complete and not check.held and not pending:
            await self.store.close_approved()
        if self.metrics is not None:
            for change_kind, count in applied.counts.items():
                self.metrics.changes.labels(change_kind).inc(count)
        return report

    def _expiries_known(self, high_water: str) -> bool:
        """Whether ``_expiring`` holds every expiry ahead up to ``high_water``: this object saved that mark."""
        return "account_expires" not in self.settings.disabled_when or high_water == self._high_water

    def _remember_expiries(
        self, users: list[DirectoryUser], gone: frozenset[str], now: datetime, *, complete: bool, retry: set[str]
    ) -> None:
        """The expiries still ahead of the users just applied (all of them after a complete view); an expiry
        whose disable failed stays, so the next incremental sync tries it again."""
        if complete:
            self._expiring = {}
        for entry_id in gone:
            self._expiring.pop(entry_id, None)
        for user in users:
            if user.expires is not None and (user.expires > now or user.entry_id in retry):
                self._expiring[user.entry_id] = user.expires
            else:
                self._expiring.pop(user.entry_id, None)

    async def _current(
        self, users: list[DirectoryUser], gone: frozenset[str], *, complete: bool
    ) -> tuple[dict[str, KnownAgent], dict[str, Holder], dict[str, Any]]:
        """The managed agents a plan needs: all of them for a complete view; for a partial one (a feed batch of a
        few entries in a directory of thousands) only those it names, plus what resolves managers and counts the
        active agents."""
        attributes = self.settings.attributes
        if complete:
            deleted = await self.store.deleted()
            return await self.store.known(), await self.store.holders(), {"deleted": deleted, "attributes": attributes}
        named = {u.entry_id for u in users}
        known = await self.store.known(named | gone)
        # A name holding U+0000 is refused by the plan; PostgreSQL would refuse the query naming it.
        others = await self.store.holders({user_name_key(u.user_name) for u in users if "\x00" not in u.user_name})
        managers = await self.store.managers() if any(u.manager_dn for u in users) else {}
        return (
            known,
            others,
            {
                "managers": managers,
                "active_agents": await self.store.active_agents(),
                "deleted": await self.store.deleted(named),
                "attributes": attributes,
            },
        )

    async def _push_groups(self, agent_ids: set[str]) -> None:
        for agent_id in sorted(agent_ids):
            await self._applier.push_groups(agent_id)

    async def _hold(self, changes: Plan, now: datetime) -> str:
        held = [
            {"agent_id": c.agent_id or "", "user_name": c.user_name, "reason": c.reason or ""} for c in changes.disables
        ]
        quarantine_id, new = await self.store.hold(len(held), changes.active_agents, held, now)
        if not new:
            return quarantine_id  # the same disables are already held and were alerted on
        log.error(
            "directory %s: a sync would disable %d of %d active agents; held as quarantine %s until an admin runs "
            "'channelgate ldap approve %s'",
            self.store.directory,
            len(held),
            changes.active_agents,
            quarantine_id,
            quarantine_id,
        )
        if self.metrics is not None:
            self.metrics.quarantined.inc()
        await self._audit.write(
            self._applier.record(
                "quarantined",
                now,
                reason=f"would disable {len(held)} of {changes.active_agents} active agents",
                detail={"quarantine": quarantine_id, "disabling": len(held)},
            )
        )
        return quarantine_id

    def _done(self, report: SyncReport, started: float) -> SyncReport:
        report.duration_ms = (time.perf_counter() - started) * 1000
        if self.metrics is not None:
            self.metrics.syncs.labels(report.kind, "quarantined" if report.quarantine_id else "ok").inc()
        return report
