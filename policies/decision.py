"""A decision that explains itself (Pomerium's named reasons): allowed or not, and why, in words and codes."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum


class Reason(StrEnum):
    GROUP_ALLOWED = "group_allowed"
    GROUP_MISSING = "group_missing"
    ROUTE_CLOSED = "route_closed"


@dataclass(frozen=True, slots=True)
class Subject:
    agent_id: str
    user_name: str
    groups: frozenset[str]


@dataclass(frozen=True, slots=True)
class Target:
    channel: str
    #: Groups any of which opens the route (from the route's configuration).
    allowed_groups: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    reasons: frozenset[Reason]
    #: The rules that decided, for the access log (e.g. ``route:chat:group:chat-agents``).
    policy_ids: tuple[str, ...] = ()
    missing_groups: tuple[str, ...] = field(default=())

    def explain(self) -> str:
        """One sentence an agent understands, for the 403 page."""
        if self.allowed:
            return "Allowed."
        if Reason.ROUTE_CLOSED in self.reasons:
            return "This console is not open to anyone yet: no group is allowed on it."
        groups = ", ".join(self.missing_groups)
        return f"You need to be in one of these groups to open this console: {groups}."
