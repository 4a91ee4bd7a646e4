"""What the directory says about a user, with no I/O: its group names, whether it is in the agents group
(directly, through nested groups, by its own ``memberOf``, or by the server's in-chain answer), whether its
account has expired by the sync's clock, and which managed agents a new group graph affects (their entries are
read again: a group change does not touch them)."""

from __future__ import annotations

from collections.abc import Collection, Iterable
from datetime import datetime

from gateway.directory.entries import DirectoryUser, normalize_dn
from gateway.directory.expiry import expired_reason
from gateway.directory.groups import GroupGraph
from gateway.directory.plan import LEFT_AGENTS_GROUP, KnownAgent, WantedUser


def _in_agents_group(
    dn: str, group_dns: frozenset[str], agents_group: str, agents_members: frozenset[str] | None
) -> bool:
    if agents_members is not None:
        return normalize_dn(dn) in agents_members
    return normalize_dn(agents_group) in group_dns


def wanted(
    user: DirectoryUser,
    graph: GroupGraph,
    agents_group: str | None,
    agents_members: frozenset[str] | None,
    now: datetime,
) -> WantedUser:
    """What ``user`` may do as of ``now``: the first reason it may not work (disabled, expired, out of the agents
    group), and whether its expiry could not be read (the plan then leaves the agent as it is)."""
    group_dns = graph.groups_of(user.dn, user.member_of)
    refusal = user.disabled or expired_reason(user.expires, now)
    if refusal is None and agents_group is not None:
        member = _in_agents_group(user.dn, group_dns | user.member_of, agents_group, agents_members)
        refusal = None if member else LEFT_AGENTS_GROUP
    return WantedUser(user, graph.names(group_dns), refusal, user.expiry_unreadable)


def stale_agents(
    known: Iterable[KnownAgent],
    graph: GroupGraph,
    agents_group: str | None,
    agents_members: frozenset[str] | None,
    skip: Collection[str] = (),
) -> list[str]:
    """Entry ids of the managed agents whose group names or agents-group membership ``graph`` changes."""
    found = []
    for agent in known:
        if agent.entry_id in skip:
            continue
        group_dns = graph.groups_of(agent.dn)
        changed = graph.names(group_dns) != agent.groups
        if not changed and agents_group is not None and (agent.active or agent.disabled_by_sync):
            changed = _in_agents_group(agent.dn, group_dns, agents_group, agents_members) != agent.active
        if changed:
            found.append(agent.entry_id)
    return found
