"""What a hand-over receipt says (pure): which of the agent's open tickets moved, and to whom.

The ticket desk (``connectors/tickets.py``) writes a hand-over's receipt as the step's ``detail`` ("3 open tickets
handed to carol", "2 open tickets moved to queue 'chat-unassigned' (no successor)", "2 of 5 open tickets handed
to carol (T-1, T-2); then …", "alice has no open tickets") and the moved ticket ids as its ``vendor_reference``
("T-1, T-2 and 3 more"). The report shows the receipt verbatim beside what is read from it, so nothing rests on
the reading alone.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from gateway.storage.pipeline import RunRecord, StepRecord

_COUNT = re.compile(r"^(\d+)(?: of (\d+))? open tickets?\b")
_TO_PERSON = re.compile(r"\bhanded to (\S+?)(?:[;,(]|\s|$)")
_TO_QUEUE = re.compile(r"\bmoved to queue '([^']*)'")
_NONE_OPEN = re.compile(r"\bhas no open tickets$")
_MORE = re.compile(r"^(.*) and (\d+) more$")


@dataclass(frozen=True, slots=True)
class HandOver:
    run_id: str
    channel: str
    state: str
    attempts: int
    #: Tickets moved, as counted by the receipt (None when it does not say).
    moved: int | None
    #: Of how many open ones, when only part moved.
    of: int | None
    #: The successor's userName, or ``queue:<name>``.
    to: str | None
    ticket_ids: tuple[str, ...]
    #: Ids the receipt did not list ("and N more").
    more_ids: int
    detail: str | None
    updated_at: str

    def as_dict(self) -> dict[str, object]:
        return {
            "run_id": self.run_id,
            "channel": self.channel,
            "state": self.state,
            "attempts": self.attempts,
            "moved": self.moved,
            "of": self.of,
            "to": self.to,
            "ticket_ids": list(self.ticket_ids),
            "more_ids": self.more_ids,
            "detail": self.detail,
            "updated_at": self.updated_at,
        }


def _ids(reference: str | None) -> tuple[tuple[str, ...], int]:
    if not reference:
        return (), 0
    more = 0
    match = _MORE.match(reference)
    if match is not None:
        reference, more = match[1], int(match[2])
    return tuple(part.strip() for part in reference.split(",") if part.strip()), more


def read_hand_over(run: RunRecord, step: StepRecord) -> HandOver:
    detail = step.detail or ""
    moved: int | None = None
    of: int | None = None
    count = _COUNT.match(detail)
    if count is not None:
        moved, of = int(count[1]), int(count[2]) if count[2] else None
    elif _NONE_OPEN.search(detail):
        moved = 0
    to: str | None = None
    person, queue = _TO_PERSON.search(detail), _TO_QUEUE.search(detail)
    if person is not None:
        to = person[1]
    elif queue is not None:
        to = f"queue:{queue[1]}"
    ids, more = _ids(step.vendor_reference)
    return HandOver(
        run.id,
        step.channel,
        step.state.value,
        step.attempts,
        moved,
        of,
        to,
        ids,
        more,
        step.detail,
        step.updated_at.isoformat(),
    )
