"""The group rule: any one of a route's groups opens it; a route without groups is closed; every decision explains."""

from __future__ import annotations

import pytest

from policies.decision import Decision, Reason, Subject, Target
from policies.groups import decide


def _subject(*groups: str) -> Subject:
    return Subject("agent-1", "alice", frozenset(groups))


#: agent's groups, route's allowed groups → allowed, reasons, policy ids, missing groups
TABLE = [
    (("chat-agents",), ("chat-agents",), True, {Reason.GROUP_ALLOWED}, ("route:chat:group:chat-agents",), ()),
    (
        ("chat-agents", "supervisors"),
        ("supervisors", "chat-agents"),
        True,
        {Reason.GROUP_ALLOWED},
        ("route:chat:group:chat-agents", "route:chat:group:supervisors"),
        (),
    ),
    (
        ("supervisors",),
        ("chat-agents", "supervisors"),
        True,
        {Reason.GROUP_ALLOWED},
        ("route:chat:group:supervisors",),
        (),
    ),
    (
        ("phone-agents",),
        ("chat-agents", "supervisors"),
        False,
        {Reason.GROUP_MISSING},
        ("route:chat:groups",),
        ("chat-agents", "supervisors"),
    ),
    ((), ("chat-agents",), False, {Reason.GROUP_MISSING}, ("route:chat:groups",), ("chat-agents",)),
    (("chat-agents",), (), False, {Reason.ROUTE_CLOSED}, ("route:chat:closed",), ()),
    ((), (), False, {Reason.ROUTE_CLOSED}, ("route:chat:closed",), ()),
    # Group names are compared exactly: no case folding, no prefix or substring match.
    (("Chat-Agents",), ("chat-agents",), False, {Reason.GROUP_MISSING}, ("route:chat:groups",), ("chat-agents",)),
    (("chat-agents-old",), ("chat-agents",), False, {Reason.GROUP_MISSING}, ("route:chat:groups",), ("chat-agents",)),
    (("chat",), ("chat-agents",), False, {Reason.GROUP_MISSING}, ("route:chat:groups",), ("chat-agents",)),
]


@pytest.mark.parametrize(("groups", "allowed_groups", "allowed", "reasons", "policy_ids", "missing"), TABLE)
def test_the_group_rule(
    groups: tuple[str, ...],
    allowed_groups: tuple[str, ...],
    allowed: bool,
    reasons: set[Reason],
    policy_ids: tuple[str, ...],
    missing: tuple[str, ...],
) -> None:
    decision = decide(_subject(*groups), Target("chat", allowed_groups))
    assert decision == Decision(allowed, frozenset(reasons), policy_ids, missing)


def test_a_route_with_no_groups_is_closed_even_to_an_agent_in_every_group() -> None:
    everyone = _subject("chat-agents", "phone-agents", "mail-agents", "supervisors", "admins", "*", "")
    assert decide(everyone, Target("chat", ())).allowed is False


def test_an_allowed_decision_explains_itself_briefly() -> None:
    assert decide(_subject("chat-agents"), Target("chat", ("chat-agents",))).explain() == "Allowed."


def test_a_denied_decision_names_the_missing_groups() -> None:
    decision = decide(_subject("phone-agents"), Target("chat", ("chat-agents", "supervisors")))
    assert decision.explain() == "You need to be in one of these groups to open this console: chat-agents, supervisors."


def test_a_closed_route_says_nobody_is_allowed_yet() -> None:
    decision = decide(_subject("chat-agents"), Target("chat", ()))
    assert decision.explain() == "This console is not open to anyone yet: no group is allowed on it."
