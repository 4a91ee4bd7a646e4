"""What a Security Event Token asks of the gateway, decided without I/O (RFC 8417, SSF 1.0, CAEP 1.0, RISC 1.0).

``security_event`` checks a SET whose signature is already verified (RFC 8417 §2, RFC 8935 §2.3 error codes)
and returns the action for each event it carries:

- CAEP ``session-revoked`` and ``credential-change``: end every session of the agent (a logout; the agent stays
  enabled and may sign in again once the IdP lets them).
- RISC ``account-disabled``: the whole deprovisioning path (the agent is disabled, sessions end everywhere).
- anything else: recorded and ignored.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any, Final

from gateway.errors import ChannelgateError

CAEP: Final = "https://schemas.openid.net/secevent/caep/event-type/"
RISC: Final = "https://schemas.openid.net/secevent/risc/event-type/"
#: Oldest ``iat`` accepted (seconds); a ``jti`` is remembered a little longer, so an older one cannot be replayed.
MAX_AGE_SECONDS: Final = 300
LEEWAY_SECONDS: Final = 60


class Action(Enum):
    END_SESSIONS = "end_sessions"
    DEPROVISION = "deprovision"
    IGNORE = "ignore"


ACTIONS: Final = {
    CAEP + "session-revoked": Action.END_SESSIONS,
    CAEP + "credential-change": Action.END_SESSIONS,
    RISC + "account-disabled": Action.DEPROVISION,
}


class InvalidSet(ChannelgateError):
    """RFC 8935 §2.4: the SET is refused; ``code`` is the ``err`` value the transmitter receives."""

    status = 400
    code = "invalid_request"

    def __init__(self, message: str, *, err: str = "invalid_request") -> None:
        super().__init__(message)
        self.code = err


@dataclass(frozen=True, slots=True)
class Subject:
    """Who the event is about: (iss, sub) of the IdP account, or an email address."""

    issuer: str | None = None
    subject: str | None = None
    email: str | None = None


@dataclass(frozen=True, slots=True)
class SecurityEvent:
    jti: str
    subject: Subject
    events: tuple[tuple[str, Action], ...]

    @property
    def action(self) -> Action:
        """The strongest action the events ask for (deprovision > end sessions > ignore)."""
        actions = {action for _, action in self.events}
        for strongest in (Action.DEPROVISION, Action.END_SESSIONS):
            if strongest in actions:
                return strongest
        return Action.IGNORE


def _subject(identifier: Any) -> Subject | None:
    """An SSF subject identifier (RFC 9493): formats ``iss_sub`` and ``email`` name an agent; others do not."""
    if not isinstance(identifier, dict):
        return None
    form = identifier.get("format")
    if form == "iss_sub" and isinstance(identifier.get("iss"), str) and isinstance(identifier.get("sub"), str):
        return Subject(issuer=identifier["iss"], subject=identifier["sub"])
    if form == "email" and isinstance(identifier.get("email"), str) and identifier["email"]:
        return Subject(email=identifier["email"])
    return None


def security_event(
    header: dict[str, Any], claims: dict[str, Any], *, issuer: str, audience: str, now: float
) -> SecurityEvent:
    """Check a verified SET from ``issuer`` (RFC 8417 §2.2-2.3); raises ``InvalidSet`` with the RFC 8935 code."""
    typ = header.get("typ")
    if typ is not None and str(typ).lower() not in ("secevent+jwt", "application/secevent+jwt"):
        raise InvalidSet(f"the SET's typ is {typ!r}, not secevent+jwt")
    if header.get("crit"):
        raise InvalidSet("the SET uses critical header extensions")
    if claims.get("iss") != issuer:
        raise InvalidSet("the SET's iss is not this transmitter's issuer", err="invalid_issuer")
    aud = claims.get("aud")
    if aud != audience and not (isinstance(aud, list) and audience in aud):
        raise InvalidSet("the SET is not addressed to this gateway", err="invalid_audience")
    iat = claims.get("iat")
    if (
        not isinstance(iat, int | float)
        or isinstance(iat, bool)
        or not now - MAX_AGE_SECONDS <= iat <= now + LEEWAY_SECONDS
    ):
        raise InvalidSet(f"the SET's iat is missing or outside the last {MAX_AGE_SECONDS} seconds")
    jti = claims.get("jti")
    if not isinstance(jti, str) or not jti:
        raise InvalidSet("the SET has no jti")
    if "nonce" in claims:  # RFC 8417 §4.3: an ID token must never pass as a SET
        raise InvalidSet("the token has a nonce: it is an ID token, not a security event token")
    events = claims.get("events")
    if not isinstance(events, dict) or not events or not all(isinstance(v, dict) for v in events.values()):
        raise InvalidSet("the SET's events claim must map event types to objects")
    subject = _subject(claims.get("sub_id"))
    if subject is None:  # CAEP/RISC drafts put the subject inside the event
        subject = next((s for v in events.values() if (s := _subject(v.get("subject"))) is not None), None)
    if subject is None:
        raise InvalidSet("the SET names no subject the gateway knows how to match (iss_sub or email)")
    return SecurityEvent(jti, subject, tuple((name, ACTIONS.get(name, Action.IGNORE)) for name in events))
