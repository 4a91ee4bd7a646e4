"""The pipeline's plan: which steps each connector kind takes part in, what a finished step unlocks, when a run
is done (only when every step is), and how far retries back off."""

from __future__ import annotations

import pytest

from connectors.base import Capability, Outcome
from gateway.deprovision.backoff import retry_delay
from gateway.deprovision.plan import (
    RunState,
    StepKind,
    StepState,
    carried_out,
    initial_state,
    plan_channel,
    run_state,
    step_state_for,
    unlocked,
)

R, H, V, X = StepKind.REVOKE, StepKind.HAND_OVER, StepKind.VERIFY, StepKind.REMOVE


def test_a_shared_static_credential_plans_no_step() -> None:
    assert plan_channel({Capability.INJECT}) == []


@pytest.mark.parametrize(
    ("capabilities", "steps"),
    [
        ({Capability.INJECT, Capability.REVOKE_TOKENS, Capability.VERIFY}, [R, V]),
        ({Capability.INJECT, Capability.TICKETS}, [H]),
        ({Capability.PROVISION, Capability.INJECT, Capability.SEATS, Capability.VERIFY}, [R, V, X]),
        ({Capability.INJECT, Capability.COOKIE_JAR, Capability.CONSOLE_LOGOUT, Capability.VERIFY, Capability.TICKETS},
         [R, H, V, X]),
    ],
)  # fmt: skip
def test_each_kind_plans_the_steps_its_capabilities_call_for(
    capabilities: set[Capability], steps: list[StepKind]
) -> None:
    assert plan_channel(capabilities) == steps


def test_the_first_step_of_the_chain_and_the_hand_over_start_due_the_rest_wait() -> None:
    planned = [R, H, V, X]
    assert [initial_state(k, planned, held=False) for k in planned] == [
        StepState.PENDING, StepState.PENDING, StepState.WAITING, StepState.WAITING
    ]  # fmt: skip


def test_a_held_run_starts_its_irreversible_steps_held_and_still_revokes_at_once() -> None:
    planned = [R, H, V, X]
    assert [initial_state(k, planned, held=True) for k in planned] == [
        StepState.PENDING, StepState.HELD, StepState.WAITING, StepState.WAITING
    ]  # fmt: skip


@pytest.mark.parametrize("revoke_end", [StepState.DONE, StepState.DEAD, StepState.FAILED])
def test_verification_follows_a_revocation_however_it_ended(revoke_end: StepState) -> None:
    siblings = {R: revoke_end, V: StepState.WAITING, X: StepState.WAITING}
    assert unlocked(R, revoke_end, siblings, held=False) == {V: StepState.PENDING}


def test_removal_follows_only_a_confirmed_verification() -> None:
    siblings = {R: StepState.DONE, V: StepState.DONE, X: StepState.WAITING}
    assert unlocked(V, StepState.DONE, siblings, held=False) == {X: StepState.PENDING}
    assert unlocked(V, StepState.FAILED, siblings, held=False) == {X: StepState.BLOCKED}
    assert unlocked(V, StepState.DONE, siblings, held=True) == {X: StepState.HELD}


def test_a_step_still_retrying_unlocks_nothing() -> None:
    assert unlocked(R, StepState.PENDING, {R: StepState.PENDING, V: StepState.WAITING}, held=False) == {}


def test_outcomes_map_to_states_and_retries_dead_letter_when_the_budget_is_spent() -> None:
    assert step_state_for(Outcome.DONE, 1, 3) is StepState.DONE
    assert step_state_for(Outcome.NOT_APPLICABLE, 1, 3) is StepState.NOT_APPLICABLE
    assert step_state_for(Outcome.FAILED, 1, 3) is StepState.FAILED
    assert step_state_for(Outcome.RETRY, 2, 3) is StepState.PENDING
    assert step_state_for(Outcome.RETRY, 3, 3) is StepState.DEAD


@pytest.mark.parametrize(
    ("states", "expected"),
    [
        ([StepState.DONE, StepState.NOT_APPLICABLE], RunState.DONE),
        ([StepState.DONE, StepState.PENDING], RunState.RUNNING),
        ([StepState.DONE, StepState.DEAD], RunState.ATTENTION),
        ([StepState.DONE, StepState.FAILED, StepState.BLOCKED], RunState.ATTENTION),
        ([StepState.DONE, StepState.HELD], RunState.HELD),
        ([StepState.DONE, StepState.SUPERSEDED], RunState.SUPERSEDED),
        ([StepState.DEAD, StepState.SUPERSEDED], RunState.SUPERSEDED),
        ([StepState.SUPERSEDED, StepState.PENDING], RunState.RUNNING),
        ([], RunState.DONE),
    ],
)
def test_a_run_is_done_only_when_every_step_is(states: list[StepState], expected: RunState) -> None:
    assert run_state(states, held=False) is expected


def test_backoff_doubles_up_to_the_cap_with_full_jitter() -> None:
    ceilings = [retry_delay(n, 2.0, 60.0, uniform=lambda low, high: high) for n in range(1, 9)]
    assert ceilings == [2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0, 60.0]
    assert retry_delay(5, 2.0, 60.0, uniform=lambda low, high: low) == 0.0
    assert retry_delay(10_000, 2.0, 60.0, uniform=lambda low, high: high) == 60.0


def test_an_operator_retry_requeues_the_chain_in_order_and_the_hand_over_on_its_own() -> None:
    from gateway.deprovision.plan import requeue

    steps = {R: StepState.DEAD, H: StepState.FAILED, V: StepState.DEAD, X: StepState.BLOCKED}
    assert requeue(steps, held=False) == {
        H: StepState.PENDING,
        R: StepState.PENDING,
        V: StepState.WAITING,
        X: StepState.WAITING,
    }
    assert requeue({R: StepState.DONE, V: StepState.FAILED, X: StepState.BLOCKED}, held=False) == {
        V: StepState.PENDING, X: StepState.WAITING
    }  # fmt: skip
    assert requeue({R: StepState.DONE, V: StepState.DONE}, held=False) == {}


def test_a_retried_revocation_has_its_succeeded_verification_redone_so_the_removal_is_unlocked() -> None:
    from gateway.deprovision.plan import requeue

    moves = requeue({R: StepState.DEAD, V: StepState.DONE, X: StepState.FAILED}, held=False)
    assert moves == {R: StepState.PENDING, V: StepState.WAITING, X: StepState.WAITING}
    # A removal that already happened is not redone.
    assert requeue({R: StepState.DEAD, V: StepState.DONE, X: StepState.DONE}, held=False) == {
        R: StepState.PENDING, V: StepState.WAITING
    }  # fmt: skip


def test_a_retry_of_a_held_run_requeues_irreversible_steps_held_not_due() -> None:
    from gateway.deprovision.plan import requeue

    assert requeue({H: StepState.FAILED, R: StepState.DONE, V: StepState.DONE, X: StepState.FAILED}, held=True) == {
        H: StepState.HELD, X: StepState.HELD
    }  # fmt: skip


def test_a_held_run_stays_held_while_a_step_is_unfinished_even_with_no_step_held_yet() -> None:
    assert run_state([StepState.DONE, StepState.PENDING, StepState.WAITING], held=True) is RunState.HELD
    assert run_state([StepState.DONE, StepState.FAILED], held=True) is RunState.ATTENTION


def test_a_step_not_taken_for_an_agent_active_again_takes_the_rest_of_its_chain_with_it() -> None:
    waiting = {R: StepState.SUPERSEDED, V: StepState.WAITING, X: StepState.WAITING}
    assert unlocked(R, StepState.SUPERSEDED, waiting, held=False) == {V: StepState.SUPERSEDED, X: StepState.SUPERSEDED}
    assert unlocked(H, StepState.SUPERSEDED, {H: StepState.SUPERSEDED, R: StepState.PENDING}, held=False) == {}


def test_only_a_done_revocation_hand_over_or_removal_counts_as_carried_out() -> None:
    assert [k for k in (R, H, V, X) if carried_out(k, StepState.DONE)] == [R, H, X]
    assert not any(carried_out(R, s) for s in StepState if s is not StepState.DONE)
