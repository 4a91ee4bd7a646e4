"""The decision cache keys on the context only as finely as the policies can tell contexts apart: two requests
with the same key always get the same answer (checked against Cedar itself), and a field no policy reads does
not split the cache."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from policies.decision import Clock, Context, Query, Subject, Target
from policies.engine import PolicyEngine
from policies.loader import PolicySource, default_policy_dir, load

ROUTES = (default_policy_dir() / "routes.cedar").read_text()
EXAMPLES = (default_policy_dir().parent / "examples" / "contact-center.cedar").read_text()
TRICKY = """
@id("early") forbid (principal, action, resource in Channel::"crm") when { context.time.minute_of_day <= 479 };
@id("late") forbid (principal, action == Action::"change", resource) when { 1080 < context.time.minute_of_day };
@id("noon") forbid (principal, action == Action::"export", resource) when { context.time.hour == 12 };
@id("sum") forbid (principal, action == Action::"download", resource)
  when { context.time.hour + context.time.weekday > 20 };
@id("otp") forbid (principal, action, resource) when { resource.pii == "payment" && !context.amr.contains("hwk") };
@id("device") forbid (principal, action, resource) when { context.device != "managed" && resource.pii != "none" };
@id("acr") permit (principal, action == Action::"export", resource) when { context.acr like "*gold*" };
"""

ENGINE = PolicyEngine(
    load([PolicySource("r.cedar", ROUTES), PolicySource("e.cedar", EXAMPLES), PolicySource("t.cedar", TRICKY)])
)

contexts = st.builds(
    Context,
    time=st.builds(
        lambda weekday, minute: Clock(weekday, minute // 60, minute),
        st.integers(1, 7),
        st.sampled_from([0, 479, 480, 540, 719, 720, 779, 1079, 1080, 1081, 1439]) | st.integers(0, 1439),
    ),
    network=st.sampled_from(["office", "vpn", "other", "home"]),
    mfa=st.booleans(),
    acr=st.sampled_from(["", "gold", "silver", "x-gold-y"]),
    amr=st.sampled_from([(), ("pwd",), ("pwd", "hwk"), ("hwk",)]),
    device=st.sampled_from(["managed", "unmanaged", "unknown"]),
    via=st.sampled_from(["inline", "forward-auth"]),
)


@settings(max_examples=400, deadline=None)
@given(
    first=contexts,
    second=contexts,
    channel=st.sampled_from(["crm", "chat"]),
    pii=st.sampled_from(["none", "customer", "payment", "recording"]),
    action=st.sampled_from(["view", "change", "download", "export"]),
    groups=st.sampled_from([{"agents"}, {"agents", "supervisors"}, {"trainees", "agents"}]),
)
def test_equal_keys_mean_equal_decisions(
    first: Context, second: Context, channel: str, pii: str, action: str, groups: set[str]
) -> None:
    key = ENGINE._keys.get(channel, ENGINE._default_key)
    subject = Subject("a", "a", frozenset(groups))
    target = Target(channel, ("agents",), f"/{channel}/", pii)
    one = ENGINE.evaluate(Query(subject, target, action, first))
    other = ENGINE.evaluate(Query(subject, target, action, second))
    if key(first) == key(second):
        assert (one.allowed, one.policy_ids) == (other.allowed, other.policy_ids)


def test_a_field_no_policy_reads_does_not_split_the_cache() -> None:
    engine = PolicyEngine(load([PolicySource("r.cedar", ROUTES)]))
    subject, target = Subject("a", "a", frozenset({"agents"})), Target("crm", ("agents",), "/crm/", "none")
    for minute in range(0, 1440, 7):
        engine.decide(Query(subject, target, "view", Context(time=Clock(3, minute // 60, minute), network="x")))
    assert engine.evaluations == 1


def test_a_shift_rule_splits_the_day_only_at_its_thresholds() -> None:
    engine = PolicyEngine(load([PolicySource("r.cedar", ROUTES), PolicySource("e.cedar", EXAMPLES)]))
    subject, target = Subject("t", "t", frozenset({"trainees"})), Target("chat", ("trainees",), "/chat/", "none")
    answers = {
        minute: engine.decide(Query(subject, target, "view", Context(time=Clock(2, minute // 60, minute)))).allowed
        for minute in range(0, 1440)
    }
    assert answers[539] is False and answers[540] is True and answers[1079] is True and answers[1080] is False
    # Below 540, at 540, between, at 1080, above: five keys for the whole day (one weekday here).
    assert engine.evaluations == 5
