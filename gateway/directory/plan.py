"""What a sync changes: the directory's view against the agents it manages, with no I/O.

A *complete* view (full reconciliation) lists every user in scope, so a managed agent missing from it left the
directory (deleted, or moved out of the base DN or the filter). A *partial* view (incremental sync, change feed)
only speaks for the users it lists and the entries it names as gone. An unreachable directory produces no view
at all, so it can never disable anyone.

Only agents this directory created are changed: an agent of another source (SCIM, a first login) with the same
userName is reported as a conflict and left alone. An agent is reactivated only if this sync disabled it; an
agent disabled by an administrator or another trigger stays disabled, and one deleted (over SCIM or by an
administrator) stays deleted: its entry is a conflict, never a second agent. A directory value the database
cannot store (longer than its column, or holding U+0000, which PostgreSQL refuses) is a conflict of that user
alone, so it can never fail the writes of everybody else.

A user whose accountExpires cannot be read is a conflict too, and the sync does not guess: a new entry is not
created, an active agent is not disabled by it and an agent the sync disabled is not made active again until the
value is readable. The other mechanisms still disable it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Literal

from gateway.directory.entries import DirectoryUser, normalize_dn
from gateway.directory.settings import LdapAttributeMap
from gateway.storage.agents import user_name_key
from gateway.storage.limits import unstorable
from gateway.storage.schema import agents

GONE = "no longer in the directory's scope (deleted, moved or filtered out)"
LEFT_AGENTS_GROUP = "removed from the directory's agents group"


#: (agent id, source) of the live agent holding a userName.
Holder = tuple[str, str]


def _held(holder: Holder) -> str:
    return f"userName held by another agent (source {holder[1]}, id {holder[0]})"


def _deleted(agent_id: str) -> str:
    return f"its agent (id {agent_id}) was deleted (over SCIM or by an admin) and is not created again"


@dataclass(frozen=True, slots=True)
class KnownAgent:
    """An agent this directory manages, as stored."""

    agent_id: str
    entry_id: str
    dn: str
    user_name: str
    email: str | None
    display_name: str | None
    employee_number: str | None
    manager_id: str | None
    active: bool
    #: Whether this sync disabled it (only then may the directory reactivate it).
    disabled_by_sync: bool
    groups: frozenset[str]


@dataclass(frozen=True, slots=True)
class WantedUser:
    """A directory user and what the directory says about it: its group names and whether it may work."""

    user: DirectoryUser
    groups: frozenset[str]
    #: None when it may work; else why not (disabled, locked, expired, not in the agents group).
    refusal: str | None
    #: Why the directory's accountExpires cannot be read: the agent keeps its state on that account (a conflict).
    unreadable: str | None = None


@dataclass(frozen=True, slots=True)
class View:
    users: Mapping[str, WantedUser]
    #: Entries the change feed reported deleted or out of scope.
    gone: frozenset[str] = frozenset()
    complete: bool = False


Kind = Literal["create", "update", "disable", "reactivate", "groups", "conflict"]


@dataclass(frozen=True, slots=True)
class Change:
    kind: Kind
    agent_id: str | None
    user_name: str
    entry_id: str
    #: Columns to write (create, update), group names (groups), the reason (disable, conflict).
    values: Mapping[str, str | bool | None] = field(default_factory=dict)
    groups: frozenset[str] = frozenset()
    reason: str | None = None
    dn: str | None = None

    def describe(self) -> str:
        text = f"{self.kind:<10} {self.user_name}"
        if self.kind == "groups":
            return f"{text}: groups {', '.join(sorted(self.groups)) or '(none)'}"
        if self.kind == "update":
            return f"{text}: {', '.join(sorted(self.values))}"
        return f"{text}: {self.reason}" if self.reason else text


@dataclass(frozen=True, slots=True)
class Plan:
    changes: tuple[Change, ...]
    #: Active agents this directory manages before the plan (the quarantine's denominator).
    active_agents: int

    @property
    def disables(self) -> tuple[Change, ...]:
        return tuple(c for c in self.changes if c.kind == "disable")

    def without_disables(self) -> Plan:
        return Plan(tuple(c for c in self.changes if c.kind != "disable"), self.active_agents)


def _columns(user: DirectoryUser, manager_id: str | None) -> dict[str, str | bool | None]:
    return {
        "user_name": user.user_name,
        "email": user.email,
        "display_name": user.display_name,
        "employee_number": user.employee_number,
        "manager_id": manager_id,
    }


def _sources(names: LdapAttributeMap) -> dict[str, str]:
    """The directory attribute behind each ``agents`` column a sync writes (what a conflict names)."""
    return {
        "user_name": names.user_name,
        "user_name_key": names.user_name,
        "email": names.email,
        "display_name": names.display_name,
        "employee_number": names.employee_number,
    }


def _unstorable(values: Mapping[str, str | bool | None], sources: Mapping[str, str]) -> dict[str, str]:
    """Column → why its value in ``values`` cannot be stored (the checks SCIM applies, same column widths)."""
    columns = dict(values)
    if isinstance(columns.get("user_name"), str):
        columns["user_name_key"] = user_name_key(str(columns["user_name"]))
    found = {}
    for column, source in sources.items():
        problem = unstorable(agents, {column: source}, columns)
        if problem is not None:
            found[column.removesuffix("_key")] = problem
    return found


def _refused(wanted: WantedUser, sources: Mapping[str, str]) -> dict[str, str]:
    """Why a new entry is not created: values that cannot be stored, an expiry that cannot be read."""
    problems = _unstorable(_columns(wanted.user, None), sources)
    if wanted.unreadable is not None:
        problems["accountExpires"] = wanted.unreadable
    return problems


def plan(
    known: Mapping[str, KnownAgent],
    view: View,
    holders: Mapping[str, Holder],
    new_id: Callable[[], str],
    *,
    managers: Mapping[str, str] | None = None,
    active_agents: int | None = None,
    deleted: Mapping[str, str] | None = None,
    attributes: LdapAttributeMap | None = None,
) -> Plan:
    """The changes that make the managed agents match ``view``. ``holders`` maps the userName key of live agents
    (every one, or at least those of the names in ``view``) to their id and source: a name held by another
    agent, managed by this directory or not, is a conflict, never a second agent. A partial view may come with only the
    known agents it names; then ``managers`` (normalised DN → agent id of every managed agent) resolves manager
    DNs and ``active_agents`` is the count of all active managed agents (the quarantine's denominator).
    ``deleted`` maps the entries (at least those in ``view``) whose agent was deleted to that agent's id;
    ``attributes`` names the directory attributes in conflicts about values that cannot be stored."""
    deleted = deleted or {}
    sources = _sources(attributes or LdapAttributeMap())
    new = [entry_id for entry_id in view.users if entry_id not in known and entry_id not in deleted]
    refused = {e: p for e in new if (p := _refused(view.users[e], sources))}
    creating = {entry_id: new_id() for entry_id in new if entry_id not in refused}
    by_dn = dict(managers) if managers is not None else {}
    by_dn |= {normalize_dn(agent.dn): agent.agent_id for agent in known.values()}
    by_dn |= {normalize_dn(view.users[e].user.dn): agent_id for e, agent_id in creating.items()}
    changes: list[Change] = []
    taken = dict(holders)
    for entry_id, wanted in sorted(view.users.items(), key=lambda item: item[1].user.user_name.lower()):
        user = wanted.user
        manager_id = by_dn.get(normalize_dn(user.manager_dn)) if user.manager_dn else None
        current = known.get(entry_id)
        if current is None and entry_id in deleted:
            agent_id = deleted[entry_id]
            changes.append(Change("conflict", agent_id, user.user_name, entry_id, reason=_deleted(agent_id)))
            continue
        if current is None and entry_id in refused:
            reason = "; ".join(refused[entry_id].values())
            changes.append(Change("conflict", None, user.user_name, entry_id, reason=reason))
            continue
        if current is None:
            key = user_name_key(user.user_name)
            if key in taken:
                changes.append(Change("conflict", None, user.user_name, entry_id, reason=_held(taken[key])))
                continue
            taken[key] = (creating[entry_id], "ldap")
            values = _columns(user, manager_id) | {"active": wanted.refusal is None}
            changes.append(
                Change(
                    "create",
                    creating[entry_id],
                    user.user_name,
                    entry_id,
                    values,
                    wanted.groups,
                    wanted.refusal,
                    user.dn,
                )
            )
            continue
        changes.extend(_changes_of(current, wanted, manager_id, taken, sources))
    for entry_id, current in sorted(known.items(), key=lambda item: item[1].user_name.lower()):
        missing = entry_id in view.gone or (view.complete and entry_id not in view.users)
        if missing and current.active:
            changes.append(Change("disable", current.agent_id, current.user_name, entry_id, reason=GONE))
    active = sum(1 for agent in known.values() if agent.active) if active_agents is None else active_agents
    return Plan(tuple(changes), active)


def _changes_of(
    current: KnownAgent,
    wanted: WantedUser,
    manager_id: str | None,
    holders: Mapping[str, Holder],
    sources: Mapping[str, str],
) -> list[Change]:
    user = wanted.user
    changes: list[Change] = []
    values = {name: value for name, value in _columns(user, manager_id).items() if value != getattr(current, name)}
    problems = _unstorable(values, sources)
    if problems:
        reason = "; ".join(problems.values())
        changes.append(Change("conflict", current.agent_id, user.user_name, current.entry_id, reason=reason))
        values = {name: value for name, value in values.items() if name not in problems}
    holder = holders.get(user_name_key(user.user_name))
    if "user_name" in values and holder is not None and holder[0] != current.agent_id:
        changes.append(
            Change(
                "conflict",
                current.agent_id,
                user.user_name,
                current.entry_id,
                reason=_held(holder),
            )
        )
        values.pop("user_name")
    if wanted.unreadable is not None:
        changes.append(Change("conflict", current.agent_id, user.user_name, current.entry_id, reason=wanted.unreadable))
    if values or normalize_dn(current.dn) != normalize_dn(user.dn):
        changes.append(Change("update", current.agent_id, current.user_name, current.entry_id, values, dn=user.dn))
    # The access-log records of what follows name the agent: by its stored name when the new one cannot be stored.
    name = current.user_name if "user_name" in problems else user.user_name
    if wanted.groups != current.groups:
        changes.append(Change("groups", current.agent_id, name, current.entry_id, groups=wanted.groups))
    if current.active and wanted.refusal is not None:
        changes.append(Change("disable", current.agent_id, name, current.entry_id, reason=wanted.refusal))
    elif not current.active and wanted.refusal is None and wanted.unreadable is None and current.disabled_by_sync:
        changes.append(
            Change("reactivate", current.agent_id, name, current.entry_id, reason="enabled in the directory")
        )
    return changes


@dataclass(frozen=True, slots=True)
class QuarantineCheck:
    held: bool
    disabling: int
    active_agents: int


def check_quarantine(
    plan_: Plan, *, recent_disables: int, approved: frozenset[str], max_share: float, min_agents: int
) -> QuarantineCheck:
    """Whether ``plan_``'s disables (plus those already made in the window, minus the ones an admin approved)
    would take out more than ``max_share`` of the active agents: then none of them happens yet."""
    disabling = sum(1 for change in plan_.disables if change.agent_id not in approved)
    total = disabling + recent_disables
    # The share of the agents that were active when the window began: those disabled in it count in both.
    base = max(plan_.active_agents + recent_disables, 1)
    held = disabling > 0 and total >= min_agents and total / base > max_share
    return QuarantineCheck(held, disabling, plan_.active_agents)
