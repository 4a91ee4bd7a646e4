"""What a Security Event Token asks of the gateway, decided without I/O (RFC 8417, SSF 1.0, CAEP 1.0, RISC 1.0).

``security_event`` checks a SET whose signature is already verified (RFC 8417 §2, RFC 8935 §2.3 error codes)
and returns the action for each event it carries:

- CAEP ``session-revoked`` and ``credential-change``: end every session of the agent (a logout; the agent stays
  enabled and may sign in again once the IdP lets them).
- RISC ``account-disabled``: the whole deprovisioning path (the agent is disabled, sessions end everywhere).
- anything else: recorded and ignored.

Each transmitter speaks for some account issuers only (``speaks_for``: its own ``iss``, and the ``subject_issuers``
its settings list). ``authorize`` refuses a SET that names an account of any other issuer anywhere (``sub_id``,
an event's ``subject``, a member of ``aliases``): else any configured transmitter, a chat vendor's, could log out
or disable the IdP's agents by naming them with the IdP's ``iss``. Subjects are bound to an issuer as follows
(RFC 9493 §3.2): ``iss_sub`` to its ``iss``; ``opaque`` to the transmitter's own issuer (an ``id`` known only
between it and us, never read as another issuer's ``sub``); ``email`` to the gateway's login IdP (``[oidc]
issuer``), whose ID tokens, SCIM and directory set the emails agents carry; ``aliases`` is not resolved, but each
member is checked.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from enum import Enum
from typing import Any, Final

from gateway.errors import ChannelgateError

CAEP: Final = "https://schemas.openid.net/secevent/caep/event-type/"
RISC: Final = "https://schemas.openid.net/secevent/risc/event-type/"
#: A SET issued within this many seconds is acted on as it comes. An older one (a transmitter retrying its push
#: after the gateway was down, RFC 8935 §2.3) is still acted on, up to its transmitter's ``max_set_age_seconds``,
#: unless acting late could undo a later change (the receiver's stale check).
RECENT_SECONDS: Final = 300
#: The default ``[[ssf.transmitters]] max_set_age_seconds``: SETs older than this are refused; each ``jti`` is
#: remembered a little longer, so an older one cannot be replayed.
DEFAULT_MAX_AGE_SECONDS: Final = 86_400
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
    #: The account issuer of every subject identifier in the SET, wherever it is (``authorize`` checks them all).
    issuers: frozenset[str] = frozenset()
    #: Whether one of them is an ``email`` subject, counted as an account of the login IdP.
    names_email: bool = False
    #: The most different subjects ``sub_id`` and the events' ``subject`` members name in one form (iss_sub or
    #: email): more than one is two accounts for sure (``authorize`` refuses it).
    subject_count: int = 1
    #: The other subjects, each in another form than ``subject``: the receiver acts only if they name the same agent.
    also_named: tuple[Subject, ...] = ()
    #: The SET's ``iat`` (seconds since the epoch).
    issued_at: float = 0.0

    @property
    def action(self) -> Action:
        """The strongest action the events ask for (deprovision > end sessions > ignore)."""
        actions = {action for _, action in self.events}
        for strongest in (Action.DEPROVISION, Action.END_SESSIONS):
            if strongest in actions:
                return strongest
        return Action.IGNORE


def _subject(identifier: Any, transmitter: str) -> Subject | None:
    """An SSF subject identifier (RFC 9493 §3.2) that names an agent: ``iss_sub``, ``opaque`` (an account of the
    ``transmitter``'s own issuer) or ``email``; others do not."""
    if not isinstance(identifier, dict):
        return None
    form = identifier.get("format")
    if form == "iss_sub" and isinstance(identifier.get("iss"), str) and isinstance(identifier.get("sub"), str):
        return Subject(issuer=identifier["iss"], subject=identifier["sub"])
    if form == "opaque" and isinstance(identifier.get("id"), str) and identifier["id"]:
        return Subject(issuer=transmitter, subject=identifier["id"])
    if form == "email" and isinstance(identifier.get("email"), str) and identifier["email"]:
        return Subject(email=identifier["email"])
    return None


def _form(subject: Subject) -> str:
    return "email" if subject.email is not None else "sub"


def _key(subject: Subject) -> tuple[str | None, ...]:
    if subject.email is not None:
        return ("email", subject.email.casefold())
    return ("sub", subject.issuer, subject.subject)


def _identifiers(claims: dict[str, Any], events: dict[str, Any]) -> Iterator[Any]:
    """Every subject identifier the SET carries: ``sub_id``, each event's ``subject``, the members of ``aliases``."""
    found = [claims.get("sub_id"), *(event.get("subject") for event in events.values())]
    for identifier in found:
        yield identifier
        if isinstance(identifier, dict) and identifier.get("format") == "aliases":
            members = identifier.get("identifiers")
            yield from members if isinstance(members, list) else ()


def _issuers(claims: dict[str, Any], events: dict[str, Any], transmitter: str, email_issuer: str) -> set[str]:
    issuers = set[str]()
    for identifier in _identifiers(claims, events):
        if isinstance(identifier, dict) and identifier.get("format") == "iss_sub":
            issuers.add(str(identifier.get("iss")))  # even a malformed one: the transmitter meant that issuer
        elif (subject := _subject(identifier, transmitter)) is not None:
            issuers.add(subject.issuer if subject.issuer is not None else email_issuer)
    return issuers


def security_event(
    header: dict[str, Any],
    claims: dict[str, Any],
    *,
    issuer: str,
    audience: str,
    now: float,
    email_issuer: str,
    max_age: float = DEFAULT_MAX_AGE_SECONDS,
) -> SecurityEvent:
    """Check a verified SET from ``issuer`` (RFC 8417 §2.2-2.3); raises ``InvalidSet`` with the RFC 8935 code.
    ``email_issuer`` is the issuer an ``email`` subject counts as an account of (the login IdP's); ``max_age`` the
    oldest ``iat`` accepted, in seconds before ``now``."""
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
    if not isinstance(iat, int | float) or isinstance(iat, bool) or not now - max_age <= iat <= now + LEEWAY_SECONDS:
        raise InvalidSet(
            f"the SET's iat is missing or outside the last {max_age:g} seconds (this transmitter's max_set_age_seconds)"
        )
    jti = claims.get("jti")
    if not isinstance(jti, str) or not jti:
        raise InvalidSet("the SET has no jti")
    if "nonce" in claims:  # RFC 8417 §4.3: an ID token must never pass as a SET
        raise InvalidSet("the token has a nonce: it is an ID token, not a security event token")
    events = claims.get("events")
    if not isinstance(events, dict) or not events or not all(isinstance(v, dict) for v in events.values()):
        raise InvalidSet("the SET's events claim must map event types to objects")
    # ``sub_id`` (SSF) or each event's ``subject`` (CAEP/RISC drafts). A SET is one logical event about one subject
    # (RFC 8417 §2.2, ``events``): one naming two people is refused (``authorize``), not applied to the first.
    named = [_subject(claims.get("sub_id"), issuer), *(_subject(v.get("subject"), issuer) for v in events.values())]
    # One account may be named once per form (an iss_sub in sub_id, its email in the event); within a form, values
    # that name the same account are one (emails compare case-insensitively, as agents are found by email).
    subjects = list({_key(s): s for s in reversed([s for s in named if s is not None])}.values())[::-1]
    forms = [_form(s) for s in subjects]
    if not subjects:
        raise InvalidSet("the SET names no subject the gateway knows how to match (iss_sub, opaque or email)")
    subject = subjects[0]
    actions = tuple((name, ACTIONS.get(name, Action.IGNORE)) for name in events)
    names_email = any(isinstance(i, dict) and i.get("format") == "email" for i in _identifiers(claims, events))
    issuers = frozenset(_issuers(claims, events, issuer, email_issuer))
    most = max(forms.count(form) for form in set(forms))
    return SecurityEvent(jti, subject, actions, issuers, names_email, most, tuple(subjects[1:]), float(iat))


class NotSpokenFor(InvalidSet):
    """RFC 8935 §2.4 ``access_denied``: the SET names accounts of issuers its transmitter does not speak for."""

    def __init__(self, message: str, issuers: list[str]) -> None:
        super().__init__(message, err="access_denied")
        self.issuers = issuers


def _shown(issuers: list[str]) -> str:
    """Issuers for a description, each cut short: they come from the SET, so their size is the sender's."""
    cut = [repr(i if len(i) <= 200 else i[:200] + "...(cut)") for i in issuers[:3]]
    return ", ".join(cut) + (f" and {len(issuers) - 3} more" if len(issuers) > 3 else "")


def authorize(event: SecurityEvent, *, transmitter: str, speaks_for: frozenset[str]) -> None:
    """Refuse a SET naming an account of an issuer that ``transmitter`` does not speak for, anywhere in it, then one
    naming more than one subject. Called before the ``jti`` is claimed (``gateway/sessions/single_use.py``): nothing
    is done and nothing is used up."""
    foreign = sorted(event.issuers - speaks_for)
    if not foreign:
        if event.subject_count > 1:
            raise InvalidSet(
                f"the SET names {event.subject_count} different subjects; a SET is about one subject (RFC 8417 §2.2): "
                "send one SET per account"
            )
        return
    email = " (an email subject counts as an account of the gateway's login IdP)" if event.names_email else ""
    raise NotSpokenFor(
        f"not acted on: transmitter {transmitter!r} may name accounts of {_shown(sorted(speaks_for))} only, and this "
        f"SET names an account of {_shown(foreign)}{email}. Send it from that issuer's own transmitter, or, if "
        "this transmitter does speak for that issuer, have the gateway's administrator add it to this "
        "transmitter's subject_issuers ([[ssf.transmitters]])",
        foreign,
    )
