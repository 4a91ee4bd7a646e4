"""Cookie-jar login (``kind = "cookie_jar"``): the gateway signs in to a legacy console's form as the agent and
keeps the console's cookies server-side, so the browser never holds the console session (issue 4).

Per agent and channel, sealed by the vault in ``agent_secrets`` and shared by every replica: the agent's console
password (``password``, stored by ``channelgate channels set-agent-password``) and every jar a login obtained
(``cookie_jar/<id>``). ``prepare`` sends the jar as the upstream ``Cookie`` header (the proxy has dropped the
browser's cookies for the channel): from this replica's memory, else the newest stored jar (another replica's
login), else a form login, one at a time per agent. ``on_upstream_response`` takes every ``Set-Cookie`` out of the
console's answer and into the jar (RFC 6265 §5.3, connectors/console_cookies.py), storing it when it changed.
``on_upstream_unauthorized`` (a 401, or a redirect to the login form) adopts a jar another request obtained in
the meantime, else logs in again and logs the refused jar out — but not when the session a login obtained less
than ``RELOGIN_FLOOR_SECONDS`` ago is refused as it was, so a page that always answers 401 does not become a login
per request. A refused password is not tried
again for ``REFUSED_BACKOFF_SECONDS`` unless it is stored anew, so a wrong password cannot lock the console
account by repetition.

Each login is a row of its own, so two replicas logging in at the same moment both leave a jar for ``revoke``,
which logs every stored jar out (``Idempotency-Key`` per jar) and then forgets it: the console never keeps a
session the gateway lost track of. ``verify_no_access`` asks the console's session listing, the only proof
that no session survived. ``remove`` deletes the stored password.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from urllib.parse import urljoin, urlsplit
from weakref import WeakValueDictionary

import aiohttp

from connectors.base import AgentRef, Capability, Outcome, StepContext, StepResult, UpstreamRequest
from connectors.console_cookies import CookieJar
from connectors.context import AgentSecrets, AgentSecretValue, ConnectorContext, CredentialLoader, UnreadableSecret
from connectors.secret import Secret
from connectors.tickets import TicketDesk
from connectors.vendor_http import Unreachable, VendorAnswer, call
from gateway.errors import UpstreamError, VaultError
from gateway.settings import CookieJarChannelSettings
from gateway.timeutil import utcnow

log = logging.getLogger(__name__)

PASSWORD = "password"  # noqa: S105 - the name of the agent_secrets row, not a password
JAR_PREFIX = "cookie_jar/"
RELOGIN_FLOOR_SECONDS = 5.0
REFUSED_BACKOFF_SECONDS = 30.0
MAX_CACHED_AGENTS = 10_000
REDIRECTS = frozenset({301, 302, 303, 307, 308})


class ConsoleLoginFailed(UpstreamError):
    """The console refused the stored password, or none is stored: answered with what an administrator must do,
    never retried in a loop."""

    code = "console_login_failed"


def login_redirect(status: int, location: str | None, request_url: str, login_path: str) -> bool:
    """Whether an answer to ``request_url`` is a redirect to the console's login form (its session is gone):
    ``Location`` resolved against the request (RFC 9110 §10.2.2), compared on the path."""
    if status not in REDIRECTS or not location:
        return False
    return urlsplit(urljoin(request_url, location)).path == login_path


@dataclass(frozen=True, slots=True)
class HeldJar:
    """A jar and the ``agent_secrets`` row it is stored in."""

    name: str
    jar: CookieJar
    updated_at: datetime | None = None


def _set_cookies(headers: list[tuple[str, str]]) -> list[str]:
    """Remove every ``Set-Cookie`` from ``headers`` in place and return their values."""
    taken = [value for name, value in headers if name.lower() == "set-cookie"]
    if taken:
        headers[:] = [(name, value) for name, value in headers if name.lower() != "set-cookie"]
    return taken


def _digests(pairs: Iterable[str]) -> frozenset[str]:
    """Cookies remembered only by their SHA-256, so no attribute of the connector holds a session."""
    return frozenset(hashlib.sha256(pair.encode()).hexdigest() for pair in pairs)


class CookieJarConnector:
    def __init__(
        self,
        channel: str,
        settings: CookieJarChannelSettings,
        secrets_: AgentSecrets,
        credential: CredentialLoader,
        http: Callable[[], aiohttp.ClientSession],
        *,
        tickets: TicketDesk | None = None,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.channel = channel
        self._settings = settings
        self._secrets = secrets_
        self._credential = credential
        self._http = http
        self._tickets = tickets
        #: Wall time for cookie expiry and monotonic time for the re-login floor and refusal back-off (tests move them).
        self.clock = clock
        self.monotonic = monotonic
        origin = urlsplit(str(settings.console_url))
        self._origin = f"{origin.scheme}://{origin.netloc}"
        capabilities = {Capability.INJECT, Capability.COOKIE_JAR, Capability.CONSOLE_LOGOUT}
        if settings.sessions_path:
            capabilities.add(Capability.VERIFY)
        if tickets is not None:
            capabilities.add(Capability.TICKETS)
        self.capabilities = frozenset(capabilities)
        self._jars: OrderedDict[str, HeldJar] = OrderedDict()
        self._locks: WeakValueDictionary[str, asyncio.Lock] = WeakValueDictionary()
        #: hash((agent_id, Cookie header sent)) → the jar's row: which login a refused request used, even after
        #: the refusal's own Set-Cookie changed that jar (a console that answers with a new anonymous session).
        self._sent_rows: OrderedDict[int, str] = OrderedDict()
        #: agent_id → (monotonic time of this replica's last login for the agent, digests of the cookies it got).
        self._last_login: dict[str, tuple[float, frozenset[str]]] = {}
        #: agent_id → (the refused password's updated_at, monotonic time until which it is not tried again).
        self._refused: dict[str, tuple[datetime, float]] = {}

    @classmethod
    def from_context(cls, context: ConnectorContext) -> CookieJarConnector:
        assert isinstance(context.settings, CookieJarChannelSettings)
        return cls(
            context.channel,
            context.settings,
            context.secrets,
            context.credential,
            context.http,
            tickets=TicketDesk.for_context(context),
        )

    def __repr__(self) -> str:
        return f"CookieJarConnector(channel={self.channel!r}, console={self._origin!r})"

    @property
    def login_path(self) -> str:
        return self._settings.login_path

    def injected_headers(self) -> tuple[str, ...]:
        return ("Cookie",)

    # --- the proxied request --------------------------------------------------------------------------------

    def _lock(self, agent_id: str) -> asyncio.Lock:
        lock = self._locks.get(agent_id)
        if lock is None:
            lock = self._locks[agent_id] = asyncio.Lock()
        return lock

    def _remember(self, agent_id: str, held: HeldJar) -> HeldJar:
        self._jars[agent_id] = held
        while len(self._jars) > MAX_CACHED_AGENTS:
            self._jars.popitem(last=False)
        return held

    def _present(self, agent_id: str, request: UpstreamRequest, held: HeldJar) -> None:
        header = held.jar.header(request.url, self.clock(), origin=self._origin)
        if header:
            request.set_header("Cookie", header)
        else:
            request.headers[:] = [(n, v) for n, v in request.headers if n.lower() != "cookie"]
        self._sent_rows[hash((agent_id, header))] = held.name
        while len(self._sent_rows) > 4 * MAX_CACHED_AGENTS:
            self._sent_rows.popitem(last=False)

    async def prepare(self, agent: AgentRef, request: UpstreamRequest) -> None:
        held = self._jars.get(agent.agent_id)
        if held is None or not held.jar.live(self.clock()):
            held = await self._usable_jar(agent, stale=held)
        self._present(agent.agent_id, request, held)

    def prepare_from_memory(self, agent: AgentRef, request: UpstreamRequest) -> bool:
        held = self._jars.get(agent.agent_id)
        if held is None or not held.jar.live(self.clock()):
            return False
        self._present(agent.agent_id, request, held)
        return True

    async def _usable_jar(self, agent: AgentRef, stale: HeldJar | None) -> HeldJar:
        async with self._lock(agent.agent_id):
            held = self._jars.get(agent.agent_id)
            if held is not None and held is not stale and held.jar.live(self.clock()):
                return held  # another request of this agent got one while this one waited
            stored = await self._newest_stored(agent.agent_id)
            if stored is not None:
                return self._remember(agent.agent_id, stored)
            return await self._login(agent)

    async def on_upstream_response(self, agent: AgentRef, status: int, headers: list[tuple[str, str]]) -> None:
        """Every ``Set-Cookie`` goes into the agent's jar, none to the browser (RFC 6265 §5.3 storage model)."""
        lines = _set_cookies(headers)
        if not lines:
            return
        async with self._lock(agent.agent_id):
            held = self._jars.get(agent.agent_id) or await self._newest_stored(agent.agent_id)
            if held is None:
                return  # nothing of ours to update: the cookies are dropped, never passed on
            merged = held.jar.merge(lines, self.clock())
            if merged == held.jar:
                return
            if merged.live(self.clock()):
                await self._secrets.put(agent.agent_id, held.name, Secret(merged.dumps()))
                self._remember(agent.agent_id, HeldJar(held.name, merged))
            else:
                # The console deleted its session cookie. The stored row keeps the cookies it had: this answer
                # may belong to an older session than the cached jar, and a row is dropped only once a logout
                # (the next re-login's, or revoke's) has been answered, so no live session is ever forgotten.
                self._jars.pop(agent.agent_id, None)

    async def on_upstream_unauthorized(self, agent: AgentRef, request: UpstreamRequest) -> bool:
        """The console refused the jar that was sent: use another login's jar if another request or replica got
        one, else log in again and log the refused jar out. A session that was refused with every cookie its
        login obtained still in place, within ``RELOGIN_FLOOR_SECONDS`` of that login, is not replaced: the
        console refuses fresh sessions too, and another login would not help."""
        sent = request.header("Cookie") or ""
        async with self._lock(agent.agent_id):
            now = self.clock()
            sent_row = self._sent_rows.get(hash((agent.agent_id, sent)))
            held = self._jars.get(agent.agent_id)
            candidates = {h.name: h for h in (await self._newest_stored(agent.agent_id), held) if h is not None}
            for candidate in candidates.values():
                another = (
                    candidate.name != sent_row
                    if sent_row
                    else candidate.jar.header(request.url, now, origin=self._origin) != sent
                )
                if another and candidate.jar.live(now):
                    self._present(agent.agent_id, request, self._remember(agent.agent_id, candidate))
                    return True
            if self._fresh_session_refused(agent.agent_id, sent):
                return False
            fresh = await self._login(agent)
            for old in candidates.values():
                await self._retire(agent.agent_id, old)
            self._present(agent.agent_id, request, fresh)
            return True

    def _fresh_session_refused(self, agent_id: str, sent: str) -> bool:
        last = self._last_login.get(agent_id)
        if last is None or self.monotonic() - last[0] >= RELOGIN_FLOOR_SECONDS:
            return False
        return last[1] <= _digests(pair.strip() for pair in sent.split(";"))

    # --- the console's form login and logout ----------------------------------------------------------------

    async def _stored(self, agent_id: str) -> list[HeldJar]:
        rows: Sequence[AgentSecretValue] = await self._secrets.list(agent_id)
        return [
            HeldJar(row.name, CookieJar.loads(row.value.reveal()), row.updated_at)
            for row in rows
            if row.name.startswith(JAR_PREFIX)
        ]

    async def _unreadable_jars(self, agent_id: str) -> list[str]:
        """The rows of jars sealed under a removed vault key (left out of ``_stored``)."""
        unreadable = (await self._secrets.read_all(agent_id))[1]
        return [row.name for row in unreadable if row.name.startswith(JAR_PREFIX)]

    async def _newest_stored(self, agent_id: str) -> HeldJar | None:
        now = self.clock()
        live = [held for held in await self._stored(agent_id) if held.jar.live(now)]
        return max(live, key=lambda held: held.updated_at.timestamp() if held.updated_at else 0.0, default=None)

    def _refusal(self, agent: AgentRef) -> ConsoleLoginFailed:
        return ConsoleLoginFailed(
            f"The {self.channel} console refused the password channelgate holds for {agent.user_name}. "
            f"An administrator stores the right one with: "
            f"channelgate channels set-agent-password {self.channel} {agent.user_name}",
        )

    async def _login(self, agent: AgentRef) -> HeldJar:
        """Sign in with the console's login form as the agent: GET it first (consoles that bind the form to a
        pre-login session or cookie get it), then POST it with those cookies. A success is a redirect away from
        the form leaving a live jar (the POST/redirect/GET every form login answers with, RFC 9110 §15.4.4)."""
        password = await self._secrets.lookup(agent.agent_id, PASSWORD)
        if isinstance(password, UnreadableSecret):
            raise ConsoleLoginFailed(
                f"The {self.channel} console password channelgate holds for {agent.user_name} is sealed under a "
                f"vault key that is no longer configured. An administrator stores it again with: "
                f"channelgate channels set-agent-password {self.channel} {agent.user_name}"
            )
        if password is None:
            raise ConsoleLoginFailed(
                f"channelgate holds no {self.channel} console password for {agent.user_name}. An administrator "
                f"stores it with: channelgate channels set-agent-password {self.channel} {agent.user_name}"
            )
        refused = self._refused.get(agent.agent_id)
        if refused is not None and refused[0] == password.updated_at and self.monotonic() < refused[1]:
            raise self._refusal(agent)
        url = self._origin + self._settings.login_path
        form = {self._settings.username_field: agent.user_name, self._settings.password_field: password.value.reveal()}
        http = self._http()
        try:
            async with http.get(url, allow_redirects=False) as page:
                jar = CookieJar().merge(page.headers.getall("Set-Cookie", []), self.clock())
            cookie = {"Cookie": header} if (header := jar.header(url, self.clock(), origin=self._origin)) else None
            async with http.post(url, data=form, headers=cookie, allow_redirects=False) as response:
                status, location = response.status, response.headers.get("Location")
                lines = response.headers.getall("Set-Cookie", [])
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise UpstreamError(
                f"The {self.channel} console could not be reached to sign you in; try again shortly.",
                detail=f"login: {type(exc).__name__}",
            ) from None
        if status >= 500 or status in (408, 429):
            raise UpstreamError(
                f"The {self.channel} console failed while signing you in; try again shortly.",
                detail=f"login answered HTTP {status}",
            )
        now = self.clock()
        jar = jar.merge(lines, now)
        if status not in REDIRECTS or not jar.live(now) or login_redirect(status, location, url, self.login_path):
            self._refused[agent.agent_id] = (password.updated_at, self.monotonic() + REFUSED_BACKOFF_SECONDS)
            log.warning("console login refused: channel=%s agent=%s status=%s", self.channel, agent.agent_id, status)
            raise self._refusal(agent)
        self._refused.pop(agent.agent_id, None)
        held = HeldJar(JAR_PREFIX + secrets.token_hex(8), jar)
        await self._secrets.put(agent.agent_id, held.name, Secret(jar.dumps()), {"obtained_at": utcnow().isoformat()})
        self._last_login[agent.agent_id] = (self.monotonic(), _digests(f"{c.name}={c.value}" for c in jar.cookies))
        return self._remember(agent.agent_id, held)

    async def _logout(self, held: HeldJar, idempotency_key: str) -> VendorAnswer | Unreachable:
        url = self._origin + self._settings.logout_path
        cookie = held.jar.header(url, self.clock(), origin=self._origin)
        return await call(self._http(), "POST", url, authorization=("Cookie", cookie), idempotency_key=idempotency_key)

    async def _retire(self, agent_id: str, held: HeldJar) -> None:
        """Log out a jar the console refused and forget it; kept for ``revoke`` when the console did not answer."""
        answer = await self._logout(held, f"retire:{held.name}")
        if isinstance(answer, VendorAnswer) and answer.status < 500:
            await self._secrets.delete(agent_id, held.name)

    # --- deprovisioning -------------------------------------------------------------------------------------

    def _result(self, step: str, outcome: Outcome, detail: str) -> StepResult:
        return StepResult(self.channel, step, outcome, detail=detail)

    async def provision(self, agent: AgentRef, ctx: StepContext) -> StepResult:
        return self._result(
            "provision",
            Outcome.NOT_APPLICABLE,
            "the console's accounts are its own; the gateway holds the agent's password (set-agent-password)",
        )

    async def revoke(self, agent: AgentRef, ctx: StepContext) -> StepResult:
        """Log out every console session the gateway holds for the agent, then forget its jar."""
        async with self._lock(agent.agent_id):
            self._jars.pop(agent.agent_id, None)
            held = await self._stored(agent.agent_id)
            lost = await self._unreadable_jars(agent.agent_id)
            ended = 0
            for jar in held:
                answer = await self._logout(jar, f"{ctx.idempotency_key}/{jar.name}")
                if answer.outcome is Outcome.DONE or (isinstance(answer, VendorAnswer) and answer.status in REDIRECTS):
                    await self._secrets.delete(agent.agent_id, jar.name)
                    ended += 1
                    continue
                left = len(held) - ended
                return self._result(
                    "revoke",
                    answer.outcome,
                    f"console logout of {agent.user_name}: {answer.describe()}; {left} session(s) still to log out",
                )
        if lost:
            # Sealed under a removed vault key: nothing can log them out. The console's own listing (verify) is
            # the proof that none survived; without it a person has to look.
            unreadable = (
                f"{len(lost)} stored console session(s) are sealed under a vault key that is no longer configured "
                "and cannot be logged out"
            )
            if Capability.VERIFY not in self.capabilities:
                return self._result(
                    "revoke",
                    Outcome.FAILED,
                    f"logged out {ended} console session(s) of {agent.user_name}; {unreadable}: add the key back "
                    "to [vault] keys and retry, or end them at the console",
                )
            for row in lost:
                await self._secrets.delete(agent.agent_id, row)
            return self._result(
                "revoke",
                Outcome.DONE,
                f"logged out {ended} console session(s) of {agent.user_name}; {unreadable} (verification asks "
                "the console)",
            )
        if not held:
            return self._result("revoke", Outcome.DONE, f"no console session held for {agent.user_name}")
        return self._result("revoke", Outcome.DONE, f"logged out {ended} console session(s) of {agent.user_name}")

    async def verify_no_access(self, agent: AgentRef, ctx: StepContext) -> StepResult:
        """The console's own listing of the agent's live sessions must be empty."""
        step = "verify_no_access"
        if not self._settings.sessions_path:
            return self._result(step, Outcome.NOT_APPLICABLE, "the console lists no sessions (sessions_path unset)")
        try:
            credential = await self._credential()
        except VaultError as exc:
            return self._result(step, Outcome.FAILED, exc.message)
        answer = await call(
            self._http(),
            "GET",
            self._origin + self._settings.sessions_path,
            authorization=("Authorization", f"Bearer {credential.reveal()}"),
            params={"user": agent.user_name},
        )
        if isinstance(answer, Unreachable) or answer.outcome is not Outcome.DONE:
            detail = f"console session listing for {agent.user_name}: {answer.describe()}"
            if isinstance(answer, VendorAnswer) and answer.status in (401, 403):
                detail += f"; store the channel credential again (channelgate channels set-credential {self.channel})"
            return self._result(step, answer.outcome, detail)
        sessions = answer.field("sessions")
        if not isinstance(sessions, list):
            return self._result(step, Outcome.FAILED, "the console's session listing has no 'sessions' list")
        if sessions:
            return self._result(
                step, Outcome.FAILED, f"access remains: the console lists {len(sessions)} live session(s) for "
                f"{agent.user_name}"
            )  # fmt: skip
        return self._result(step, Outcome.DONE, f"the console lists no live session for {agent.user_name}")

    async def hand_over(self, agent: AgentRef, successor: AgentRef | None, ctx: StepContext) -> StepResult:
        if self._tickets is not None:
            return await self._tickets.hand_over(agent, successor, ctx)
        return self._result("hand_over", Outcome.NOT_APPLICABLE, "the channel has no ticket API configured")

    async def remove(self, agent: AgentRef, ctx: StepContext) -> StepResult:
        """Delete the stored console password, so the gateway can no longer sign in as the departed agent."""
        deleted = await self._secrets.delete(agent.agent_id, PASSWORD)
        detail = "stored console password deleted" if deleted else "no console password was stored"
        return self._result("remove", Outcome.DONE, detail)

    async def forget(self, agent_id: str) -> None:
        self._jars.pop(agent_id, None)

    async def aclose(self) -> None:
        self._jars.clear()
        self._last_login.clear()
        self._refused.clear()
