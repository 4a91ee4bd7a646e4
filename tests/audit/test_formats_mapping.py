"""What each format says about each kind of record: OCSF classes and their required attributes, syslog PRI and
CEF severity by outcome, and the addresses CEF and OCSF carry."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from importlib import metadata
from typing import Any

import pytest

from gateway.audit.formats import FORMATS, formatter
from gateway.storage.access_log import AccessRecord

T = datetime(2026, 12, 4, 9, 30, tzinfo=UTC)

#: OCSF 1.3 required attributes: of every event, and per class.
BASE_REQUIRED = ("activity_id", "category_uid", "class_uid", "metadata", "severity_id", "time", "type_uid")
CLASS_REQUIRED: dict[int, tuple[str, ...]] = {
    3001: ("user",),
    3002: ("user",),
    3003: ("user",),
    3005: ("user", "privileges"),
    6003: ("actor", "api", "src_endpoint"),
    0: (),
}


def _record(kind: str, **fields: Any) -> AccessRecord:
    values: dict[str, Any] = {
        "time": T,
        "kind": kind,
        "seq": 7,
        "agent_id": "a-1",
        "agent_name": "alice",
        "source_ip": "192.0.2.10",
    }
    values.update(fields)
    return AccessRecord(**values)


# (kind, extra fields, class_uid, activity_id, status_id)
CASES = [
    ("login", {"decision": "allow"}, 3002, 1, 1),
    ("login_failed", {"reason": "nonce_mismatch"}, 3002, 1, 2),
    ("logout", {"decision": None}, 3002, 2, 0),
    ("backchannel_logout", {"decision": "revoked"}, 3002, 2, 1),
    ("expired", {"reason": "idle"}, 3002, 2, 0),
    ("sessions_revoked", {"decision": "revoked", "actor": "admin-token-0"}, 3002, 2, 1),
    ("security_event", {"decision": "refused"}, 3002, 99, 2),
    ("deprovision", {"decision": "disabled", "actor": "scim"}, 3001, 5, 1),
    ("deprovision_complete", {"decision": "done"}, 3001, 99, 1),
    ("deprovision_attention", {"decision": "attention"}, 3001, 99, 2),
    ("deprovision_step", {"decision": "done", "channel": "chat"}, 3005, 2, 1),
    ("deprovision_step", {"decision": "dead", "channel": "chat"}, 3005, 2, 2),
    ("scim", {"method": "POST", "path": "/scim/v2/Users", "status": 201, "decision": "applied"}, 3001, 1, 1),
    ("scim", {"method": "DELETE", "path": "/scim/v2/Users/a-1", "status": 204, "decision": "applied"}, 3001, 6, 1),
    ("scim", {"method": "PATCH", "path": "/scim/v2/Users/a-1", "status": 200, "decision": "applied"}, 3001, 99, 1),
    ("scim", {"method": "POST", "path": "/scim/v2/Groups", "status": 201, "decision": "applied"}, 3005, 1, 1),
    ("scim", {"method": "PATCH", "path": "/scim/v2/Groups/g1", "status": 400, "decision": "refused"}, 3005, 99, 2),
    ("scim", {"method": "DELETE", "path": "/scim/v2/Groups/g1", "status": 204, "decision": "applied"}, 3005, 2, 1),
    ("request", {"method": "GET", "path": "/chat/x", "status": 200, "decision": "allow"}, 3003, 99, 1),
    ("request", {"method": "GET", "path": "/chat/x", "status": 403, "decision": "deny"}, 3003, 99, 2),
    ("audit_search", {"decision": "allow", "actor": "admin-token-0"}, 6003, 2, 1),
    ("something_new", {}, 0, 99, 0),
]


@pytest.mark.parametrize(
    ("kind", "fields", "class_uid", "activity_id", "status_id"), CASES, ids=[f"{c[0]}-{n}" for n, c in enumerate(CASES)]
)
def test_ocsf_maps_each_kind_to_its_class_with_every_required_attribute(
    kind: str, fields: dict[str, Any], class_uid: int, activity_id: int, status_id: int
) -> None:
    event = json.loads(FORMATS["ocsf"].format(_record(kind, **fields)))

    assert (event["class_uid"], event["activity_id"], event["status_id"]) == (class_uid, activity_id, status_id)
    assert event["type_uid"] == class_uid * 100 + activity_id
    assert event["category_uid"] == class_uid // 1000
    for name in (*BASE_REQUIRED, *CLASS_REQUIRED[class_uid]):
        assert event.get(name) not in (None, "", [], {}), name
    product = {"name": "channelgate", "vendor_name": "channelgate", "version": metadata.version("channelgate")}
    assert event["metadata"]["product"] == product
    assert event["metadata"]["version"].startswith("1.")
    assert event["time"] == int(T.timestamp() * 1000)
    assert event["src_endpoint"]["ip"] == "192.0.2.10"
    assert None not in _values(event)


def _values(value: Any) -> list[Any]:
    if isinstance(value, dict):
        return [item for nested in value.values() for item in _values(nested)]
    return [value]


@pytest.mark.parametrize(
    ("decision", "kind", "pri", "cef_severity", "ocsf_severity"),
    [
        ("allow", "request", 86, "3", 1),  # authpriv.info
        ("deny", "request", 84, "7", 3),  # authpriv.warning
        ("disabled", "deprovision", 85, "5", 2),  # authpriv.notice
        (None, "login_failed", 84, "7", 3),
    ],
)
def test_each_format_grades_a_refusal_above_a_removal_above_an_allowed_request(
    decision: str | None, kind: str, pri: int, cef_severity: str, ocsf_severity: int
) -> None:
    record = _record(kind, decision=decision)
    assert formatter("syslog").format(record).startswith(f"<{pri}>1 ")
    assert FORMATS["cef"].format(record).split("|")[6] == cef_severity
    assert json.loads(FORMATS["ocsf"].format(record))["severity_id"] == ocsf_severity


def test_cef_puts_ipv4_in_src_ipv6_in_c6a2_and_anything_else_in_shost() -> None:
    assert " src=192.0.2.10 " in FORMATS["cef"].format(_record("login"))
    assert " c6a2=2001:db8::1 c6a2Label=sourceAddress " in FORMATS["cef"].format(
        _record("login", source_ip="2001:db8::1")
    )
    assert " shost=not-an-ip " in FORMATS["cef"].format(_record("login", source_ip="not-an-ip"))


def test_the_syslog_sd_id_carries_the_configured_enterprise_number() -> None:
    assert " [channelgate@32473 " in FORMATS["syslog"].format(_record("login"))
    assert " [channelgate@99999 " in formatter("syslog", syslog_enterprise_number=99999).format(_record("login"))
