"""What a policy decision is asked and what it answers (Pomerium's named reasons): allowed or not, the policy ids
that decided, and words an agent understands.

Pure values: the engine (policies/engine.py) turns a ``Query`` into a ``Decision``; the time of the request
travels inside the query's context, so a decision never reads a clock.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum

#: The policy id the access log names when no permit matched (Cedar denies by default).
DEFAULT_DENY = "default-deny"
#: The policy id the access log names when a policy failed to evaluate: the request is refused (fail closed).
POLICY_ERROR = "policy-error"

#: The data actions of the schema (policies/schema.cedarschema); each is a member of the action group ``open``.
ACTIONS = frozenset({"view", "change", "download", "export"})
#: RFC 8176 authentication methods that are a second factor on their own or say one was used (the default of
#: ``[policies] mfa_amr_values``).
DEFAULT_MFA_AMR = ("mfa", "otp", "hwk", "sms", "tel", "sc", "swk")


def has_mfa(amr: Iterable[str], acr: str, mfa_amr: frozenset[str], mfa_acr: frozenset[str]) -> bool:
    """``context.mfa`` of a sign-in: one of its ``amr`` values (RFC 8176) or its ``acr`` says a second factor was
    used. The gateway (gateway/policy_point.py) and the case tables (policies/cases.py) both derive it here."""
    return not mfa_amr.isdisjoint(amr) or acr in mfa_acr


class Reason(StrEnum):
    #: A permit policy matched and no forbid did.
    PERMITTED = "permitted"
    #: A forbid policy matched (forbid wins over any permit).
    FORBIDDEN = "forbidden"
    #: No permit matched: the agent lacks every group the route allows.
    GROUP_MISSING = "group_missing"
    #: No permit matched and the route allows no group at all.
    ROUTE_CLOSED = "route_closed"
    #: No permit matched although the agent is in an allowed group (another rule would have had to permit).
    NO_PERMIT = "no_permit"
    #: A policy could not be evaluated; refused rather than guessed.
    POLICY_ERROR = "policy_error"


@dataclass(frozen=True, slots=True)
class Subject:
    agent_id: str
    user_name: str
    groups: frozenset[str]


@dataclass(frozen=True, slots=True)
class Target:
    """One route of a channel console and the personal-data class of the requested path."""

    channel: str
    #: Groups any of which opens the route (the route's ``allowed_groups``).
    allowed_groups: tuple[str, ...]
    prefix: str = "/"
    #: The class of personal data the route's data rule gives the path ("none" when no rule names one).
    pii: str = "none"

    @property
    def resource_id(self) -> str:
        """The Cedar ``Resource`` entity id: one per route and personal-data class."""
        return f"{self.channel}:{self.prefix}:{self.pii}"


@dataclass(frozen=True, slots=True)
class Clock:
    """The request's local time in ``[policies] timezone`` (minute precision: policies speak of shifts)."""

    weekday: int
    hour: int
    minute_of_day: int


@dataclass(frozen=True, slots=True)
class Context:
    """The request's circumstances (schema type ``RequestContext``)."""

    time: Clock
    network: str = "other"
    mfa: bool = False
    acr: str = ""
    amr: tuple[str, ...] = ()
    device: str = "unknown"
    via: str = "inline"


@dataclass(frozen=True, slots=True)
class Query:
    subject: Subject
    target: Target
    action: str
    context: Context


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    reasons: frozenset[Reason]
    #: The policies that decided, by their ``@id`` (the access log's ``reason``), e.g. ``("pii-needs-mfa",)``.
    policy_ids: tuple[str, ...] = ()
    missing_groups: tuple[str, ...] = field(default=())
    #: The deciding policies' ``@reason`` texts, for the 403 page.
    messages: tuple[str, ...] = ()
    #: ``PolicyEngine.id`` of the engine that decided. A hot reload swaps the engine from a worker thread at any
    #: moment, so whoever keeps a decision (the forward-auth memo) must key it on this, never on the engine in
    #: force when it looks afterwards: that may already be the next set.
    engine_id: int = field(default=0, compare=False, repr=False)

    def explain(self) -> str:
        """A sentence or two an agent understands, for the 403 page."""
        if self.allowed:
            return "Allowed."
        if Reason.FORBIDDEN in self.reasons:
            if self.messages:
                return " ".join(self.messages)
            return f"A rule of your organisation does not allow this ({', '.join(self.policy_ids)})."
        if Reason.ROUTE_CLOSED in self.reasons:
            return "This console is not open to anyone yet: no group is allowed on it."
        if Reason.GROUP_MISSING in self.reasons:
            groups = ", ".join(self.missing_groups)
            return f"You need to be in one of these groups to open this console: {groups}."
        if Reason.POLICY_ERROR in self.reasons:
            return "The access rules could not be evaluated for this request, so it was refused. Please tell support."
        return "No rule of your organisation allows this request."
