"""Forward-auth answers kept for the exact same question, checked again on every request before reuse.

nginx asks ``/.channelgate/auth`` before every request an agent makes, mostly the same few questions over and
over: the same session, method, URI and client. The full check (gateway/forward_auth.py → ``check_request``:
path normalisation, route, session, policy decision, then the connector and the assertion) cost ~40 µs of the
event loop per request in the profile of docs/benchmarks.md §8, most of it re-deriving what the previous request
derived. An allowed answer is kept here, keyed by everything the decision read from the request, and reused only
while everything it read from the gateway is unchanged:

* the session: looked up again on every request (a revoked, expired or logged-out session is a miss, and the
  full path answers 401), and its data must be the data the answer was decided for — a group change is a miss,
  so it applies to the very next request (ASVS 8.3.2); while the session store recently failed to answer, the
  full path runs (it also checks the agent's row);
* the policy set, the route table and the channel's connector: the same objects (a policy reload is a miss). The
  policy set is the engine that made the decision (``Decision.engine_id``), not the one in force when the answer
  was kept: a reload lands from a worker thread, possibly between the two;
* the policy clock: the same minute (a rule about shifts sees every minute, as on the full path).

What is not reused: the channel credential (the connector prepares it on every request, so a rotated or refreshed
credential is used at once), the assertion (the signer's own reuse rules apply), the header-size limit, the
caller check, the access-log record and the metrics — each request gets its own. Only the nginx form of the
question is memoised (``X-Original-URI`` on ``/.channelgate/auth`` itself, no answer mode): other forms and
routes with personal-data rules (whose classification reads any header) always take the full path.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from starlette.types import Send

from connectors.base import AgentRef, Connector, UpstreamRequest
from gateway.errors import ChannelgateError
from gateway.inline_proxy import Checked, request_record
from gateway.proxy.headers import check_header_size
from gateway.scope import RequestScope, new_request_id
from gateway.services import Services
from gateway.sessions.base import Session, SessionData, SessionState
from gateway.storage.access_log import ROW_HEAD, LogRow, insert_values
from gateway.timeutil import utcnow

if TYPE_CHECKING:
    from gateway.forward_auth import Asked  # the question is read where the request's other forms are

#: Answers kept at most; a replica past this forgets them all and starts again.
MAX_ANSWERS = 20_000
#: Answers to a longer URI are not kept (they take the full path each time): an agent asking about distinct URIs
#: with 7 KB query strings held ~23 KB an answer, ~470 MB at MAX_ANSWERS. The questions worth keeping — the same
#: console pages asked over and over — are short.
MAX_KEPT_URI = 1024

#: (session id, method, URI as asked, host, client address, device header) — what the decision read.
Question = tuple[str, str, str, str | None, str, str | None]


@dataclass(frozen=True, slots=True)
class Answer:
    """An allowed answer and what it was decided from."""

    data: SessionData
    #: The ``PolicyEngine.id`` of the engine that decided (``Decision.engine_id``).
    engine_id: int
    routes: object
    connector: Connector
    minute: int
    checked: Checked
    url: str
    #: The answer's own headers after the credential and the assertion, ready to send.
    tail: tuple[tuple[bytes, bytes], ...]
    #: The metrics a request this answer allows counts: its decision and its status.
    counters: tuple[Any, ...]
    #: The access-log row of a request this answer allows, after its time, kind and request id (``ROW_HEAD``):
    #: the same agent, client, channel, method, path, status, decision and policies every time.
    row_tail: LogRow

    @property
    def channel(self) -> str:
        return self.checked.match.route.channel


def row_tail(question: Question, checked: Checked, action: str, log_path: str) -> LogRow:
    """What ``request_record`` gives for a request the answer allows, after ``ROW_HEAD``: as the full path
    writes it (tests/integration/test_forward_auth_memo.py compares the two)."""
    scope = RequestScope("", question[4], 0.0, checked.session, checked.decision, checked.match.route.channel)
    scope.action = action
    record = request_record(scope, question[1], log_path, status=200, detail={"via": "forward-auth"})
    return insert_values(record)[len(ROW_HEAD) :]


#: What uvicorn's send refuses in a header value (control characters but tab: RFC 9110 §5.5).
_UNSENDABLE = re.compile(b"[\x00-\x08\x0a-\x1f\x7f]")


def _unsendable(sent: list[tuple[bytes, bytes]], upstream: UpstreamRequest) -> bool:
    """A control character in the credential's values: uvicorn's send refuses it, so the full path answers."""
    return any(_UNSENDABLE.search(value) for _, value in sent[1 : len(upstream.headers) + 1])


@dataclass(frozen=True, slots=True)
class Later:
    """``answer_now``'s "a kept answer may hold, but telling needs I/O": the session, if it was held in process
    (the credential must then be prepared), for ``answer_later`` to use rather than read it again."""

    session: Session | None


def _agent(data: SessionData) -> AgentRef:
    return AgentRef(agent_id=data.agent_id, user_name=data.user_name, email=None)


class ForwardAuthMemo:
    def __init__(self, size: int = MAX_ANSWERS) -> None:
        self._size = size
        #: Oldest first: a full memo forgets its oldest answer, not every agent's (one agent asking about many
        #: URIs must not put everyone back on the full path).
        self._answers: OrderedDict[Question, Answer] = OrderedDict()
        self.hits = 0
        self.misses = 0
        #: Of the hits, those answered from the HTTP parser's callback (``answer_now``).
        self.immediate_hits = 0
        #: Of the hits, those the HTTP protocol answered after ``answer_later`` read what it needed, without the
        #: ASGI application (gateway/forward_auth_protocol.py counts them).
        self.awaited_hits = 0

    def keep(self, question: Question, answer: Answer) -> None:
        if len(question[2]) > MAX_KEPT_URI:
            return
        while len(self._answers) >= self._size:
            self._answers.popitem(last=False)
        self._answers[question] = answer

    def clear(self) -> None:
        self._answers.clear()

    def __len__(self) -> int:
        return len(self._answers)

    async def answer(
        self,
        asked: Asked,
        headers: Sequence[tuple[bytes, bytes]],
        services: Services,
        caller_allowed: bool,
        send: Send,
    ) -> bool:
        """Send the kept answer to ``asked`` if it still holds; False (nothing sent) means take the full path."""
        sent = await self.answer_later(asked, headers, services, caller_allowed)
        if sent is None:
            return False
        await send({"type": "http.response.start", "status": 200, "headers": sent})
        await send({"type": "http.response.body", "body": b""})
        return True

    async def answer_later(
        self,
        asked: Asked,
        headers: Sequence[tuple[bytes, bytes]],
        services: Services,
        caller_allowed: bool,
        session: Session | None = None,
    ) -> list[tuple[bytes, bytes]] | None:
        """The headers of the kept answer to ``asked`` if it still holds, its session read from the store (unless
        ``session``, held in process a moment ago, is given: ``Later.session``), with its record and metrics done;
        None means take the full path (a miss, the answer forgotten; or the session store or the access log failed,
        which the full path then refuses with its own page and record)."""
        now = services.clock()
        answer = self._holding(asked, services, caller_allowed, now)
        if answer is None:
            self.misses += 1
            return None
        if session is None:
            try:
                lookup = await services.sessions.lookup(asked.question[0], now)
            except ChannelgateError:
                return None
            session = lookup.session if lookup.state is SessionState.VALID else None
        if session is None or session.data != answer.data:
            self._stale(asked.question)
            return None
        try:
            upstream = self._upstream(asked, answer, headers, services)
            await answer.connector.prepare(_agent(session.data), upstream)
        except ChannelgateError:
            self._stale(asked.question)  # the full path refuses it, with its own record
            return None
        sent = self._headers(answer, services, session.data, upstream, now)
        if _unsendable(sent, upstream):
            self._stale(asked.question)
            return None
        try:
            self._record(answer, services)
        except ChannelgateError:  # the access log's queue filled while the credential was prepared
            return None
        return sent

    def answer_now(
        self, asked: Asked, headers: Sequence[tuple[bytes, bytes]], services: Services, caller_allowed: bool
    ) -> list[tuple[bytes, bytes]] | Later | None:
        """The headers of the kept answer to ``asked`` when it holds and nothing needs I/O to tell (the session
        held in process, the credential too: ``SessionStore.held``, ``Connector.prepare_from_memory``), with its
        record and metrics done. ``Later`` when a kept answer may hold but the session must be read or the
        credential prepared, or the session held changed: :meth:`answer_later` tells. None changes nothing and
        counts nothing: :meth:`answer` then decides."""
        now = services.clock()
        answer = self._holding(asked, services, caller_allowed, now)
        if answer is None:
            return None
        session = services.sessions.held(asked.question[0], now)
        if session is None or (session.data is not answer.data and session.data != answer.data):
            return Later(session)  # to read it; or, changed, for answer_later to forget the answer (one miss)
        try:
            upstream = self._upstream(asked, answer, headers, services)
            if not answer.connector.prepare_from_memory(_agent(session.data), upstream):
                return Later(session)
        except ChannelgateError:
            return None
        sent = self._headers(answer, services, session.data, upstream, now)
        if _unsendable(sent, upstream):
            return None  # the full path refuses it (uvicorn's send)
        self._record(answer, services)
        self.immediate_hits += 1
        return sent

    def _holding(self, asked: Asked, services: Services, caller_allowed: bool, now: float) -> Answer | None:
        """The kept answer, if nothing it was decided from changed in this process (the session is checked
        after, by the caller)."""
        answer = self._answers.get(asked.question)
        if answer is None or not caller_allowed:
            return None
        point = services.policy
        if (
            point is None
            or point.engine.id != answer.engine_id
            or services.routes is not answer.routes
            or services.connectors.get(answer.channel) is not answer.connector
            or int(now // 60) != answer.minute
            or services.revived.checking()
        ):
            self._answers.pop(asked.question, None)
            return None
        return answer

    @staticmethod
    def _upstream(
        asked: Asked, answer: Answer, headers: Sequence[tuple[bytes, bytes]], services: Services
    ) -> UpstreamRequest:
        """The request whose credential the connector prepares, once the limits the full path checks first hold
        (the question's header size, room in the access log's queue); raises ``ChannelgateError`` otherwise."""
        check_header_size(headers, services.settings.server.max_header_bytes)
        services.audit.check_capacity()
        return UpstreamRequest(asked.question[1], answer.url, [])

    @staticmethod
    def _headers(
        answer: Answer, services: Services, data: SessionData, upstream: UpstreamRequest, now: float
    ) -> list[tuple[bytes, bytes]]:
        """The answer's headers, as the full path's Response(status_code=200) sends them: the length, the
        credential, the assertion, the rest."""
        assert services.signer is not None
        assertion = services.signer.sign(data.agent_id, data.user_name, data.groups, answer.channel, now)
        sent = [(b"content-length", b"0")]
        sent += [(name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in upstream.headers]
        sent.append((services.settings.assertion.header.lower().encode("latin-1"), assertion.encode("latin-1")))
        sent.extend(answer.tail)
        return sent

    def _record(self, answer: Answer, services: Services) -> None:
        """The request's access-log record and metrics; a hit once its record is queued (a full queue raises)."""
        services.audit.submit_row((utcnow(), "request", new_request_id(), *answer.row_tail))
        self.hits += 1
        for counter in answer.counters:
            counter.inc()

    def _stale(self, question: Question) -> None:
        self._answers.pop(question, None)
        self.misses += 1
