"""The group rule of the spine: a route lists the IdP groups allowed to open it; membership of any one opens it.

Pure: no I/O and no clock, so it can be tested exhaustively. The policy engine of a later issue replaces the body
of ``decide`` and keeps its signature.
"""

from __future__ import annotations

import functools

from policies.decision import Decision, Reason, Subject, Target


def decide(subject: Subject, target: Target) -> Decision:
    """Allow when the agent is in at least one of the route's allowed groups; deny otherwise (closed by default)."""
    return _decide(subject.groups, target)


@functools.lru_cache(maxsize=4096)
def _decide(groups: frozenset[str], target: Target) -> Decision:
    """The rule depends only on the groups and the route, so agents with the same groups share one answer."""
    if not target.allowed_groups:
        return Decision(False, frozenset({Reason.ROUTE_CLOSED}), (f"route:{target.channel}:closed",))
    matched = sorted(set(target.allowed_groups) & groups)
    if matched:
        ids = tuple(f"route:{target.channel}:group:{group}" for group in matched)
        return Decision(True, frozenset({Reason.GROUP_ALLOWED}), ids)
    return Decision(
        False,
        frozenset({Reason.GROUP_MISSING}),
        (f"route:{target.channel}:groups",),
        missing_groups=tuple(target.allowed_groups),
    )
