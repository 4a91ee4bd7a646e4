"""Who takes a departing agent's open work (gateway/deprovision/worker.py ``successor_ref``): the successor the
trigger named, else the manager; one who is gone, disabled or the agent themself is no successor, and the
hand-over's receipt says why."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from gateway.deprovision.plan import RunState
from gateway.deprovision.worker import successor_ref
from gateway.storage.pipeline import RunRecord
from gateway.storage.pipeline_records import Person, RunPeople

ALICE = Person("id-alice", "alice", None, active=False, deleted=False)
CAROL = Person("id-carol", "carol", "carol@x.test", active=True, deleted=False)
DAVE = Person("id-dave", "dave", None, active=True, deleted=False)


def disabled(person: Person) -> Person:
    return Person(person.id, person.user_name, person.email, active=False, deleted=False)


def run(successor: str | None) -> RunRecord:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    return RunRecord("run-1", ALICE.id, "alice", "cli", "t", "left", successor, RunState.RUNNING, now, None, None)


@pytest.mark.parametrize(
    ("named", "people", "takes", "why"),
    [
        (None, RunPeople(ALICE, CAROL, None), "carol", None),
        (None, RunPeople(ALICE, disabled(CAROL), None), None, "the manager carol is disabled"),
        (None, RunPeople(ALICE, None, None), None, None),
        ("dave", RunPeople(ALICE, CAROL, DAVE), "dave", None),
        ("dave", RunPeople(ALICE, CAROL, disabled(DAVE)), None, "the named successor dave is disabled"),
        ("dave", RunPeople(ALICE, CAROL, None), None, "the named successor dave is deleted or unknown"),
        ("alice", RunPeople(ALICE, CAROL, ALICE), None, "the named successor alice is the departing agent"),
    ],
)
def test_a_successor_who_is_gone_disabled_or_the_agent_is_none_and_the_reason_is_given(
    named: str | None, people: RunPeople, takes: str | None, why: str | None
) -> None:
    successor, reason = successor_ref(run(named), people)
    assert (successor.user_name if successor else None, reason) == (takes, why)
