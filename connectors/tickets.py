"""Hand a departing agent's open tickets to a successor through the channel's ticket API (``[channels.X.tickets]``).

Used by every connector kind whose channel has a ticket API: the kind builds a :class:`TicketDesk` with
:meth:`TicketDesk.for_context`, declares ``Capability.TICKETS`` when it got one, and delegates ``hand_over`` to
it. The ticket API is called with the channel's own credential (the vault's), presented as the kind presents
it (``Authorization: Bearer`` unless the kind says otherwise).

    GET  {url}tickets?assignee=U&status=open&limit=200[&after=ID]   → {"tickets": [...], "next": ID | null}
    POST {url}tickets/{id}/assign  {"assignee": successor | null, "queue": fallback_queue | null}

Every open ticket is listed first (keyed paging is stable while tickets move), then assigned one by one, each
with its own ``Idempotency-Key`` (the step's key and the ticket id), so a retried or resumed hand-over moves
each ticket once: a ticket already moved is no longer the agent's and is not listed again, and a reassignment
whose answer was lost is answered from the vendor's memory of the key. Receipts name ticket ids and counts,
never subjects (they may hold customers' personal data).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import quote

import aiohttp

from connectors.base import AgentRef, Outcome, StepContext, StepResult
from connectors.context import ConnectorContext, CredentialLoader
from connectors.secret import Secret
from connectors.vendor_http import Unreachable, VendorAnswer, call
from gateway.errors import VaultError
from gateway.settings import TicketSettings

STEP = "hand_over"
PAGE_SIZE = 200
#: At most this many pages are read per attempt (10,000 tickets); more are handed over by the next attempt
#: (RETRY). Also what stops a vendor whose ``next`` never ends.
MAX_PAGES = 50
#: At most this many ids in a receipt; the count is always complete.
IDS_IN_RECEIPT = 20

#: How the channel credential is presented to the ticket API: a header name and value.
Authorize = Callable[[Secret], tuple[str, str]]


def bearer(credential: Secret) -> tuple[str, str]:
    """RFC 6750 §2.1."""
    value = credential.reveal()
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        raise VaultError("The channel credential contains control characters an HTTP header cannot carry.")
    return "Authorization", f"Bearer {value}"


@dataclass(frozen=True, slots=True)
class _Listed:
    ids: list[str]
    complete: bool


def _id_list(ids: list[str]) -> str:
    shown = ", ".join(ids[:IDS_IN_RECEIPT])
    return shown + (f" and {len(ids) - IDS_IN_RECEIPT} more" if len(ids) > IDS_IN_RECEIPT else "")


def _tickets(count: int) -> str:
    return f"{count} open ticket{'' if count == 1 else 's'}"


class TicketDesk:
    """The client of one channel's ticket API."""

    def __init__(
        self,
        channel: str,
        settings: TicketSettings,
        credential: CredentialLoader,
        http: Callable[[], aiohttp.ClientSession],
        authorize: Authorize = bearer,
    ) -> None:
        self.channel = channel
        self._base = str(settings.url)
        self._fallback_queue = settings.fallback_queue
        self._credential = credential
        self._http = http
        self._authorize = authorize

    @classmethod
    def for_context(cls, context: ConnectorContext, authorize: Authorize = bearer) -> TicketDesk | None:
        """The channel's ticket desk, or None when its settings name no ticket API."""
        tickets = context.settings.tickets
        return None if tickets is None else cls(context.channel, tickets, context.credential, context.http, authorize)

    def __repr__(self) -> str:
        return f"TicketDesk(channel={self.channel!r}, url={self._base!r})"

    def _result(self, outcome: Outcome, detail: str, ids: list[str] | None = None) -> StepResult:
        reference = _id_list(ids) if ids else None
        return StepResult(self.channel, STEP, outcome, vendor_reference=reference, detail=detail)

    async def hand_over(self, agent: AgentRef, successor: AgentRef | None, ctx: StepContext) -> StepResult:
        """Assign each of ``agent``'s open tickets to ``successor``, or to the fallback queue when there is none."""
        if successor is not None and successor.user_name == agent.user_name:
            return self._result(
                Outcome.FAILED, f"the successor named for {agent.user_name} is {agent.user_name}: name someone else"
            )
        authorization = self._authorize(await self._credential())
        listed = await self._open_tickets(agent, authorization)
        if isinstance(listed, StepResult):
            return listed
        if successor is not None:
            body = {"assignee": successor.user_name, "queue": None}
            where = f"handed to {successor.user_name}"
        else:
            body = {"assignee": None, "queue": self._fallback_queue}
            where = f"moved to queue {self._fallback_queue!r} (no successor)"
        moved: list[str] = []
        for ticket_id in listed.ids:
            answer = await call(
                self._http(),
                "POST",
                f"{self._base}tickets/{quote(ticket_id, safe='')}/assign",
                authorization=authorization,
                json_body=body,
                idempotency_key=f"{ctx.idempotency_key}:ticket:{quote(ticket_id, safe='')}",
            )
            if answer.outcome is not Outcome.DONE:
                done = f"{len(moved)} of {_tickets(len(listed.ids))} {where}"
                done += f" ({_id_list(moved)})" if moved else ""
                verb = "failed for now" if answer.outcome is Outcome.RETRY else "refused"
                what = self._refusal(answer, f"assigning ticket {ticket_id}")
                return self._result(answer.outcome, f"{done}; then the ticket API {verb}: {what}", moved)
            moved.append(ticket_id)
        if not listed.complete:
            return self._result(
                Outcome.RETRY, f"{_tickets(len(moved))} {where}; more remain for the next attempt", moved
            )
        if not moved:
            return self._result(Outcome.DONE, f"{agent.user_name} has no open tickets")
        return self._result(Outcome.DONE, f"{_tickets(len(moved))} {where}", moved)

    async def _open_tickets(self, agent: AgentRef, authorization: tuple[str, str]) -> _Listed | StepResult:
        ids: list[str] = []
        after: str | None = None
        for _ in range(MAX_PAGES):
            params = {"assignee": agent.user_name, "status": "open", "limit": str(PAGE_SIZE)}
            if after is not None:
                params["after"] = after
            answer = await call(self._http(), "GET", f"{self._base}tickets", authorization=authorization, params=params)
            if answer.outcome is not Outcome.DONE:
                return self._result(answer.outcome, self._refusal(answer, "listing open tickets"))
            assert isinstance(answer, VendorAnswer)
            page, after = answer.field("tickets"), answer.field("next")
            if not isinstance(page, list) or not (after is None or isinstance(after, str)):
                return self._result(
                    Outcome.FAILED, "the ticket API's list is not {tickets: [...], next}: check [tickets] url"
                )
            # Checked here too, not only asked for: a vendor that ignored the filter must not make us move
            # somebody else's tickets.
            ids += [
                t["id"]
                for t in page
                if isinstance(t, dict)
                and isinstance(t.get("id"), str)
                and t.get("assignee") == agent.user_name
                and t.get("status") == "open"
            ]
            if after is None:
                return _Listed(list(dict.fromkeys(ids)), complete=True)
        return _Listed(list(dict.fromkeys(ids)), complete=False)

    def _refusal(self, answer: VendorAnswer | Unreachable, doing: str) -> str:
        if isinstance(answer, Unreachable):
            return f"{doing}: {answer.describe()}"
        if answer.status in (401, 403):
            return (
                f"{doing}: the ticket API refused the channel credential ({answer.describe()}); store the right "
                f"one with: channelgate channels set-credential {self.channel}"
            )
        if answer.status == 404 and doing.startswith("listing"):
            return f"{doing}: {answer.describe()}; check the [tickets] url of channel {self.channel!r}"
        return f"{doing}: {answer.describe()}"
