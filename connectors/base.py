"""The connector protocol: how the gateway presents an agent to one channel console and ends their access there.

Shaped like an httpx ``Auth`` flow: ``prepare`` adds credentials to the upstream request (after the proxy has
already removed every client-sent credential and identity header); on a 401 from upstream the proxy calls
``on_upstream_unauthorized`` once, which may refresh the credential and rewrite the request to be resent. The
deprovisioning pipeline asks each connector only for what its ``capabilities`` declare: revoke tokens (RFC 7009),
disable seats, hand over tickets, end console sessions, and verify that no access remains (RFC 7662
introspection, seat status). A step a connector cannot do answers ``Outcome.NOT_APPLICABLE``, never silence.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Protocol


class Capability(Enum):
    """What a connector can do at its channel; the deprovisioning pipeline plans its steps from these."""

    #: Adds a credential to proxied requests (every connector today).
    INJECT = "inject"
    #: Creates the agent's account or seat at the channel ahead of first use (``provision``).
    PROVISION = "provision"
    #: Keeps the console's cookies server-side: the proxy hands every upstream response's headers to
    #: ``on_upstream_response`` (which takes the ``Set-Cookie`` lines out) before the browser sees them.
    COOKIE_JAR = "cookie_jar"
    #: Revokes the agent's own tokens at the channel's authorization server (RFC 7009).
    REVOKE_TOKENS = "revoke_tokens"
    #: Disables or frees the agent's seat through the vendor's admin API.
    SEATS = "seats"
    #: Reassigns the agent's open tickets / conversations to a successor or a queue.
    TICKETS = "tickets"
    #: Ends the agent's sessions inside the console itself (vendor logout, cookie-jar sessions).
    CONSOLE_LOGOUT = "console_logout"
    #: Can confirm afterwards that no access remains (RFC 7662 introspection, seat status).
    VERIFY = "verify"


class Outcome(Enum):
    DONE = "done"
    #: This connector has nothing to do for this step (it does not declare the capability).
    NOT_APPLICABLE = "not_applicable"
    #: Tried and failed for good (the receipt says why); a person has to look.
    FAILED = "failed"
    #: Tried and failed for now (timeout, 5xx, 429): the pipeline schedules another attempt.
    RETRY = "retry"


@dataclass(frozen=True, slots=True)
class AgentRef:
    """Who the connector acts for; ``manager_user_name`` is the default successor for handed-over work."""

    agent_id: str
    user_name: str
    email: str | None = None
    manager_user_name: str | None = None


@dataclass(frozen=True, slots=True)
class StepContext:
    """One attempt at one pipeline step at one channel.

    ``idempotency_key`` is the same on every attempt of the step (it is derived from the pipeline run, the
    channel and the step), so a connector sends it to the vendor (``Idempotency-Key`` header) and a retry after
    a crash between the vendor's answer and our commit has one effect, not two.
    """

    idempotency_key: str
    attempt: int = 1


@dataclass(frozen=True, slots=True)
class UpstreamRequest:
    """The request about to go upstream. ``headers`` is the one place a connector may write a credential."""

    method: str
    url: str
    headers: list[tuple[str, str]] = field(default_factory=list)

    def header(self, name: str) -> str | None:
        """The value of the first header of this name (case-insensitive), if any."""
        lowered = name.lower()
        return next((v for n, v in self.headers if n.lower() == lowered), None)

    def set_header(self, name: str, value: str) -> None:
        """Replace every header of this name, in any spelling, with one value, so a client copy cannot survive."""
        lowered = name.lower()
        self.headers[:] = [(n, v) for n, v in self.headers if n.lower() != lowered]
        self.headers.append((name, value))


@dataclass(frozen=True, slots=True)
class StepResult:
    """One deprovisioning step's receipt at one channel. ``detail`` is for people and never holds a secret."""

    channel: str
    step: str
    outcome: Outcome
    vendor_reference: str | None = None
    detail: str = ""


class Connector(Protocol):
    """One channel console. A connector puts credentials only into ``UpstreamRequest.headers``: never into the
    URL, a log line, an exception message or a ``StepResult``, because all of those end up in the access log."""

    channel: str
    capabilities: frozenset[Capability]

    def injected_headers(self) -> tuple[str, ...]:
        """Headers this connector sets upstream; the proxy strips client copies in any spelling first."""
        ...

    async def prepare(self, agent: AgentRef, request: UpstreamRequest) -> None:
        """Add this channel's credential for ``agent`` (RFC 6750 bearer, RFC 7617 basic, a vendor header, a
        cookie jar's session cookie) to the request headers."""
        ...

    def prepare_from_memory(self, agent: AgentRef, request: UpstreamRequest) -> bool:
        """:meth:`prepare`, when the credential for ``agent`` is held fresh in this process and adding it needs no
        I/O; False (``request`` untouched) means "await :meth:`prepare`". The forward-auth listener answers from
        inside a parser callback with it (gateway/forward_auth_protocol.py)."""
        ...

    async def on_upstream_unauthorized(self, agent: AgentRef, request: UpstreamRequest) -> bool:
        """The upstream answered 401 to ``request``: refresh the credential once (RFC 6749 §6 refresh grant, a
        re-login, a re-read of the vault) and rewrite ``request``. True means "resend it", at most once."""
        ...

    async def on_upstream_response(self, agent: AgentRef, status: int, headers: list[tuple[str, str]]) -> None:
        """Called only for connectors declaring ``COOKIE_JAR``: take what belongs to the gateway (``Set-Cookie``)
        out of the upstream response ``headers`` in place, before they are sent to the browser."""
        ...

    async def provision(self, agent: AgentRef, ctx: StepContext) -> StepResult:
        """Create the agent's seat or account at the channel (``PROVISION``); idempotent."""
        ...

    async def revoke(self, agent: AgentRef, ctx: StepContext) -> StepResult:
        """End the agent's access at the channel: RFC 7009 token revocation (refresh token first, §2.1), seat
        disable through the admin API, console logout."""
        ...

    async def hand_over(self, agent: AgentRef, successor: AgentRef | None, ctx: StepContext) -> StepResult:
        """Reassign the agent's open work (tickets, conversations) to ``successor``, or to the channel's fallback
        queue when there is none."""
        ...

    async def verify_no_access(self, agent: AgentRef, ctx: StepContext) -> StepResult:
        """Check that no access remains: RFC 7662 introspection answers ``active: false`` for every token
        issued to the agent, the seat reads disabled, the console lists no session."""
        ...

    async def remove(self, agent: AgentRef, ctx: StepContext) -> StepResult:
        """The irreversible last step, after ``verify_no_access``: delete the agent's seat or account (only where
        configured, e.g. ``remove = "delete"``; otherwise ``NOT_APPLICABLE``). The mass-deletion guard holds it
        for an admin's approval when a broken directory sync looks like it is deprovisioning everyone."""
        ...

    async def forget(self, agent_id: str) -> None:
        """Drop whatever this replica caches for the agent (tokens, cookie jar): called on every replica when the
        agent's sessions are revoked, so nothing cached outlives the access it stood for."""
        ...

    async def aclose(self) -> None:
        """Release HTTP clients and forget cached credentials."""
        ...
