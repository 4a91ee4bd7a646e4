"""Which steps a deprovisioning runs at each channel, in which order, and what a finished step unlocks (pure).

Per channel: ``revoke`` (RFC 7009 token revocation, seat disable, console logout) → ``verify`` (RFC 7662
introspection, seat status, console session list) → ``remove`` (seat deletion, a console password the gateway
kept for the agent); ``hand_over`` (open tickets to a
successor) runs beside them. Only the steps a connector's capabilities call for are planned, so a static shared
credential (nothing per agent) plans none. ``verify`` follows a revoke that succeeded *or* gave up, because a
dead revocation is exactly when the record of residual access matters; ``remove`` follows only a verification
that confirmed no access remains, since deleting a seat could also delete the evidence of what is still open.

Irreversible steps (hand-over, removal) are the ones the mass-deletion guard holds for an admin's approval.

A run whose agent is made active again before it finished is *superseded*: its unfinished steps are not taken, and
the run is neither done nor in attention (it did not end the agent's access, and nobody should retry it). What it
carried out before (a revocation, a hand-over, a removal: the steps that act, :data:`ACTING`) stays carried out
for a person to undo where the agent needs it back.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from enum import StrEnum

from connectors.base import Capability, Outcome


class StepKind(StrEnum):
    REVOKE = "revoke"
    HAND_OVER = "hand_over"
    VERIFY = "verify"
    REMOVE = "remove"


class StepState(StrEnum):
    #: Planned, waiting for an earlier step of the same channel.
    WAITING = "waiting"
    #: Due at ``next_attempt_at`` (a worker holding its lease is running it).
    PENDING = "pending"
    #: Irreversible, waiting for an admin's approval (mass-deletion guard).
    HELD = "held"
    #: Not attempted because the step before it did not end well (``remove`` after an unconfirmed verify).
    BLOCKED = "blocked"
    DONE = "done"
    NOT_APPLICABLE = "not_applicable"
    #: The channel refused for good; a person has to look.
    FAILED = "failed"
    #: Retried until the budget was spent (dead letter).
    DEAD = "dead"
    #: Not taken: the agent was made active again before the step ran (its run is superseded).
    SUPERSEDED = "superseded"


class RunState(StrEnum):
    RUNNING = "running"
    #: Irreversible steps wait for approval; the rest proceeds.
    HELD = "held"
    #: Every step done or not applicable, every verification confirmed.
    DONE = "done"
    #: Finished, but a step failed, went dead or was blocked: never reported as done.
    ATTENTION = "attention"
    #: Ended unfinished because its agent was made active again (before it finished, or after it ended in
    #: attention): neither done nor a dead letter, never retried.
    SUPERSEDED = "superseded"


#: The states a run ends in (``finished_at`` set); no step of such a run is due.
FINISHED_RUNS = frozenset({RunState.DONE, RunState.ATTENTION, RunState.SUPERSEDED})
IRREVERSIBLE = frozenset({StepKind.HAND_OVER, StepKind.REMOVE})
#: The steps that change something at the channel (``verify`` only reads): what a superseded run may leave undone.
ACTING = frozenset({StepKind.REVOKE, StepKind.HAND_OVER, StepKind.REMOVE})
FINAL = frozenset(
    {
        StepState.DONE,
        StepState.NOT_APPLICABLE,
        StepState.FAILED,
        StepState.DEAD,
        StepState.BLOCKED,
        StepState.SUPERSEDED,
    }
)
SUCCESS = frozenset({StepState.DONE, StepState.NOT_APPLICABLE})
#: Revoke, then verify, then remove: each step of a channel's chain waits for the one before it.
_CHAIN = (StepKind.REVOKE, StepKind.VERIFY, StepKind.REMOVE)

_REVOKING = frozenset({Capability.REVOKE_TOKENS, Capability.SEATS, Capability.CONSOLE_LOGOUT})


def plan_channel(capabilities: Iterable[Capability]) -> list[StepKind]:
    """The steps a connector with these capabilities takes part in, in pipeline order."""
    caps = frozenset(capabilities)
    steps: list[StepKind] = []
    if caps & _REVOKING:
        steps.append(StepKind.REVOKE)
    if Capability.TICKETS in caps:
        steps.append(StepKind.HAND_OVER)
    if Capability.VERIFY in caps:
        steps.append(StepKind.VERIFY)
    # Seat deletion, and a cookie-jar console's stored password (a credential the gateway holds for the agent).
    if caps & {Capability.SEATS, Capability.CONSOLE_LOGOUT}:
        steps.append(StepKind.REMOVE)
    return steps


def initial_state(kind: StepKind, planned: Iterable[StepKind], *, held: bool) -> StepState:
    """The state a planned step starts in: the first of its channel's chain is due, irreversible ones may be held."""
    chain = [k for k in planned if k is not StepKind.HAND_OVER]
    first = kind is StepKind.HAND_OVER or (bool(chain) and chain[0] is kind)
    if not first:
        return StepState.WAITING
    return StepState.HELD if held and kind in IRREVERSIBLE else StepState.PENDING


def step_state_for(outcome: Outcome, attempts: int, max_attempts: int) -> StepState:
    """Where a step goes after an attempt: RETRY stays pending until the budget is spent, then dead-letters."""
    if outcome is Outcome.DONE:
        return StepState.DONE
    if outcome is Outcome.NOT_APPLICABLE:
        return StepState.NOT_APPLICABLE
    if outcome is Outcome.FAILED:
        return StepState.FAILED
    return StepState.PENDING if attempts < max_attempts else StepState.DEAD


def unlocked(
    finished: StepKind, state: StepState, siblings: Mapping[StepKind, StepState], *, held: bool
) -> dict[StepKind, StepState]:
    """The channel's waiting steps a final ``state`` of step ``finished`` moves on, and where they go."""
    if state not in FINAL:
        return {}
    if state is StepState.SUPERSEDED:
        # Nothing after a step not taken is taken either: the agent is active again.
        later = _CHAIN[_CHAIN.index(finished) + 1 :] if finished in _CHAIN else ()
        return {kind: StepState.SUPERSEDED for kind in later if siblings.get(kind) is StepState.WAITING}
    after: StepKind | None = None
    if finished is StepKind.REVOKE:
        after = StepKind.VERIFY if StepKind.VERIFY in siblings else StepKind.REMOVE
    elif finished is StepKind.VERIFY:
        after = StepKind.REMOVE
    if after is None or siblings.get(after) is not StepState.WAITING:
        return {}
    if after is StepKind.REMOVE and state not in SUCCESS:
        return {after: StepState.BLOCKED}
    return {after: StepState.HELD if held and after in IRREVERSIBLE else StepState.PENDING}


_UNFINISHED_BAD = frozenset({StepState.DEAD, StepState.FAILED, StepState.BLOCKED})


def requeue(steps: Mapping[StepKind, StepState], *, held: bool) -> dict[StepKind, StepState]:
    """An operator's retry of one channel: the first step of the chain that did not succeed is due again and the
    ones after it wait for it (a verification must not run before the revocation it verifies); a failed
    hand-over is due again on its own. A verification after a requeued step waits to be redone even if it
    succeeded, since it vouched for an earlier state; so every waiting step has a predecessor still to finish,
    which unlocks it (:func:`unlocked`). A retry is no approval: in a ``held`` run an irreversible step that
    is due again is held."""
    due = StepState.PENDING
    moves: dict[StepKind, StepState] = {}
    if steps.get(StepKind.HAND_OVER) in _UNFINISHED_BAD:
        moves[StepKind.HAND_OVER] = StepState.HELD if held else due
    chain = [k for k in _CHAIN if k in steps]
    for position, kind in enumerate(chain):
        if steps[kind] in _UNFINISHED_BAD:
            moves[kind] = StepState.HELD if held and kind in IRREVERSIBLE else due
            for later in chain[position + 1 :]:
                if later is StepKind.VERIFY or steps[later] not in SUCCESS:
                    moves[later] = StepState.WAITING
            break
    return moves


def run_state(states: Iterable[StepState], *, held: bool) -> RunState:
    """A run is done only when every step is done or not applicable; finished otherwise means attention, or
    superseded when a step was not taken because the agent is active again. A held run stays held while any step
    is unfinished, held or not yet: a removal still waiting for its verification is held when it is unlocked,
    which only a held run does."""
    seen = list(states)
    if any(s in (StepState.PENDING, StepState.WAITING) for s in seen):
        return RunState.HELD if held else RunState.RUNNING
    if StepState.HELD in seen:
        return RunState.HELD
    if StepState.SUPERSEDED in seen:
        return RunState.SUPERSEDED
    if all(s in SUCCESS for s in seen):
        return RunState.DONE
    return RunState.ATTENTION


def carried_out(kind: StepKind, state: StepState) -> bool:
    """Whether a step acted at its channel: what a person may have to undo once its run is superseded."""
    return state is StepState.DONE and kind in ACTING
