"""A demo console's ticket API: the gateway hands a departing agent's open tickets to a successor through it.

Service routes (the gateway only, guarded by the console's own credential like every service route):

    GET  {base}tickets?assignee=U&status=open[&queue=Q][&limit=N][&after=ID]
         → 200 {"tickets": [{id, subject, status, assignee, queue, updated}], "next": ID | null}
    POST {base}tickets/{id}/assign   {"assignee": userName | null, "queue": name | null}   (Idempotency-Key)
         → 200 {"ticket": {...}}

Listing is paged by key (``after`` = the last id seen, ``next`` = where the following page starts, null on the
last page, ``limit`` 1 to 200, default 50), so a page boundary never skips a ticket when others are reassigned
between pages. Each reassignment is one effect ``ticket reassigned`` whose subject is the previous assignee; a
replayed key or an assignment that changes nothing is none. Agents see their own open tickets at ``/tickets``.

Seed tickets come from ``--tickets`` (a built-in set for alice, bob and carol) or ``--tickets-file FILE`` (JSON:
a list of ``{id, subject, assignee?, queue?, status?}``).
"""

from __future__ import annotations

import html
import json
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import BaseRoute, Route

from deploy.demo.console_auth import agent_of
from deploy.demo.effects import Answer, Call, EffectRecorder, IdempotencyKeys, error

API_BASE = "/api/"
STATUSES = ("open", "pending", "closed")
DEFAULT_PAGE = 50
MAX_PAGE = 200
MAX_NAME = 256
REASSIGNED = "ticket reassigned"


@dataclass(frozen=True, slots=True)
class Ticket:
    id: str
    subject: str
    assignee: str | None
    queue: str | None = None
    status: str = "open"
    updated: str = ""

    def document(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "subject": self.subject,
            "status": self.status,
            "assignee": self.assignee,
            "queue": self.queue,
            "updated": self.updated,
        }


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _name(value: object) -> bool:
    return isinstance(value, str) and 0 < len(value) <= MAX_NAME and value.strip() == value


def parse_tickets(raw: object) -> list[Ticket]:
    """Seed tickets from JSON (a list of objects); a bad entry is a ``ValueError`` naming it."""
    if not isinstance(raw, list):
        raise ValueError("the ticket seed must be a JSON list of {id, subject, assignee, queue, status}")
    tickets: list[Ticket] = []
    for number, item in enumerate(raw, 1):
        if not isinstance(item, dict) or not _name(item.get("id")) or not isinstance(item.get("subject"), str):
            raise ValueError(f"ticket {number}: needs a string id (no surrounding spaces) and a string subject")
        status = item.get("status", "open")
        if status not in STATUSES:
            raise ValueError(f"ticket {item['id']}: status must be one of {', '.join(STATUSES)}")
        assignee, queue = item.get("assignee"), item.get("queue")
        if not all(value is None or _name(value) for value in (assignee, queue)):
            raise ValueError(f"ticket {item['id']}: assignee and queue must be names or null")
        tickets.append(Ticket(item["id"], item["subject"], assignee, queue, status, str(item.get("updated") or _now())))
    if len({ticket.id for ticket in tickets}) != len(tickets):
        raise ValueError("ticket ids must be unique")
    return tickets


def load_tickets(path: Path) -> list[Ticket]:
    return parse_tickets(json.loads(path.read_text(encoding="utf-8")))


def demo_tickets(channel: str) -> list[Ticket]:
    """Open work for the demo's agents: alice has three open tickets (and a closed one), bob two, carol one."""
    prefix = channel.upper()
    seed = [
        ("alice", "Refund for order 1042 not received", "open"),
        ("alice", "Cannot log in to the customer portal", "open"),
        ("alice", "Change of billing address", "open"),
        ("alice", "Thank-you note, no action needed", "closed"),
        ("bob", "Invoice shows the wrong VAT rate", "open"),
        ("bob", "Delivery left at the wrong door", "open"),
        ("carol", "Escalation: repeated outage reports", "open"),
    ]
    now = _now()
    return [
        Ticket(f"{prefix}-{100 + number}", subject, assignee, "support", status, now)
        for number, (assignee, subject, status) in enumerate(seed, 1)
    ]


class TicketBoard:
    """One console's tickets, its ticket API routes and the agents' ticket page."""

    def __init__(
        self, tickets: Sequence[Ticket], effects: EffectRecorder, keys: IdempotencyKeys, base: str = API_BASE
    ) -> None:
        if not base.startswith("/") or not base.endswith("/"):
            raise ValueError("the ticket API base must start and end with '/'")
        self._tickets = {ticket.id: ticket for ticket in tickets}
        #: Each ticket's place on the board: the listing's order, and where ``after`` resumes.
        self._position = {ticket_id: n for n, ticket_id in enumerate(self._tickets)}
        #: assignee → their tickets' ids, so listing one agent's tickets does not read the whole board (a bulk
        #: offboarding lists every departing agent's tickets: a scan each made it quadratic).
        self._by_assignee: dict[str | None, dict[str, None]] = {}
        for ticket in self._tickets.values():
            self._by_assignee.setdefault(ticket.assignee, {})[ticket.id] = None
        self._effects = effects
        self._keys = keys
        self._base = base

    def ticket(self, ticket_id: str) -> Ticket | None:
        return self._tickets.get(ticket_id)

    def service_routes(self) -> list[BaseRoute]:
        return [
            Route(f"{self._base}tickets", self._list, methods=["GET"]),
            Route(f"{self._base}tickets/{{ticket_id}}/assign", self._keys.endpoint(self._assign), methods=["POST"]),
        ]

    def agent_routes(self) -> list[BaseRoute]:
        return [Route("/tickets", self._page, methods=["GET"])]

    async def _list(self, request: Request) -> Response:
        query = request.query_params
        unknown = sorted(set(query) - {"assignee", "status", "queue", "limit", "after"})
        if unknown:
            return error(400, "invalid_request", f"unknown query parameters: {', '.join(unknown)}")
        status = query.get("status")
        if status is not None and status not in STATUSES:
            return error(400, "invalid_request", f"status must be one of {', '.join(STATUSES)}")
        try:
            limit = int(query.get("limit", str(DEFAULT_PAGE)))
        except ValueError:
            limit = 0
        if not 1 <= limit <= MAX_PAGE:
            return error(400, "invalid_request", f"limit must be a whole number from 1 to {MAX_PAGE}")
        after = query.get("after")
        if after is not None and after not in self._tickets:
            return error(400, "invalid_request", "after must be the id of a ticket (the 'next' of a previous page)")
        start = 0 if after is None else self._position[after] + 1
        if "assignee" in query:
            mine = self._by_assignee.get(query["assignee"], {})
            ids = sorted((i for i in mine if self._position[i] >= start), key=self._position.__getitem__)
        else:
            ids = list(self._tickets)[start:]
        chosen: list[Ticket] = []
        next_id: str | None = None
        for ticket_id in ids:
            ticket = self._tickets[ticket_id]
            if (
                ("assignee" in query and ticket.assignee != query["assignee"])
                or (status is not None and ticket.status != status)
                or ("queue" in query and ticket.queue != query["queue"])
            ):
                continue
            if len(chosen) == limit:
                next_id = chosen[-1].id
                break
            chosen.append(ticket)
        return JSONResponse({"tickets": [ticket.document() for ticket in chosen], "next": next_id})

    def _assign(self, call: Call) -> Answer:
        ticket = self._tickets.get(call.request.path_params["ticket_id"])
        if ticket is None:
            return Answer(404, {"error": "not_found", "error_description": "no ticket with this id"})
        assignee, queue = call.payload.get("assignee"), call.payload.get("queue")
        unknown = sorted(set(call.payload) - {"assignee", "queue"})
        if unknown or not all(value is None or _name(value) for value in (assignee, queue)):
            return Answer(
                422,
                {
                    "error": "invalid_assignment",
                    "error_description": "send {assignee: userName | null, queue: name | null} and nothing else",
                },
            )
        if assignee is None and queue is None:
            return Answer(
                422,
                {"error": "invalid_assignment", "error_description": "name an assignee, a queue, or both"},
            )
        if (ticket.assignee, ticket.queue) != (assignee, queue):
            previous = ticket.assignee or ""
            del self._by_assignee[ticket.assignee][ticket.id]
            ticket = replace(ticket, assignee=assignee, queue=queue, updated=_now())
            self._tickets[ticket.id] = ticket
            self._by_assignee.setdefault(assignee, {})[ticket.id] = None
            target = f"assignee {assignee}" if assignee else f"queue {queue}"
            self._effects.record(REASSIGNED, previous, f"{ticket.id} -> {target}", call.idempotency_key)
        return Answer(200, {"ticket": ticket.document()})

    async def _page(self, request: Request) -> HTMLResponse:
        agent = agent_of(request)
        ids = sorted(self._by_assignee.get(agent.username, {}), key=self._position.__getitem__)
        mine = [t for t in map(self._tickets.__getitem__, ids) if t.status == "open"]
        rows = (
            "".join(f"<li><strong>{html.escape(t.id)}</strong> {html.escape(t.subject)}</li>" for t in mine)
            or "<li>No open tickets.</li>"
        )
        body = (
            '<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Your open tickets</title></head>'
            '<body style="font-family: sans-serif; max-width: 40rem; margin: 2rem auto">'
            f'<h1>Open tickets of {html.escape(agent.username)}</h1><ul id="tickets">{rows}</ul></body></html>'
        )
        return HTMLResponse(body)
