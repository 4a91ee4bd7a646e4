"""Which account issuers a SET's subjects name (RFC 9493 §3.2), and who may name them (gateway/signals/events.py)."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.signals.events import CAEP, RISC, InvalidSet, NotSpokenFor, Subject, authorize, security_event

VENDOR = "https://chat-vendor.example"
IDP = "https://idp.example"
NOW = 1_700_000_000
ALICE = {"format": "iss_sub", "iss": IDP, "sub": "alice-0001"}
OWN = {"format": "iss_sub", "iss": VENDOR, "sub": "v-1"}


def _event(events: dict[str, Any], **claims: Any) -> Any:
    body = {"iss": VENDOR, "aud": "https://gw.example", "iat": NOW, "jti": "j-1", "events": events} | claims
    return security_event({"typ": "secevent+jwt"}, body, issuer=VENDOR, audience="https://gw.example", now=NOW,
                          email_issuer=IDP)  # fmt: skip


#: SETs from the vendor, and the issuers of the accounts they name.
NAMED: dict[str, tuple[dict[str, Any], dict[str, Any], set[str]]] = {
    "its own iss_sub": ({RISC + "account-disabled": {}}, {"sub_id": OWN}, {VENDOR}),
    "the IdP's iss_sub": ({RISC + "account-disabled": {}}, {"sub_id": ALICE}, {IDP}),
    "an opaque id: its own namespace": (
        {RISC + "account-disabled": {"subject": {"format": "opaque", "id": "alice-0001"}}}, {}, {VENDOR},
    ),
    "an email: the login IdP's": (
        {CAEP + "session-revoked": {"subject": {"format": "email", "email": "a@example.com"}}}, {}, {IDP},
    ),
    "an alias member": (
        {CAEP + "session-revoked": {"subject": {"format": "aliases", "identifiers": [OWN, ALICE]}}},
        {"sub_id": OWN}, {VENDOR, IDP},
    ),
    "another event's subject": (
        {CAEP + "session-revoked": {"subject": OWN}, RISC + "account-disabled": {"subject": ALICE}}, {}, {VENDOR, IDP},
    ),
    "a malformed iss_sub of the IdP": (
        {CAEP + "session-revoked": {"subject": {"format": "iss_sub", "iss": IDP}}}, {"sub_id": OWN}, {VENDOR, IDP},
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", NAMED, ids=list(NAMED))
def test_every_subject_identifier_in_a_set_is_bound_to_an_account_issuer(case: str) -> None:
    events, claims, issuers = NAMED[case]
    event = _event(events, **claims)
    assert event.issuers == issuers
    if issuers <= {VENDOR}:
        authorize(event, transmitter=VENDOR, speaks_for=frozenset({VENDOR}))
    else:
        with pytest.raises(NotSpokenFor) as refused:
            authorize(event, transmitter=VENDOR, speaks_for=frozenset({VENDOR}))
        assert refused.value.code == "access_denied" and refused.value.issuers == [IDP]
    if event.subject_count == 1:  # else refused for naming two people (below)
        authorize(event, transmitter=VENDOR, speaks_for=frozenset({VENDOR, IDP}))


def test_an_opaque_subject_is_resolved_as_the_transmitters_own_account() -> None:
    event = _event({CAEP + "session-revoked": {"subject": {"format": "opaque", "id": "alice-0001"}}})
    assert event.subject == Subject(issuer=VENDOR, subject="alice-0001")


def test_the_refusal_cuts_an_issuer_the_sender_made_long() -> None:
    event = _event({RISC + "account-disabled": {}}, sub_id={"format": "iss_sub", "iss": "https://x/" + "a" * 10_000,
                                                            "sub": "s"})  # fmt: skip
    with pytest.raises(InvalidSet) as refused:
        authorize(event, transmitter=VENDOR, speaks_for=frozenset({VENDOR}))
    assert len(refused.value.message) < 1_000 and "...(cut)" in refused.value.message


OWN_2 = {**OWN, "sub": "v-2"}
TWO_PEOPLE = {
    "two events, two subjects": (
        {CAEP + "session-revoked": {"subject": OWN}, RISC + "account-disabled": {"subject": OWN_2}}, {},
    ),
    "sub_id and an event's subject": ({RISC + "account-disabled": {"subject": OWN_2}}, {"sub_id": OWN}),
}  # fmt: skip


@pytest.mark.parametrize("case", TWO_PEOPLE, ids=list(TWO_PEOPLE))
def test_a_set_naming_two_different_subjects_is_refused_not_applied_to_the_first(case: str) -> None:
    events, claims = TWO_PEOPLE[case]
    with pytest.raises(InvalidSet, match="2 different subjects") as refused:
        authorize(_event(events, **claims), transmitter=VENDOR, speaks_for=frozenset({VENDOR}))
    assert refused.value.code == "invalid_request"


def test_the_same_subject_named_in_sub_id_and_in_the_event_is_one_subject() -> None:
    event = _event({RISC + "account-disabled": {"subject": dict(OWN)}}, sub_id=OWN)
    assert event.subject == Subject(issuer=VENDOR, subject="v-1")


IDP_ALICE = {"format": "iss_sub", "iss": IDP, "sub": "alice-1"}


@pytest.mark.parametrize(
    ("sub_id", "event_subject"),
    [
        (IDP_ALICE, {"format": "email", "email": "alice@example.com"}),  # SSF 1.0 and CAEP-draft styles together
        ({"format": "email", "email": "Alice@Example.com"}, {"format": "email", "email": "alice@example.com"}),
    ],
    ids=["iss_sub-and-email", "email-case"],
)
def test_one_account_named_in_two_forms_or_letter_cases_is_not_refused_as_two(
    sub_id: dict[str, Any], event_subject: dict[str, Any]
) -> None:
    body = {"iss": IDP, "aud": "https://gw.example", "iat": NOW, "jti": "j-1", "sub_id": sub_id,
            "events": {CAEP + "session-revoked": {"subject": event_subject}}}  # fmt: skip
    event = security_event({"typ": "secevent+jwt"}, body, issuer=IDP, audience="https://gw.example", now=NOW,
                           email_issuer=IDP)  # fmt: skip
    authorize(event, transmitter=IDP, speaks_for=frozenset({IDP}))  # the receiver then checks they are one agent
    assert event.subject_count == 1


@pytest.mark.parametrize("age", [0, 3_600, 86_400])
def test_a_set_up_to_its_max_age_is_accepted_with_its_iat(age: int) -> None:
    body = {"iss": VENDOR, "aud": "https://gw.example", "iat": NOW - age, "jti": "j-1", "sub_id": OWN,
            "events": {RISC + "account-disabled": {}}}  # fmt: skip
    event = security_event({}, body, issuer=VENDOR, audience="https://gw.example", now=NOW, email_issuer=IDP)
    assert event.issued_at == NOW - age


@pytest.mark.parametrize(("age", "max_age"), [(86_401, 86_400), (601, 600), (-61, 600)])
def test_a_set_older_than_the_max_age_or_from_the_future_is_refused(age: int, max_age: int) -> None:
    body = {"iss": VENDOR, "aud": "https://gw.example", "iat": NOW - age, "jti": "j-1", "sub_id": OWN,
            "events": {RISC + "account-disabled": {}}}  # fmt: skip
    with pytest.raises(InvalidSet, match=f"outside the last {max_age} seconds"):
        security_event({}, body, issuer=VENDOR, audience="https://gw.example", now=NOW, email_issuer=IDP,
                       max_age=max_age)  # fmt: skip
