"""What the directory's groups say about a user, with no I/O: its group names, whether it is in the agents group
(directly, through nested groups, by its own ``memberOf``, or by the server's in-chain answer), and which managed
agents a new group graph affects (their entries are read again: a group change does not touch them)."""

from __future__ import annotations

from collections.abc import Collection, Iterable

from gateway.directory.entries import DirectoryUser, normalize_dn
from gateway.directory.groups import GroupGraph
from gateway.directory.plan import LEFT_AGENTS_GROUP, KnownAgent, WantedUser


def _in_agents_group(
    dn: str, group_dns: frozenset[str], agents_group: str, agents_members: frozenset[str] | None
) -> bool:
    if agents_members is not None:
        return normalize_dn(dn) in agents_members
    return normalize_dn(agents_group) in group_dns


def wanted(
    user: DirectoryUser, graph: GroupGraph, agents_group: str | None, agents_members: frozenset[str] | None
) -> WantedUser:
    group_dns = graph.groups_of(user.dn, user.member_of)
    refusal = user.disabled
    if refusal is None and agents_group is not None:
        member = _in_agents_group(user.dn, group_dns | user.member_of, agents_group, agents_members)
        refusal = None if member else LEFT_AGENTS_GROUP
    return WantedUser(user, graph.names(group_dns), refusal)


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
