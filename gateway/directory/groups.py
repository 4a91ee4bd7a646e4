"""The directory's groups and who is in them, nested groups included, with no I/O.

``groupOfNames`` lists members by DN (RFC 4519 §3.5); a member may itself be a group, so membership is the
transitive closure over the group graph (what AD's LDAP_MATCHING_RULE_IN_CHAIN computes on the server).
A user's own ``memberOf`` values (AD, the OpenLDAP memberof overlay) count as direct memberships too.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from gateway.directory.entries import normalize_dn


@dataclass(frozen=True, slots=True)
class DirectoryGroup:
    entry_id: str
    dn: str
    name: str
    #: Normalised member DNs (users or groups).
    members: frozenset[str]


@dataclass(slots=True)
class GroupGraph:
    """Every group read from the directory, by normalised DN, and the groups each DN is directly in."""

    groups: dict[str, DirectoryGroup] = field(default_factory=dict)
    _parents: dict[str, set[str]] = field(default_factory=dict)

    @classmethod
    def of(cls, groups: Iterable[DirectoryGroup]) -> GroupGraph:
        graph = cls()
        for group in groups:
            key = normalize_dn(group.dn)
            graph.groups[key] = group
            for member in group.members:
                graph._parents.setdefault(member, set()).add(key)
        return graph

    def groups_of(self, dn: str, member_of: Iterable[str] = ()) -> frozenset[str]:
        """Normalised DNs of every known group ``dn`` is in, directly or through nested groups."""
        found: set[str] = set()
        pending = list(self._parents.get(normalize_dn(dn), set()) | {g for g in member_of if g in self.groups})
        while pending:
            group = pending.pop()
            if group in found:
                continue  # cycles between groups are legal in AD; each group is visited once
            found.add(group)
            pending.extend(self._parents.get(group, ()))
        return frozenset(found)

    def names(self, group_dns: Iterable[str]) -> frozenset[str]:
        return frozenset(self.groups[dn].name for dn in group_dns if dn in self.groups)

    def by_id(self) -> Mapping[str, DirectoryGroup]:
        return {group.entry_id: group for group in self.groups.values()}
