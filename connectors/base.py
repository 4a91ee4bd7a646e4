"""The connector protocol: how the gateway presents an agent to one channel console and ends their access there.

Shaped like an httpx ``Auth`` flow: ``prepare`` adds credentials to the upstream request (after the proxy has
already removed every client-sent credential and identity header); on a 401 from upstream the proxy may call
``on_upstream_unauthorized`` once to refresh and resend. The deprovisioning pipeline asks each connector only
for what its ``capabilities`` declare: revoke tokens (RFC 7009), disable seats, hand over tickets, end console
sessions, and verify that no access remains (RFC 7662 introspection, seat status).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Protocol


class Capability(Enum):
    INJECT = "inject"
    REVOKE_TOKENS = "revoke_tokens"
    SEATS = "seats"
    TICKETS = "tickets"
    CONSOLE_LOGOUT = "console_logout"
    VERIFY = "verify"


class Outcome(Enum):
    DONE = "done"
    NOT_APPLICABLE = "not_applicable"
    FAILED = "failed"
    RETRY = "retry"


@dataclass(frozen=True, slots=True)
class AgentRef:
    agent_id: str
    user_name: str
    email: str | None = None
    manager_user_name: str | None = None


@dataclass(slots=True)
class UpstreamRequest:
    """The request about to go upstream; connectors add headers to ``headers`` and nowhere else."""

    method: str
    url: str
    headers: list[tuple[str, str]] = field(default_factory=list)

    def set_header(self, name: str, value: str) -> None:
        """Replace every header of this name (case-insensitive) with one value."""
        lowered = name.lower()
        self.headers[:] = [(n, v) for n, v in self.headers if n.lower() != lowered]
        self.headers.append((name, value))


@dataclass(frozen=True, slots=True)
class StepResult:
    """One deprovisioning step's receipt at one channel."""

    channel: str
    step: str
    outcome: Outcome
    vendor_reference: str | None = None
    detail: str = ""


class Connector(Protocol):
    channel: str
    capabilities: frozenset[Capability]

    def injected_headers(self) -> tuple[str, ...]:
        """Headers this connector sets upstream: client copies in any spelling are stripped first."""
        ...

    async def prepare(self, agent: AgentRef, request: UpstreamRequest) -> None:
        """Add this channel's credential for ``agent`` to the upstream request."""
        ...

    async def on_upstream_unauthorized(self, agent: AgentRef) -> bool:
        """The upstream answered 401: refresh the credential once; True means "resend"."""
        ...

    async def revoke(self, agent: AgentRef) -> StepResult:
        """End the agent's credentials at the channel (RFC 7009 revocation, seat disable, console logout)."""
        ...

    async def hand_over(self, agent: AgentRef, successor: str | None) -> StepResult:
        """Reassign the agent's open work (tickets) to ``successor`` or the channel's fallback queue."""
        ...

    async def verify_no_access(self, agent: AgentRef) -> StepResult:
        """Check that no access remains (RFC 7662 introspection says inactive, the seat is disabled, ...)."""
        ...

    async def aclose(self) -> None: ...
