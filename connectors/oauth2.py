"""Per-agent OAuth 2.0 tokens (``kind = "oauth2"``): obtained, cached, refreshed, revoked and verified gone.

The gateway is a confidential client of the channel's authorization server (``client_secret_basic``, RFC 6749
§2.3.1; the secret is the channel's vault credential). An agent's access token comes, in this order, from this
replica's memory, from ``agent_secrets`` (another replica may have obtained it), from the RFC 6749 §6 refresh
grant, or from an RFC 8693 token exchange of a freshly signed identity assertion for the channel. One lock per
agent makes concurrent requests wait for one token instead of each obtaining their own.

Every token obtained is stored sealed by the vault (``access:<id>``, ``refresh:<id>``; grant and expiry in ``meta``)
until the deprovisioning pipeline has revoked it (RFC 7009, refresh tokens first, §2.1) and introspection
(RFC 7662) has answered ``active: false`` for it, so any replica, or a restarted process, can end what another
obtained. Access-token rows are dropped on their own only an hour after the expiry the server stated.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal
from urllib.parse import urlencode, urlsplit
from weakref import WeakValueDictionary

import aiohttp

from connectors.base import AgentRef, Capability, Outcome, StepContext, StepResult, UpstreamRequest
from connectors.context import AgentSecretValue, ConnectorContext, UnreadableSecret
from connectors.oauth2_errors import CallFailed, client_authorization, client_secret_forms, token_error
from connectors.secret import Secret
from connectors.tickets import TicketDesk
from connectors.vendor_http import read_capped
from gateway.errors import ConfigError, UpstreamError
from gateway.settings import OAuth2ChannelSettings

log = logging.getLogger(__name__)

# RFC 8693 §2.1 / §3 identifiers (names, not secrets).
TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"  # noqa: S105
JWT_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:jwt"  # noqa: S105
ACCESS_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:access_token"  # noqa: S105
#: RFC 6749 §5.1 only recommends ``expires_in``; without it the token is treated as this short-lived.
ASSUMED_LIFETIME_SECONDS = 60.0
#: An access-token row is dropped this long after the expiry the server stated (slack for clock skew), so a
#: long session does not pile up rows for the pipeline to revoke.
EXPIRED_ROW_GRACE_SECONDS = 3600.0
MAX_CACHED_AGENTS = 10_000
#: An access token refused less than this long after it was obtained is not replaced: the console refuses fresh
#: tokens too (a page it answers 401 for any token), and a new one per request would only load the token endpoint.
REFUSAL_FLOOR_SECONDS = 5.0
#: Answers to token, revocation and introspection calls are small; a larger one is refused unread.
MAX_ANSWER_BYTES = 64 * 1024
_B64TOKEN = re.compile(r"[A-Za-z0-9\-._~+/]+=*")  # RFC 6750 §2.1: what a Bearer header can carry
Kind = Literal["access", "refresh"]


@dataclass(frozen=True, slots=True)
class _Token:
    """One stored token: the ``agent_secrets`` row ``name`` and what ``meta`` says about it (never the value)."""

    name: str
    kind: Kind
    value: Secret
    grant: str
    obtained_at: float
    expires_at: float | None = None
    revoked_at: float | None = None
    #: An access token the console answered 401 to, or a refresh token the server answered invalid_grant to.
    refused: bool = False

    @classmethod
    def from_row(cls, row: AgentSecretValue) -> _Token | None:
        meta = row.meta
        kind, grant = meta.get("kind"), meta.get("grant")
        if kind not in ("access", "refresh") or not isinstance(grant, str):
            return None
        return cls(
            row.name,
            kind,
            row.value,
            grant,
            _number(meta.get("obtained_at")) or 0.0,
            _number(meta.get("expires_at")),
            _number(meta.get("revoked_at")),
            bool(meta.get("refused", False)),
        )

    def meta(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "grant": self.grant,
            "obtained_at": self.obtained_at,
            "expires_at": self.expires_at,
            "revoked_at": self.revoked_at,
            "refused": self.refused,
        }

    @property
    def hint(self) -> str:
        """RFC 7009 §2.1 / RFC 7662 §2.1 ``token_type_hint``."""
        return f"{self.kind}_token"


def _number(value: object) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


class OAuth2Connector:
    """``kind = "oauth2"``: see the module docstring."""

    def __init__(self, context: ConnectorContext, *, clock: Callable[[], float] = time.time) -> None:
        if not isinstance(context.settings, OAuth2ChannelSettings):
            raise ConfigError(f"channel {context.channel!r}: the oauth2 connector needs kind = 'oauth2' settings")
        self.channel = context.channel
        self._context = context
        self._settings: OAuth2ChannelSettings = context.settings
        self._clock = clock
        self._cache: OrderedDict[str, _Token] = OrderedDict()
        self._locks: WeakValueDictionary[str, asyncio.Lock] = WeakValueDictionary()
        # Open tickets go through the channel's ticket API, which takes the channel credential as a Bearer token.
        self._tickets = TicketDesk.for_context(context)
        self.capabilities = frozenset(
            {Capability.INJECT, Capability.REVOKE_TOKENS, Capability.VERIFY}
            | ({Capability.TICKETS} if self._tickets is not None else set())
        )

    @classmethod
    def from_context(cls, context: ConnectorContext) -> OAuth2Connector:
        return cls(context)

    def __repr__(self) -> str:
        return f"OAuth2Connector(channel={self.channel!r}, client_id={self._settings.client_id!r})"

    def injected_headers(self) -> tuple[str, ...]:
        return ("Authorization",)

    # -- the proxy's side -------------------------------------------------------------------------------------

    async def prepare(self, agent: AgentRef, request: UpstreamRequest) -> None:
        """``Authorization: Bearer`` (RFC 6750 §2.1) with the agent's access token."""
        token = await self._access_token(agent)
        request.set_header("Authorization", f"Bearer {token.value.reveal()}")

    def prepare_from_memory(self, agent: AgentRef, request: UpstreamRequest) -> bool:
        cached = self._cache.get(agent.agent_id)
        if cached is None or not self._usable(cached, self._clock()):
            return False
        request.set_header("Authorization", f"Bearer {cached.value.reveal()}")
        return True

    async def on_upstream_unauthorized(self, agent: AgentRef, request: UpstreamRequest) -> bool:
        """The console refused the token (RFC 6750 §3.1 invalid_token): refresh, or exchange anew, once. A token
        obtained less than ``REFUSAL_FLOOR_SECONDS`` ago is kept and the 401 passed on."""
        sent = request.header("Authorization") or ""
        scheme, _, refused = sent.partition(" ")
        token = await self._access_token(agent, refused=refused.strip() if scheme.lower() == "bearer" else "")
        request.set_header("Authorization", f"Bearer {token.value.reveal()}")
        return request.header("Authorization") != sent

    async def on_upstream_response(self, agent: AgentRef, status: int, headers: list[tuple[str, str]]) -> None:
        return None

    def _usable(self, token: _Token, now: float) -> bool:
        margin = self._settings.refresh_margin_seconds
        return (
            token.kind == "access"
            and token.revoked_at is None
            and not token.refused
            and token.expires_at is not None
            and token.expires_at - margin > now
        )

    def _lock(self, agent_id: str) -> asyncio.Lock:
        lock = self._locks.get(agent_id)
        if lock is None:
            lock = self._locks[agent_id] = asyncio.Lock()
        return lock

    def _remember(self, agent_id: str, token: _Token) -> None:
        self._cache[agent_id] = token
        self._cache.move_to_end(agent_id)
        while len(self._cache) > MAX_CACHED_AGENTS:
            self._cache.popitem(last=False)

    async def _access_token(self, agent: AgentRef, *, refused: str | None = None) -> _Token:
        """A usable access token; ``refused`` (the value the console just answered 401 to) is never returned."""
        cached = self._cache.get(agent.agent_id)
        if refused is None and cached is not None and self._usable(cached, self._clock()):
            return cached
        async with self._lock(agent.agent_id):
            # Whoever held the lock before us may have obtained one already: concurrent requests share it.
            cached = self._cache.get(agent.agent_id)
            if cached is not None and self._usable(cached, self._clock()) and cached.value.reveal() != refused:
                return cached
            self._cache.pop(agent.agent_id, None)
            try:
                token = await self._obtain(agent, refused)
            except CallFailed as failure:
                # The message is shown to the agent; the detail (hosts, settings to check) goes to the access log.
                raise UpstreamError(
                    f"The {self.channel} console's sign-in service did not issue you an access token. Try again "
                    "in a moment; if it persists, tell your administrator.",
                    detail=f"channel {self.channel!r}: {failure.detail}",
                ) from None
            self._remember(agent.agent_id, token)
            return token

    async def _stored(self, agent_id: str) -> list[_Token]:
        """The agent's tokens; one sealed under a removed vault key is absent here (logged), so a request gets a
        fresh token instead of an error."""
        rows = await self._context.secrets.list(agent_id)
        return [token for row in rows if (token := _Token.from_row(row)) is not None]

    async def _unreadable(self, agent_id: str) -> str | None:
        """What the pipeline must report about tokens sealed under a removed vault key that may still be live
        (an access token past its stated expiry is not): they can be neither revoked nor introspected."""
        rows: list[UnreadableSecret] = (await self._context.secrets.read_all(agent_id))[1]
        now = self._clock()
        live = [
            row
            for row in rows
            if not (row.meta.get("kind") == "access" and (_number(row.meta.get("expires_at")) or now) < now)
            and row.meta.get("revoked_at") is None
        ]
        if not live:
            return None
        keys = ", ".join(sorted({repr(row.key_id) for row in live}))
        return (
            f"{len(live)} token(s) are sealed under vault key {keys}, which is not configured any more, so they "
            f"cannot be revoked or checked: add the key back to [vault] keys and retry, or end the agent's grants "
            "at the authorization server"
        )

    async def _obtain(self, agent: AgentRef, refused: str | None) -> _Token:
        stored = await self._stored(agent.agent_id)
        now = self._clock()
        if refused is None:
            usable = [token for token in stored if self._usable(token, now)]
            if usable:
                return max(usable, key=lambda token: token.expires_at or 0.0)
        else:
            for token in stored:
                if token.kind == "access" and not token.refused and token.value.reveal() == refused:
                    if now - token.obtained_at < REFUSAL_FLOOR_SECONDS:
                        return token  # sent again unchanged: the caller passes the 401 on
                    await self._put(agent.agent_id, replace(token, refused=True))
        refreshable = [t for t in stored if t.kind == "refresh" and t.revoked_at is None and not t.refused]
        for refresh in sorted(refreshable, key=lambda token: token.obtained_at, reverse=True):
            try:
                return await self._refresh(agent, refresh, stored)
            except CallFailed as failure:
                if failure.code != "invalid_grant":
                    raise
                # Rotated by another replica, expired or revoked at the server: kept for the pipeline to check.
                await self._put(agent.agent_id, replace(refresh, refused=True))
        return await self._exchange(agent, stored)

    async def _exchange(self, agent: AgentRef, stored: Sequence[_Token]) -> _Token:
        """RFC 8693 §2.1 with the gateway's assertion as subject token. It names the agent only: groups travel
        in each proxied request's own assertion, so a group change applies to the next request, not token."""
        if self._context.assertions is None:
            raise ConfigError(f"channel {self.channel!r}: this process signs no identity assertions to exchange")
        subject = self._context.assertions.sign(agent.agent_id, agent.user_name, frozenset(), self.channel, time.time())
        form = {
            "grant_type": TOKEN_EXCHANGE,
            "subject_token": subject,
            "subject_token_type": JWT_TOKEN_TYPE,
            "requested_token_type": ACCESS_TOKEN_TYPE,
        }
        if self._settings.scope:
            form["scope"] = self._settings.scope
        answer = await self._token_call(form, sent=(subject,))
        return await self._keep(agent, answer, secrets.token_hex(8), stored)

    async def _refresh(self, agent: AgentRef, refresh: _Token, stored: Sequence[_Token]) -> _Token:
        """RFC 6749 §6. A new refresh token replaces the old one, which the client must discard (§6)."""
        form = {"grant_type": "refresh_token", "refresh_token": refresh.value.reveal()}
        answer = await self._token_call(form, sent=(refresh.value.reveal(),))
        return await self._keep(agent, answer, refresh.grant, stored, replaces=refresh)

    async def _token_call(self, form: Mapping[str, str], sent: Sequence[str]) -> Mapping[str, Any]:
        answer = await self._post("token endpoint", self._settings.token_url, form, sent)
        if not isinstance(answer, Mapping):
            raise CallFailed(Outcome.FAILED, "the token endpoint answered 200 without a JSON object")
        return answer

    async def _keep(
        self,
        agent: AgentRef,
        answer: Mapping[str, Any],
        grant: str,
        stored: Sequence[_Token],
        replaces: _Token | None = None,
    ) -> _Token:
        """Check a token response (RFC 6749 §5.1, RFC 8693 §2.2.1), store what it carries, prune expired rows.

        Every token gets a row of its own name: a replica acting on a stale read can then mark only the token it
        used, never overwrite one another replica has just stored."""
        access, refresh = answer.get("access_token"), answer.get("refresh_token")
        token_type, issued_type = answer.get("token_type"), answer.get("issued_token_type", ACCESS_TOKEN_TYPE)
        if not (isinstance(access, str) and _B64TOKEN.fullmatch(access)) or str(token_type).lower() != "bearer":
            raise CallFailed(Outcome.FAILED, "the token endpoint answered without a usable Bearer access token")
        if issued_type != ACCESS_TOKEN_TYPE:
            raise CallFailed(Outcome.FAILED, "the token endpoint issued another token type than an access token")
        lifetime = _number(answer.get("expires_in"))
        now = self._clock()
        expires_at = now + (lifetime if lifetime is not None and lifetime > 0 else ASSUMED_LIFETIME_SECONDS)
        token = _Token(f"access:{secrets.token_hex(8)}", "access", Secret(access), grant, now, expires_at)
        await self._put(agent.agent_id, token)
        if isinstance(refresh, str) and refresh:
            await self._put(
                agent.agent_id, _Token(f"refresh:{secrets.token_hex(8)}", "refresh", Secret(refresh), grant, now)
            )
            if replaces is not None:
                # RFC 6749 §6: the client must discard the old refresh token once a new one is issued.
                await self._context.secrets.delete(agent.agent_id, replaces.name)
        for old in stored:
            expired = old.expires_at is not None and old.expires_at < now - EXPIRED_ROW_GRACE_SECONDS
            if old.kind == "access" and expired:
                await self._context.secrets.delete(agent.agent_id, old.name)
        log.info(
            "channel %s: access token obtained for agent %s (grant %s, valid %.0f s)",
            self.channel,
            agent.agent_id,
            grant,
            expires_at - now,
        )
        return token

    async def _put(self, agent_id: str, token: _Token) -> None:
        await self._context.secrets.put(agent_id, token.name, token.value, token.meta())

    # -- HTTP -------------------------------------------------------------------------------------------------

    async def _post(
        self,
        what: str,
        url: object,
        form: Mapping[str, str],
        sent: Sequence[str],
        idempotency_key: str | None = None,
    ) -> object:
        """POST a form with client authentication; the JSON of a 200 answer (None if it is none). Unreachable →
        RETRY; any other status → ``_failure``, which must not repeat ``sent`` or the client secret."""
        credential = await self._context.credential()
        headers = {
            "Authorization": client_authorization(self._settings.client_id, credential),
            "Accept": "application/json",
            # Encoded here as aiohttp's FormData would encode it, without building a FormData per call (~40 µs).
            "Content-Type": "application/x-www-form-urlencoded",
        }
        if idempotency_key is not None:
            headers["Idempotency-Key"] = idempotency_key
        origin = urlsplit(str(url)).netloc
        try:
            async with self._context.http().post(
                str(url), data=urlencode(form).encode(), headers=headers, allow_redirects=False
            ) as response:
                body = await read_capped(response.content, MAX_ANSWER_BYTES)
                status = response.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise CallFailed(
                Outcome.RETRY, f"the {what} at {origin} cannot be reached ({type(exc).__name__})"
            ) from None
        answer: object = None
        if body is not None:
            with contextlib.suppress(ValueError):
                answer = json.loads(body)
        if status != 200:
            secret_forms = client_secret_forms(self._settings.client_id, credential)
            raise token_error(
                what, status, answer, (*sent, *secret_forms), client_id=self._settings.client_id, channel=self.channel
            )
        return answer

    # -- the deprovisioning pipeline's side --------------------------------------------------------------------

    async def provision(self, agent: AgentRef, ctx: StepContext) -> StepResult:
        return StepResult(self.channel, "provision", Outcome.NOT_APPLICABLE, detail="tokens are obtained on first use")

    async def revoke(self, agent: AgentRef, ctx: StepContext) -> StepResult:
        """RFC 7009 for every stored token not yet revoked, refresh tokens first (§2.1: that also ends the
        grant's access tokens). Each token gets its own Idempotency-Key, derived from the step's, so a retried
        step replays per token instead of one token's answer standing in for another's."""
        async with self._lock(agent.agent_id):
            self._cache.pop(agent.agent_id, None)
            stored = await self._stored(agent.agent_id)
            pending = sorted(
                (token for token in stored if token.revoked_at is None), key=lambda token: token.kind != "refresh"
            )
            for done, token in enumerate(pending):
                form = {"token": token.value.reveal(), "token_type_hint": token.hint}
                key = f"{ctx.idempotency_key}:{token.name}"
                try:
                    await self._post(
                        "revocation endpoint", self._settings.revocation_url, form, (token.value.reveal(),), key
                    )
                except CallFailed as failure:
                    detail = f"{failure.detail} ({done} of {len(pending)} tokens revoked so far)"
                    return StepResult(self.channel, "revoke", failure.outcome, detail=detail)
                await self._put(agent.agent_id, replace(token, revoked_at=self._clock()))
            lost = await self._unreadable(agent.agent_id)
        if lost is not None:
            detail = f"revoked {len(pending)} readable token(s); {lost}"
            return StepResult(self.channel, "revoke", Outcome.FAILED, detail=detail)
        if not stored:
            return StepResult(self.channel, "revoke", Outcome.DONE, detail="no token was obtained for the agent")
        refresh = sum(1 for token in pending if token.kind == "refresh")
        detail = (
            f"revoked {len(pending)} tokens ({refresh} refresh, {len(pending) - refresh} access) at the "
            "authorization server (RFC 7009)"
        )
        if len(stored) > len(pending):
            detail += f"; {len(stored) - len(pending)} had been revoked by an earlier attempt"
        return StepResult(self.channel, "revoke", Outcome.DONE, detail=detail)

    async def verify_no_access(self, agent: AgentRef, ctx: StepContext) -> StepResult:
        """RFC 7662 for every stored token: DONE, and the rows deleted, only when all answer ``active: false``."""
        lost = await self._unreadable(agent.agent_id)
        if lost is not None:
            return StepResult(self.channel, "verify_no_access", Outcome.FAILED, detail=f"access may remain: {lost}")
        stored = await self._stored(agent.agent_id)
        active: list[_Token] = []
        for token in stored:
            form = {"token": token.value.reveal(), "token_type_hint": token.hint}
            try:
                answer = await self._post(
                    "introspection endpoint", self._settings.introspection_url, form, (token.value.reveal(),)
                )
            except CallFailed as failure:
                return StepResult(self.channel, "verify_no_access", failure.outcome, detail=failure.detail)
            verdict = answer.get("active") if isinstance(answer, Mapping) else None
            if not isinstance(verdict, bool):
                detail = "the introspection endpoint answered without a boolean 'active' (RFC 7662 §2.2)"
                return StepResult(self.channel, "verify_no_access", Outcome.FAILED, detail=detail)
            if verdict:
                active.append(token)
        if active:
            kinds = ", ".join(sorted({f"{token.kind} token" for token in active}))
            detail = f"access remains: {len(active)} of {len(stored)} tokens still active ({kinds})"
            return StepResult(self.channel, "verify_no_access", Outcome.FAILED, detail=detail)
        for token in stored:
            await self._context.secrets.delete(agent.agent_id, token.name)
        detail = f"introspection (RFC 7662): all {len(stored)} tokens obtained for the agent are inactive"
        return StepResult(self.channel, "verify_no_access", Outcome.DONE, detail=detail)

    async def hand_over(self, agent: AgentRef, successor: AgentRef | None, ctx: StepContext) -> StepResult:
        if self._tickets is not None:
            return await self._tickets.hand_over(agent, successor, ctx)
        detail = f"channel {self.channel!r} has no ticket API configured ([channels.{self.channel}.tickets])"
        return StepResult(self.channel, "hand_over", Outcome.NOT_APPLICABLE, detail=detail)

    async def remove(self, agent: AgentRef, ctx: StepContext) -> StepResult:
        detail = "the agent's tokens are their only footprint at this channel: no account to delete"
        return StepResult(self.channel, "remove", Outcome.NOT_APPLICABLE, detail=detail)

    async def forget(self, agent_id: str) -> None:
        self._cache.pop(agent_id, None)

    async def aclose(self) -> None:
        self._cache.clear()
        await self._context.aclose()
