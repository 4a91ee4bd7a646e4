"""The engine: Cedar's forbid-wins semantics, explanations, fail-closed errors, and a decision cache that can never
answer for inputs it was not given."""

from __future__ import annotations

import pytest

from policies.decision import DEFAULT_DENY, POLICY_ERROR, Clock, Context, Query, Reason, Subject, Target
from policies.engine import PolicyEngine
from policies.loader import PolicySource, default_policy_dir, load

ROUTES = (default_policy_dir() / "routes.cedar").read_text()
EXAMPLES = (default_policy_dir().parent / "examples" / "contact-center.cedar").read_text()
NOON = Clock(3, 12, 720)


def _engine(*extra: str, cache_size: int = 1024) -> PolicyEngine:
    sources = [PolicySource("routes.cedar", ROUTES), *(PolicySource(f"x{i}.cedar", t) for i, t in enumerate(extra))]
    return PolicyEngine(load(sources), cache_size=cache_size)


def _query(
    groups: set[str],
    *,
    channel: str = "crm",
    allowed: tuple[str, ...] = ("crm-agents",),
    pii: str = "none",
    action: str = "view",
    agent: str = "a1",
    **context: object,
) -> Query:
    return Query(
        Subject(agent, agent, frozenset(groups)),
        Target(channel, allowed, f"/{channel}/", pii),
        action,
        Context(time=context.pop("time", NOON), **context),  # type: ignore[arg-type]
    )


def test_a_forbid_wins_over_a_permit_and_its_reason_is_the_explanation() -> None:
    decision = _engine(EXAMPLES).decide(_query({"crm-agents"}, pii="customer", mfa=False))
    assert not decision.allowed
    assert decision.reasons == {Reason.FORBIDDEN}
    assert decision.policy_ids == ("customer-data-needs-mfa",)
    assert decision.explain().startswith("Customer records need a sign-in with a second factor.")


def test_an_allowed_decision_names_the_permit() -> None:
    decision = _engine(EXAMPLES).decide(_query({"crm-agents"}, pii="customer", mfa=True))
    assert decision.allowed and decision.policy_ids == ("route-groups",)


def test_a_default_deny_names_the_missing_groups() -> None:
    decision = _engine().decide(_query({"chat-agents"}, allowed=("crm-agents", "supervisors")))
    assert decision.policy_ids == (DEFAULT_DENY,)
    assert decision.reasons == {Reason.GROUP_MISSING}
    assert decision.explain() == "You need to be in one of these groups to open this console: crm-agents, supervisors."


def test_a_route_without_groups_is_explained_as_closed() -> None:
    decision = _engine().decide(_query({"crm-agents"}, allowed=()))
    assert decision.reasons == {Reason.ROUTE_CLOSED}
    assert "not open to anyone" in decision.explain()


def test_a_forbid_without_a_reason_is_still_explained_by_its_id() -> None:
    decision = _engine('@id("quiet") forbid (principal, action, resource);').decide(_query({"crm-agents"}))
    assert decision.explain() == "A rule of your organisation does not allow this (quiet)."


def test_a_policy_that_fails_to_evaluate_refuses_the_request() -> None:
    """Cedar skips a policy that errors (here an overflow); a skipped forbid must not become an allow."""
    overflow = (
        '@id("overflow") forbid (principal, action, resource) when { context.time.hour + 9223372036854775807 > 0 };'
    )
    decision = _engine(overflow).decide(_query({"crm-agents"}))
    assert not decision.allowed
    assert decision.reasons == {Reason.POLICY_ERROR}
    assert decision.policy_ids[0] == POLICY_ERROR


def test_a_policy_error_names_the_failing_policy_not_the_permit_that_matched() -> None:
    overflow = (
        '@id("overflow") forbid (principal, action, resource) when { context.time.hour + 9223372036854775807 > 0 };'
    )
    decision = _engine(overflow).decide(_query({"crm-agents"}))  # route-groups matched, but did not decide
    assert decision.policy_ids == (POLICY_ERROR, "overflow")


def test_a_group_change_is_seen_by_the_very_next_decision() -> None:
    engine = _engine()
    assert engine.decide(_query({"crm-agents"})).allowed
    assert not engine.decide(_query(set())).allowed
    assert engine.decide(_query({"crm-agents"})).allowed


def test_agents_with_the_same_groups_share_decisions_when_no_policy_reads_the_agent() -> None:
    engine = _engine(EXAMPLES)
    for agent in ("a1", "a2", "a3"):
        assert engine.decide(_query({"crm-agents"}, agent=agent)).allowed
    assert engine.evaluations == 1


def test_a_policy_reading_the_agent_gets_its_own_decision_per_agent() -> None:
    engine = _engine('@id("no-bob") forbid (principal, action, resource) when { principal.user_name == "bob" };')
    assert engine.decide(_query({"crm-agents"}, agent="alice")).allowed
    refused = engine.decide(_query({"crm-agents"}, agent="bob"))
    assert not refused.allowed and refused.policy_ids == ("no-bob",)
    assert engine.evaluations == 2


@pytest.mark.parametrize(
    "changed",
    [
        {"pii": "customer"},
        {"action": "download"},
        {"network": "office"},
        {"time": Clock(6, 12, 720)},
        {"channel": "chat", "allowed": ("chat-agents",)},
    ],
    ids=["pii", "action", "network", "weekday", "channel"],
)
def test_every_input_is_part_of_the_cache_key(changed: dict[str, object]) -> None:
    rules = (
        '@id("no-customer") forbid (principal, action, resource) when { resource.pii == "customer" };\n'
        '@id("no-download") forbid (principal, action == Action::"download", resource);\n'
        '@id("no-office") forbid (principal, action, resource) when { context.network == "office" };\n'
        '@id("no-saturday") forbid (principal, action, resource) when { context.time.weekday == 6 };\n'
        '@id("no-chat") forbid (principal, action, resource in Channel::"chat");\n'
    )
    engine = _engine(rules)
    assert engine.decide(_query({"crm-agents", "chat-agents"})).allowed
    assert not engine.decide(_query({"crm-agents", "chat-agents"}, **changed)).allowed  # type: ignore[arg-type]


def test_the_decision_cache_is_bounded() -> None:
    engine = _engine(cache_size=10)
    for index in range(50):
        engine.decide(_query({f"team-{index}"}, allowed=(f"team-{index}",)))
    assert engine.stats().cached == 10


def test_a_cache_size_of_zero_evaluates_every_query() -> None:
    engine = _engine(cache_size=0)
    for _ in range(3):
        assert engine.decide(_query({"crm-agents"})).allowed
        assert not engine.decide(_query(set())).allowed
    assert (engine.evaluations, engine.stats().cached) == (6, 0)


def test_every_decision_names_the_engine_that_made_it_even_from_the_cache() -> None:
    first, second = _engine(), _engine()  # the same files loaded twice (a reload): two engines
    assert first.id != second.id
    assert {first.decide(_query({"crm-agents"})).engine_id for _ in range(2)} == {first.id}
    assert second.decide(_query(set())).engine_id == second.id


def test_groups_no_policy_names_do_not_split_the_cache_and_named_ones_do() -> None:
    engine = _engine(EXAMPLES)
    for team in range(5):  # personal or team groups no rule mentions: one answer for all
        assert engine.decide(_query({"crm-agents", f"team-{team}"}, action="export", network="office")).allowed
    assert engine.evaluations == 1
    refused = engine.decide(_query({"crm-agents", "trainees"}, action="export", network="office"))
    assert not refused.allowed and refused.policy_ids == ("trainees-chat-during-shift",)
    assert engine.evaluations == 2


def test_a_channel_slice_keeps_the_channel_wide_forbids() -> None:
    engine = _engine('@id("p") permit (principal, action, resource in Channel::"crm");', EXAMPLES)
    decision = engine.decide(_query(set(), pii="customer"))
    assert not decision.allowed and decision.policy_ids == ("customer-data-needs-mfa",)
    assert engine.decide(_query(set(), pii="customer", mfa=True)).policy_ids == ("p",)
