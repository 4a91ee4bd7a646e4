"""``kind = "seats"``: each agent gets their own seat at the vendor, created through its REST admin API, and
the seat's own API key is what the gateway injects upstream for that agent.

The admin key is the channel's vault credential; it never leaves the gateway. A seat's API key is shown by the
vendor once, so it is sealed into ``agent_secrets`` at once (every replica reads it there) and cached per
replica, so the proxy's hot path does not touch the database. The seat is created on the first request of an
agent who has none (one creation per agent and replica, however many requests arrive at once), or ahead of
time by ``provision``. A vendor answering 409 (the seat exists, its key unknown here) gets its key rotated,
since the only way to hold a working key is to mint one.

The seat is addressed by the name it was created under, recorded in its row's ``meta`` with its id (not by the
agent's current userName, which SCIM may have changed since), and that record outlives the key: a key sealed
under a vault key that was removed is replaced by rotating the recorded seat's key, never by a second seat. A key
refused less than ``REFUSAL_FLOOR_SECONDS`` after it was obtained is not rotated again (the 401 is passed on).

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
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import quote

from connectors.base import AgentRef, Capability, Outcome, StepContext, StepResult, UpstreamRequest
from connectors.context import AgentSecretValue, ConnectorContext
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
#: A key refused less than this long after it was obtained is not rotated: the console refuses fresh keys too (a
#: page that answers 401 to any key), and a rotation per request would also break the key of every other request.
REFUSAL_FLOOR_SECONDS = 5.0


@dataclass(frozen=True, slots=True)
class _Seat:
    id: str
    key: Secret
    how: str


@dataclass(frozen=True, slots=True)
class _Record:
    """The agent's seat as its ``agent_secrets`` row records it."""

    #: The seat's name at the vendor, the admin API's address for it (the agent's userName when it was made).
    name: str
    seat_id: str | None
    #: None when the row is sealed under a vault key that is no longer configured.
    key: Secret | None
    #: When the key was obtained (the row's last write), seconds since the epoch.
    obtained_at: float


@dataclass(frozen=True, slots=True)
class _Failure:
    outcome: Outcome
    detail: str
    #: The seat exists but is disabled: the agent must not get in, and we must not change that.
    disabled: bool = False


class SeatsConnector:
    def __init__(self, context: ConnectorContext, *, clock: Callable[[], float] = time.time) -> None:
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
        #: Wall time, for the refusal floor (tests move it).
        self.clock = clock
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

    def prepare_from_memory(self, agent: AgentRef, request: UpstreamRequest) -> bool:
        key = self._keys.get(agent.agent_id)
        if key is None:
            return False
        request.set_header(self._header, self._present(key))
        return True

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
        record = await self._record(agent)
        if record is not None and record.key is not None:
            self._keys[agent.agent_id] = record.key
            return record.key
        # A fresh key per lazy attempt: a deterministic one would replay a long-dead answer after a re-hire.
        attempt = f"{self.channel}:{agent.agent_id}:first-use:{uuid.uuid4().hex}"
        if record is not None:
            # The key is sealed under a removed vault key: the seat on record gets a new one, never a twin.
            log.warning("seats: the key of %s at channel %s is unreadable; rotating it", agent.user_name, self.channel)
            result = await self._rotate(agent, record, attempt)
        else:
            result = await self._provision(agent, attempt, True)
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
        record = await self._record(agent)
        if record is not None and record.key is not None:
            if self._present(record.key) != sent:
                self._keys[agent.agent_id] = record.key
                return record.key
            if self.clock() - record.obtained_at < REFUSAL_FLOOR_SECONDS:
                return None  # refused as soon as it was obtained: another key would not fare better
        attempt = f"{self.channel}:{agent.agent_id}:unauthorized:{uuid.uuid4().hex}"
        rotated = await self._rotate(agent, record or _Record(agent.user_name, None, None, 0.0), attempt)
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

    def _seat_url(self, name: str) -> str:
        return f"{self._admin}seats/{quote(name, safe='')}"

    async def _record(self, agent: AgentRef) -> _Record | None:
        """The seat recorded for the agent, read even when its key is not (the meta is not sealed)."""
        row = await self._context.secrets.lookup(agent.agent_id, SECRET_NAME)
        if row is None:
            return None
        name, seat_id = row.meta.get("user_name"), row.meta.get("seat_id")
        return _Record(
            name if isinstance(name, str) and name else agent.user_name,
            seat_id if isinstance(seat_id, str) else None,
            row.value if isinstance(row, AgentSecretValue) else None,
            row.updated_at.timestamp(),
        )

    async def _address(self, agent: AgentRef) -> tuple[_Record | None, str, _Failure | None]:
        """The recorded seat and the name to address it by. After a rename the name may since have gone to
        another seat: its id is compared first, so another person's seat is never disabled, rotated or deleted."""
        record = await self._record(agent)
        if record is None:
            return None, agent.user_name, None
        if record.name == agent.user_name or record.seat_id is None:
            return record, record.name, None
        answer = await self._call("GET", self._seat_url(record.name))
        if isinstance(answer, VendorAnswer) and (answer.status == 404 or answer.field("id") == record.seat_id):
            return record, record.name, None
        if isinstance(answer, VendorAnswer) and answer.ok:
            return (
                record,
                record.name,
                _Failure(
                    Outcome.FAILED,
                    f"the seat named {record.name!r} at the vendor is not the one made for {agent.user_name} (id "
                    f"{record.seat_id}); find that seat at the vendor",
                ),
            )
        return record, record.name, self._failure(answer, "reading the seat")

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

    async def _keep(self, agent: AgentRef, answer: VendorAnswer, how: str, name: str) -> _Seat | _Failure:
        """Seal the key the vendor just showed (it will not show it again) with the seat's id and name, the
        address every later call uses, then cache it."""
        key, seat_id, named = answer.field("apiKey"), answer.field("id"), answer.field("userName")
        if not isinstance(key, str) or not _API_KEY.fullmatch(key) or not isinstance(seat_id, str):
            return _Failure(Outcome.FAILED, "the seats admin API answered without a usable id and apiKey")
        secret = Secret(key)
        meta = {"seat_id": seat_id, "user_name": named if isinstance(named, str) and named else name}
        await self._context.secrets.put(agent.agent_id, SECRET_NAME, secret, meta)
        self._keys[agent.agent_id] = secret
        return _Seat(seat_id, secret, how)

    async def _provision(self, agent: AgentRef, idempotency_key: str, first_use: bool) -> _Seat | _Failure:
        body: dict[str, str] = {"userName": agent.user_name}
        if agent.email:
            body["email"] = agent.email
        answer = await self._call("POST", f"{self._admin}seats", json_body=body, idempotency_key=idempotency_key)
        if isinstance(answer, VendorAnswer) and answer.status == 201:
            return await self._keep(agent, answer, "seat created", agent.user_name)
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
        found = _Record(agent.user_name, str(seat.get("id")), None, 0.0)
        return await self._rotate(agent, found, f"{idempotency_key}:rotate", checked=True)

    async def _rotate(
        self, agent: AgentRef, record: _Record, idempotency_key: str, *, checked: bool = False
    ) -> _Seat | _Failure:
        """A new key for the seat ``record`` names (``checked``: just read at that name, no rename to check)."""
        if not checked and record.name != agent.user_name and record.seat_id is not None:
            _, _, mismatch = await self._address(agent)
            if mismatch is not None:
                return mismatch
        url = f"{self._seat_url(record.name)}/keys"
        answer = await self._call("POST", url, idempotency_key=idempotency_key)
        if isinstance(answer, VendorAnswer) and answer.ok:
            return await self._keep(agent, answer, "seat existed; key rotated", record.name)
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
        record, name, mismatch = await self._address(agent)
        if mismatch is not None:
            return self._result("revoke", mismatch.outcome, mismatch.detail)
        answer = await self._call(
            "PATCH", self._seat_url(name), json_body={"active": False}, idempotency_key=ctx.idempotency_key
        )
        if isinstance(answer, VendorAnswer) and answer.status == 404:
            gone = await self._gone(agent, record)
            if isinstance(gone, _Failure):
                return self._result("revoke", gone.outcome, gone.detail)
            return self._result("revoke", Outcome.DONE, f"{gone}: nothing to disable")
        if not (isinstance(answer, VendorAnswer) and answer.ok):
            failure = self._failure(answer, "disabling the seat")
            return self._result("revoke", failure.outcome, failure.detail)
        seat_id = answer.field("id")
        reference = seat_id if isinstance(seat_id, str) else None
        return self._result("revoke", Outcome.DONE, f"seat of {agent.user_name} ({name!r}) disabled", reference)

    async def _gone(self, agent: AgentRef, record: _Record | None) -> str | _Failure:
        """What a 404 at the seat's address proves. Without a record the gateway never made or held a seat for
        the agent. With one, the seat may have been renamed at the vendor rather than deleted: only the key
        check refusing its last key proves no access is left."""
        if record is None:
            return f"{agent.user_name} has no seat at the vendor"
        tried = await self._try_key(agent, record.key)
        if tried is True:
            return f"the seat {record.name!r} is not at the vendor and its last key is refused"
        if isinstance(tried, _Failure):
            return tried
        why = "no key_check_url is configured" if self._settings.key_check_url is None else "its key is unreadable"
        return _Failure(
            Outcome.FAILED,
            f"the seat made for {agent.user_name} as {record.name!r} (id {record.seat_id}) is not found at the "
            f"vendor under that name and {why} to prove it is gone: check at the vendor whether it was deleted "
            "or renamed",
        )

    async def verify_no_access(self, agent: AgentRef, ctx: StepContext) -> StepResult:
        """Done only when the vendor says the seat is disabled or gone and (with ``key_check_url``) the old key
        is refused; "access remains" when the seat reads active, whoever enabled it."""
        step = "verify_no_access"
        record = await self._record(agent)
        name = agent.user_name if record is None else record.name
        answer = await self._call("GET", self._seat_url(name))
        if isinstance(answer, VendorAnswer) and answer.status == 404:
            gone = await self._gone(agent, record)
            if isinstance(gone, _Failure):
                return self._result(step, gone.outcome, gone.detail)
            state, reference = gone, None
        elif isinstance(answer, VendorAnswer) and answer.ok:
            seat_id = answer.field("id")
            reference = seat_id if isinstance(seat_id, str) else None
            if record is not None and record.seat_id not in (None, seat_id) and name != agent.user_name:
                detail = f"the seat named {name!r} at the vendor is not the one made for {agent.user_name}"
                return self._result(step, Outcome.FAILED, f"{detail} (id {record.seat_id}); find it at the vendor")
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
        tried = await self._try_key(agent, None if record is None else record.key)
        if isinstance(tried, _Failure):
            return self._result(step, tried.outcome, tried.detail, reference)
        if tried is True:
            checked = "their last key is refused"
        elif self._settings.key_check_url is None:
            checked = "no key_check_url to try the old key at"
        else:
            checked = "no key of theirs is held here to try"
        return self._result(step, Outcome.DONE, f"{state}; {checked}", reference)

    async def _try_key(self, agent: AgentRef, key: Secret | None) -> bool | _Failure:
        """Present the agent's last key to the console's key check (no side effect): True when it is refused,
        False when there is nothing to try (no key_check_url, or no readable key)."""
        if self._settings.key_check_url is None or key is None:
            return False
        answer = await call(
            self._context.http(),
            "GET",
            str(self._settings.key_check_url),
            authorization=(self._header, self._present(key)),
        )
        if isinstance(answer, VendorAnswer) and answer.status in (401, 403):
            return True
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
        record, name, mismatch = await self._address(agent)
        reference = None if record is None else record.seat_id
        if mismatch is not None:
            return self._result("remove", mismatch.outcome, mismatch.detail, reference)
        answer = await self._call("DELETE", self._seat_url(name), idempotency_key=ctx.idempotency_key)
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
