"""``kind = "seats"``: each agent gets their own seat at the vendor, created through its REST admin API, and
the seat's own API key is what the gateway injects upstream for that agent.

The admin key is the channel's vault credential; it never leaves the gateway. A seat's API key is shown by the
vendor once, so it is sealed into ``agent_secrets`` at once (every replica reads it there) and cached per
replica, so the proxy's hot path does not touch the database. The seat is created on the first request of an
agent who has none (one creation per agent and replica, however many requests arrive at once), or ahead of
time by ``provision``. A vendor answering 409 (the seat exists, its key unknown here) gets its key rotated,
since the only way to hold a working key is to mint one.

On deprovisioning the seat is disabled (``PATCH active=false``), which the vendor applies to every key at once;
``verify_no_access`` then reads the seat back and, with ``key_check_url``, proves the old key is refused;
``remove`` deletes the seat only with ``remove = "delete"``. The key stays sealed until the seat is deleted, so
any replica can revoke and verify what another obtained. A disabled seat is never re-enabled or given a new key
here: that is an administrator's decision at the vendor.
"""

from __future__ import annotations

import asyncio
import logging
import re
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import quote

from connectors.base import AgentRef, Capability, Outcome, StepContext, StepResult, UpstreamRequest
from connectors.context import ConnectorContext
from connectors.secret import Secret
from connectors.static import _RESERVED, _TOKEN
from connectors.tickets import TicketDesk, bearer
from connectors.vendor_http import Unreachable, VendorAnswer, call
from gateway.errors import AccessDenied, ConfigError, UpstreamError
from gateway.settings import SeatsChannelSettings

log = logging.getLogger(__name__)
T = TypeVar("T")

#: The name of the seat's API key in ``agent_secrets``.
SECRET_NAME = "api_key"  # noqa: S105 - a name in agent_secrets, not a secret
#: RFC 6750 §2.1 b64token, at least 16 characters: a key the vendor hands out must fit a header unchanged.
_API_KEY = re.compile(r"[A-Za-z0-9\-._~+/]{16,}=*")


@dataclass(frozen=True, slots=True)
class _Seat:
    id: str
    key: Secret
    how: str


@dataclass(frozen=True, slots=True)
class _Failure:
    outcome: Outcome
    detail: str
    #: The seat exists but is disabled: the agent must not get in, and we must not change that.
    disabled: bool = False


class SeatsConnector:
    def __init__(self, context: ConnectorContext) -> None:
        settings = context.settings
        if not isinstance(settings, SeatsChannelSettings):
            raise ConfigError(f"channel {context.channel!r}: the seats connector needs kind = 'seats' settings")
        self.channel = context.channel
        self._context = context
        self._settings = settings
        self._admin = str(settings.admin_url)
        self._header = settings.header_name if settings.inject == "header" and settings.header_name else "Authorization"
        if not _TOKEN.fullmatch(self._header) or self._header.lower() in _RESERVED:
            raise ConfigError(f"channel {self.channel!r}: header_name {self._header!r} cannot carry a credential")
        self._tickets = TicketDesk.for_context(context, bearer)
        self.capabilities = frozenset(
            {Capability.PROVISION, Capability.INJECT, Capability.SEATS, Capability.VERIFY}
            | ({Capability.TICKETS} if self._tickets is not None else set())
        )
        #: Per replica: agent id → the seat key last seen to work (or just obtained).
        self._keys: dict[str, Secret] = {}
        self._loading: dict[str, asyncio.Future[Secret]] = {}
        self._refreshing: dict[str, asyncio.Future[Secret | None]] = {}

    @classmethod
    def from_context(cls, context: ConnectorContext) -> SeatsConnector:
        return cls(context)

    def __repr__(self) -> str:
        return f"SeatsConnector(channel={self.channel!r}, admin_url={self._admin!r})"

    # -- the proxy's side: inject, and recover from a 401 once -------------------------------------------------

    def injected_headers(self) -> tuple[str, ...]:
        return (self._header,)

    def _present(self, key: Secret) -> str:
        return f"Bearer {key.reveal()}" if self._settings.inject == "bearer" else key.reveal()

    async def prepare(self, agent: AgentRef, request: UpstreamRequest) -> None:
        key = self._keys.get(agent.agent_id)
        if key is None:
            key = await _once(self._loading, agent.agent_id, lambda: self._load_or_provision(agent))
        request.set_header(self._header, self._present(key))

    async def on_upstream_unauthorized(self, agent: AgentRef, request: UpstreamRequest) -> bool:
        """Use a key another replica stored or rotated; otherwise rotate once. A disabled seat's refusal is a
        403, not a 401, so it never comes here and never gets a new key."""
        sent = request.header(self._header)
        key = self._keys.get(agent.agent_id)
        if key is None or self._present(key) == sent:
            key = await _once(self._refreshing, agent.agent_id, lambda: self._refresh(agent, sent))
        if key is None:
            return False
        request.set_header(self._header, self._present(key))
        return request.header(self._header) != sent

    async def _load_or_provision(self, agent: AgentRef) -> Secret:
        stored = await self._context.secrets.get(agent.agent_id, SECRET_NAME)
        if stored is not None:
            self._keys[agent.agent_id] = stored.value
            return stored.value
        # A fresh key per lazy attempt: a deterministic one would replay a long-dead answer after a re-hire.
        result = await self._provision(agent, f"{self.channel}:{agent.agent_id}:first-use:{uuid.uuid4().hex}", True)
        if isinstance(result, _Failure):
            if result.disabled:
                raise AccessDenied(f"Your seat at {self.channel} is disabled; an administrator has to enable it.")
            raise UpstreamError(
                f"Your seat at {self.channel} could not be set up; try again in a moment.",
                detail=f"channel {self.channel!r} could not give {agent.user_name} a seat: {result.detail}",
            )
        log.info("seats: %s for %s at channel %s (first use)", result.how, agent.user_name, self.channel)
        return result.key

    async def _refresh(self, agent: AgentRef, sent: str | None) -> Secret | None:
        stored = await self._context.secrets.get(agent.agent_id, SECRET_NAME)
        if stored is not None and self._present(stored.value) != sent:
            self._keys[agent.agent_id] = stored.value
            return stored.value
        rotated = await self._rotate(agent, f"{self.channel}:{agent.agent_id}:unauthorized:{uuid.uuid4().hex}")
        if isinstance(rotated, _Failure):
            log.warning(
                "seats: the key of %s at channel %s was refused and could not be rotated: %s",
                agent.user_name,
                self.channel,
                rotated.detail,
            )
            return None
        return rotated.key

    # -- the admin API ---------------------------------------------------------------------------------------

    def _seat_url(self, agent: AgentRef) -> str:
        return f"{self._admin}seats/{quote(agent.user_name, safe='')}"

    async def _call(
        self, method: str, url: str, *, json_body: Any = None, idempotency_key: str | None = None
    ) -> VendorAnswer | Unreachable:
        authorization = bearer(await self._context.credential())
        return await call(
            self._context.http(),
            method,
            url,
            authorization=authorization,
            json_body=json_body,
            idempotency_key=idempotency_key,
        )

    def _failure(self, answer: VendorAnswer | Unreachable, doing: str) -> _Failure:
        if isinstance(answer, Unreachable):
            return _Failure(Outcome.RETRY, f"{doing}: the seats admin API gave no answer: {answer.describe()}")
        if answer.status in (401, 403):
            return _Failure(
                Outcome.FAILED,
                f"{doing}: the seats admin API refused the admin key ({answer.describe()}); store the right one "
                f"with: channelgate channels set-credential {self.channel}",
            )
        if answer.outcome is Outcome.RETRY:
            return _Failure(Outcome.RETRY, f"{doing}: the seats admin API answered {answer.describe()}")
        return _Failure(Outcome.FAILED, f"{doing}: the seats admin API refused ({answer.describe()})")

    async def _keep(self, agent: AgentRef, answer: VendorAnswer, how: str) -> _Seat | _Failure:
        """Seal the key the vendor just showed (it will not show it again), then cache it."""
        key, seat_id = answer.field("apiKey"), answer.field("id")
        if not isinstance(key, str) or not _API_KEY.fullmatch(key) or not isinstance(seat_id, str):
            return _Failure(Outcome.FAILED, "the seats admin API answered without a usable id and apiKey")
        secret = Secret(key)
        await self._context.secrets.put(
            agent.agent_id, SECRET_NAME, secret, {"seat_id": seat_id, "user_name": agent.user_name}
        )
        self._keys[agent.agent_id] = secret
        return _Seat(seat_id, secret, how)

    async def _provision(self, agent: AgentRef, idempotency_key: str, first_use: bool) -> _Seat | _Failure:
        body: dict[str, str] = {"userName": agent.user_name}
        if agent.email:
            body["email"] = agent.email
        answer = await self._call("POST", f"{self._admin}seats", json_body=body, idempotency_key=idempotency_key)
        if isinstance(answer, VendorAnswer) and answer.status == 201:
            return await self._keep(agent, answer, "seat created")
        if not (isinstance(answer, VendorAnswer) and answer.status == 409):
            return self._failure(answer, "creating the seat")
        seat = answer.field("seat")
        if not isinstance(seat, dict) or seat.get("active") is not True:
            return _Failure(
                Outcome.FAILED,
                f"the seat of {agent.user_name} exists but is disabled at the vendor; enable it there (or delete "
                "it) before provisioning again",
                disabled=True,
            )
        if first_use:
            # Another replica may have created it a moment ago: its key is as good as a rotated one, and
            # rotating would break that replica's key.
            stored = await self._context.secrets.get(agent.agent_id, SECRET_NAME)
            if stored is not None:
                self._keys[agent.agent_id] = stored.value
                return _Seat(str(seat.get("id")), stored.value, "seat existed; key from another replica")
        return await self._rotate(agent, f"{idempotency_key}:rotate")

    async def _rotate(self, agent: AgentRef, idempotency_key: str) -> _Seat | _Failure:
        answer = await self._call("POST", f"{self._seat_url(agent)}/keys", idempotency_key=idempotency_key)
        if isinstance(answer, VendorAnswer) and answer.ok:
            return await self._keep(agent, answer, "seat existed; key rotated")
        if isinstance(answer, VendorAnswer) and answer.field("error") == "seat_disabled":
            return _Failure(Outcome.FAILED, f"the seat of {agent.user_name} is disabled at the vendor", disabled=True)
        return self._failure(answer, "rotating the seat key")

    # -- the deprovisioning pipeline's steps ------------------------------------------------------------------

    def _result(self, step: str, outcome: Outcome, detail: str, reference: str | None = None) -> StepResult:
        return StepResult(self.channel, step, outcome, vendor_reference=reference, detail=detail)

    async def provision(self, agent: AgentRef, ctx: StepContext) -> StepResult:
        result = await self._provision(agent, ctx.idempotency_key, False)
        if isinstance(result, _Failure):
            return self._result("provision", result.outcome, result.detail)
        return self._result("provision", Outcome.DONE, f"{result.how} for {agent.user_name}", result.id)

    async def revoke(self, agent: AgentRef, ctx: StepContext) -> StepResult:
        """Disable the seat: the vendor then refuses every key it ever had, whichever replica holds a copy."""
        self._keys.pop(agent.agent_id, None)
        answer = await self._call(
            "PATCH", self._seat_url(agent), json_body={"active": False}, idempotency_key=ctx.idempotency_key
        )
        if isinstance(answer, VendorAnswer) and answer.status == 404:
            return self._result(
                "revoke", Outcome.DONE, f"{agent.user_name} has no seat at the vendor: nothing to disable"
            )
        if not (isinstance(answer, VendorAnswer) and answer.ok):
            failure = self._failure(answer, "disabling the seat")
            return self._result("revoke", failure.outcome, failure.detail)
        seat_id = answer.field("id")
        reference = seat_id if isinstance(seat_id, str) else None
        return self._result("revoke", Outcome.DONE, f"seat of {agent.user_name} disabled", reference)

    async def verify_no_access(self, agent: AgentRef, ctx: StepContext) -> StepResult:
        """Done only when the vendor says the seat is disabled or gone and (with ``key_check_url``) the old key
        is refused; "access remains" when the seat reads active, whoever enabled it."""
        step = "verify_no_access"
        answer = await self._call("GET", self._seat_url(agent))
        if isinstance(answer, VendorAnswer) and answer.status == 404:
            state, reference = f"{agent.user_name} has no seat at the vendor", None
        elif isinstance(answer, VendorAnswer) and answer.ok:
            seat_id = answer.field("id")
            reference = seat_id if isinstance(seat_id, str) else None
            if answer.field("active") is not False:
                remains = f"access remains: the seat of {agent.user_name} is active at the vendor"
                return self._result(step, Outcome.FAILED, remains, reference)
            since = answer.field("disabledAt")
            state = f"the seat of {agent.user_name} is disabled" + (
                f" (since {since})" if isinstance(since, str) else ""
            )
        else:
            failure = self._failure(answer, "reading the seat")
            return self._result(step, failure.outcome, failure.detail)
        checked = await self._check_old_key(agent)
        if isinstance(checked, _Failure):
            return self._result(step, checked.outcome, checked.detail, reference)
        return self._result(step, Outcome.DONE, f"{state}; {checked}", reference)

    async def _check_old_key(self, agent: AgentRef) -> str | _Failure:
        """Present the agent's last key to the console's key check (no side effect): it must be refused."""
        if self._settings.key_check_url is None:
            return "no key_check_url to try the old key at"
        stored = await self._context.secrets.get(agent.agent_id, SECRET_NAME)
        if stored is None:
            return "no key of theirs is held here to try"
        answer = await call(
            self._context.http(),
            "GET",
            str(self._settings.key_check_url),
            authorization=(self._header, self._present(stored.value)),
        )
        if isinstance(answer, VendorAnswer) and answer.status in (401, 403):
            return "their last key is refused"
        if isinstance(answer, VendorAnswer) and answer.ok:
            return _Failure(Outcome.FAILED, f"access remains: the last key of {agent.user_name} is still accepted")
        if answer.outcome is Outcome.RETRY:
            return _Failure(Outcome.RETRY, f"trying the old key: no usable answer: {answer.describe()}")
        return _Failure(
            Outcome.FAILED,
            f"trying the old key: the key check answered {answer.describe()}; check key_check_url of {self.channel}",
        )

    async def remove(self, agent: AgentRef, ctx: StepContext) -> StepResult:
        if self._settings.remove != "delete":
            return self._result("remove", Outcome.NOT_APPLICABLE, "remove = 'disable': the seat stays, disabled")
        stored = await self._context.secrets.get(agent.agent_id, SECRET_NAME)
        seat_id = stored.meta.get("seat_id") if stored is not None else None
        reference = seat_id if isinstance(seat_id, str) else None
        answer = await self._call("DELETE", self._seat_url(agent), idempotency_key=ctx.idempotency_key)
        if isinstance(answer, VendorAnswer) and answer.status == 404:
            detail = f"{agent.user_name} had no seat left at the vendor"
        elif isinstance(answer, VendorAnswer) and answer.ok:
            detail = f"seat of {agent.user_name} deleted"
        else:
            failure = self._failure(answer, "deleting the seat")
            return self._result("remove", failure.outcome, failure.detail, reference)
        # Only now is the key worthless everywhere: the seat it opened no longer exists.
        await self._context.secrets.delete(agent.agent_id, SECRET_NAME)
        self._keys.pop(agent.agent_id, None)
        return self._result("remove", Outcome.DONE, detail, reference)

    async def hand_over(self, agent: AgentRef, successor: AgentRef | None, ctx: StepContext) -> StepResult:
        if self._tickets is None:
            return self._result("hand_over", Outcome.NOT_APPLICABLE, "no ticket API is configured for this channel")
        return await self._tickets.hand_over(agent, successor, ctx)

    async def on_upstream_response(self, agent: AgentRef, status: int, headers: list[tuple[str, str]]) -> None:
        return None

    async def forget(self, agent_id: str) -> None:
        self._keys.pop(agent_id, None)

    async def aclose(self) -> None:
        self._keys.clear()


async def _once(flights: dict[str, asyncio.Future[T]], agent_id: str, start: Callable[[], Awaitable[T]]) -> T:
    """Run ``start`` once per agent at a time: concurrent callers share its result (or its error). Shielded, so
    one caller giving up does not cancel the work the others wait for."""
    flight = flights.get(agent_id)
    if flight is None:
        flight = asyncio.ensure_future(start())
        flights[agent_id] = flight
        flight.add_done_callback(lambda done: _landed(flights, agent_id, done))
    return await asyncio.shield(flight)


def _landed(flights: dict[str, asyncio.Future[T]], agent_id: str, done: asyncio.Future[T]) -> None:
    if flights.get(agent_id) is done:
        del flights[agent_id]
    if not done.cancelled():
        done.exception()  # retrieved: a failure every waiter already saw is not "never retrieved"
