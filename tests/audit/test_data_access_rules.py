"""Per-route personal-data rules fill the access log's subject and action (PIPA fields, issue 5 item 3)."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from gateway.audit.data_access import DataRules, subject_from_body
from gateway.settings import DataRuleSettings, RouteSettings

RULES = DataRules(
    [
        DataRuleSettings(
            path="/crm/customers/{customer}/recordings/**",
            methods=("GET",),
            action="download",
            subject="path:customer",
            pii="recording",
        ),
        DataRuleSettings(path="/crm/customers/{customer}/**", subject="path:customer", pii="customer"),
        DataRuleSettings(path="/crm/export", action="export", subject="query:segment"),
        DataRuleSettings(path="/crm/api/notes", methods=("POST",), subject="body:customer.id"),
        DataRuleSettings(path="/crm/lookup", subject="header:X-Customer-Id"),
    ]
)


def classify(method: str, path: str, query: str = "", headers: dict[str, str] | None = None) -> tuple[object, ...]:
    access = RULES.classify(method, path, query, headers or {})
    return access.subject, access.action, access.pii, access.body_field


def test_a_recording_fetch_is_a_download_of_the_customer_in_the_path() -> None:
    assert classify("GET", "/crm/customers/C-1001/recordings/77.wav") == ("C-1001", "download", "recording", None)


@pytest.mark.parametrize("path", ["/crm/Customers/C-1001/recordings/77.wav", "/CRM/CUSTOMERS/C-1001/RECORDINGS/77.wav"])
def test_a_rule_cannot_be_dodged_by_the_case_of_the_path(path: str) -> None:
    """The data class a policy reads (e.g. MFA for recordings) holds for a case-insensitive console too."""
    assert classify("GET", path) == ("C-1001", "download", "recording", None)


def test_the_first_matching_rule_decides_and_methods_narrow_it() -> None:
    assert classify("DELETE", "/crm/customers/C-1001/recordings/77.wav") == ("C-1001", "change", "customer", None)
    assert classify("GET", "/crm/customers/C-7/profile") == ("C-7", "view", "customer", None)


def test_a_websocket_rule_gives_upgrades_alone_its_action_and_get_rules_still_apply_to_them() -> None:
    rules = DataRules(
        [
            DataRuleSettings(path="/chat/ws", methods=("WEBSOCKET",), action="change"),
            DataRuleSettings(path="/chat/customers/{c}/**", methods=("GET",), subject="path:c", pii="customer"),
        ]
    )
    assert rules.classify("WEBSOCKET", "/chat/ws", "", {}).action == "change"
    assert rules.classify("GET", "/chat/ws", "", {}).action == "view"  # a plain GET of the same path
    upgrade = rules.classify("WEBSOCKET", "/chat/customers/C-1/live", "", {})
    assert (upgrade.subject, upgrade.action, upgrade.pii) == ("C-1", "view", "customer")  # as before
    assert rules.classify("WEBSOCKET", "/chat/other", "", {}).action == "view"  # the default, unchanged
    assert rules.classify("POST", "/chat/ws", "", {}).action == "change"


def test_subjects_come_from_the_query_and_headers() -> None:
    assert classify("GET", "/crm/export", "segment=vip&format=csv") == ("vip", "export", None, None)
    assert classify("GET", "/crm/lookup", headers={"x-customer-id": "C-9"}) == ("C-9", "view", None, None)


def test_a_body_rule_asks_for_the_body_and_reads_json_and_form_fields() -> None:
    assert classify("POST", "/crm/api/notes") == (None, "change", None, "customer.id")
    body = json.dumps({"customer": {"id": "C-42"}, "text": "called back"}).encode()
    assert subject_from_body(body, "application/json; charset=utf-8", "customer.id") == "C-42"
    assert subject_from_body(b"customer.id=C-43&text=x", "application/x-www-form-urlencoded", "customer.id") == "C-43"
    assert subject_from_body(b"{not json", "application/json", "customer.id") is None
    assert subject_from_body(json.dumps({"customer": {"id": True}}).encode(), "application/json", "customer.id") is None


def test_unmatched_requests_are_logged_by_their_method() -> None:
    assert classify("GET", "/crm/dashboard") == (None, "view", None, None)
    assert classify("POST", "/crm/dashboard") == (None, "change", None, None)


def test_a_hostile_subject_loses_its_control_characters_and_length() -> None:
    subject, *_ = classify("GET", "/crm/lookup", headers={"x-customer-id": "C-1\r\n\x1b[31mforged" + "x" * 500})
    assert isinstance(subject, str) and "\r" not in subject and "\n" not in subject and "\x1b" not in subject
    assert len(subject) == 128


@pytest.mark.parametrize(
    ("rule", "message"),
    [
        ({"path": "crm/x"}, "must start with '/'"),
        ({"path": "/crm/x", "subject": "cookie:id"}, "subject must be"),
        ({"path": "/crm/x", "subject": "path:customer"}, "no {customer} segment"),
        ({"path": "/other/{c}", "subject": "path:c"}, "outside the route's prefix"),
        ({"path": "/crm/x", "action": "delete"}, "view"),
    ],
)
def test_bad_rules_are_refused_with_a_message_naming_the_problem(rule: dict[str, str], message: str) -> None:
    route = {"channel": "crm", "prefix": "/crm/", "upstream": "http://127.0.0.1:1", "data": [rule]}
    with pytest.raises(ValidationError) as caught:
        RouteSettings.model_validate(route)
    assert message in str(caught.value)
