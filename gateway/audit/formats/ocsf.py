"""OCSF 1.3 events (Open Cybersecurity Schema Framework), one JSON object per record.

=============================  ==========================  =====================================================
record kind                    class (class_uid)           activity_id
=============================  ==========================  =====================================================
login, login_failed            Authentication (3002)       1 Logon (status Failure for login_failed)
logout, backchannel_logout,    Authentication (3002)       2 Logoff
expired, sessions_revoked
security_event                 Authentication (3002)       99 Other (a CAEP/RISC signal from the IdP)
deprovision                    Account Change (3001)       5 Disable
scim on /Users                 Account Change (3001)       POST 1 Create, DELETE 6 Delete, PUT/PATCH 99 Other
deprovision_complete,          Account Change (3001)       99 Other (the deprovisioning run's progress)
_attention, _held,
_approved, _retried
deprovision_step               User Access Management      2 Revoke Privileges (the channel's access), status
                               (3005)                      from the step's state
scim on /Groups                User Access Management      POST 1 Assign Privileges, DELETE 2 Revoke Privileges,
                               (3005)                      PUT/PATCH 99 Other (membership changed)
request                        Authorize Session (3003)    99 Other ("Authorize Request": allow or deny)
audit_search, audit_export     API Activity (6003)         2 Read
anything else                  Base Event (0)              99 Other
=============================  ==========================  =====================================================

Every event has category_uid, class_uid, activity_id, type_uid (class_uid × 100 + activity_id), severity_id
(1 Informational, 2 Low for a removal of access, 3 Medium for a refusal), status_id (1 Success, 2 Failure, 0
Unknown), time (ms since the epoch), metadata (product, version, uid = seq, sequence = chain position,
correlation_uid = request id), user and actor.user, src_endpoint.ip, and http_request / http_response for
records of an HTTP request. What OCSF has no attribute for (channel, data subject and action, detail, the chain's
hashes) is in ``unmapped``.
"""

from __future__ import annotations

from typing import Any

from gateway.audit.formats._common import PRODUCT, VERSION, Level, epoch_ms, failed, level, outcome
from gateway.audit.formats.jsonl import dumps
from gateway.storage.access_log import AccessRecord

OCSF_VERSION = "1.3.0"

AUTHENTICATION = 3002
ACCOUNT_CHANGE = 3001
AUTHORIZE_SESSION = 3003
USER_ACCESS = 3005
API_ACTIVITY = 6003
BASE_EVENT = 0

CLASS_NAMES = {
    AUTHENTICATION: "Authentication",
    ACCOUNT_CHANGE: "Account Change",
    AUTHORIZE_SESSION: "Authorize Session",
    USER_ACCESS: "User Access Management",
    API_ACTIVITY: "API Activity",
    BASE_EVENT: "Base Event",
}
#: Identity & Access Management (3), Application Activity (6), Uncategorized (0).
CATEGORIES = {3: "Identity & Access Management", 6: "Application Activity", 0: "Uncategorized"}

_SEVERITY = {Level.INFO: 1, Level.NOTICE: 2, Level.WARNING: 3}
_STATUS = {"success": (1, "Success"), "failure": (2, "Failure"), None: (0, "Unknown")}


def classify(record: AccessRecord) -> tuple[int, int, str]:
    """(class_uid, activity_id, activity_name) of a record, by the table in the module docstring."""
    kind = record.kind
    if kind in ("login", "login_failed"):
        return AUTHENTICATION, 1, "Logon"
    if kind in ("logout", "backchannel_logout", "expired", "sessions_revoked"):
        return AUTHENTICATION, 2, "Logoff"
    if kind == "security_event":
        return AUTHENTICATION, 99, "Other"
    if kind == "deprovision":
        return ACCOUNT_CHANGE, 5, "Disable"
    if kind == "deprovision_step":
        return USER_ACCESS, 2, "Revoke Privileges"
    if kind.startswith("deprovision_"):
        return ACCOUNT_CHANGE, 99, "Other"
    if kind == "scim":
        return _scim(record)
    if kind == "request":
        return AUTHORIZE_SESSION, 99, "Authorize Request"
    if kind in ("audit_search", "audit_export"):
        return API_ACTIVITY, 2, "Read"
    return BASE_EVENT, 99, "Other"


def _scim(record: AccessRecord) -> tuple[int, int, str]:
    method = (record.method or "").upper()
    if "/Groups" in (record.path or ""):
        if method == "POST":
            return USER_ACCESS, 1, "Assign Privileges"
        if method == "DELETE":
            return USER_ACCESS, 2, "Revoke Privileges"
        return USER_ACCESS, 99, "Other"
    if method == "POST":
        return ACCOUNT_CHANGE, 1, "Create"
    if method == "DELETE":
        return ACCOUNT_CHANGE, 6, "Delete"
    return ACCOUNT_CHANGE, 99, "Other"


def _drop_none(value: dict[str, Any]) -> dict[str, Any]:
    return {key: item for key, item in value.items() if item is not None and item != {}}


def event(record: AccessRecord) -> dict[str, Any]:
    """The OCSF event of ``record`` as a JSON-ready mapping (no null attributes)."""
    class_uid, activity_id, activity_name = classify(record)
    category_uid = class_uid // 1000
    status_id, status = _STATUS[outcome(record)]
    user = _drop_none({"name": record.agent_name, "uid": record.agent_id})
    actor_name = record.actor or record.agent_name
    actor = {"user": _drop_none({"name": actor_name, "uid": None if record.actor else record.agent_id})}
    result: dict[str, Any] = {
        "category_uid": category_uid,
        "category_name": CATEGORIES[category_uid],
        "class_uid": class_uid,
        "class_name": CLASS_NAMES[class_uid],
        "activity_id": activity_id,
        "activity_name": activity_name,
        "type_uid": class_uid * 100 + activity_id,
        "severity_id": _SEVERITY[level(record)],
        "status_id": status_id,
        "status": status,
        "status_detail": record.reason,
        "time": epoch_ms(record.time),
        "message": record.kind if not failed(record) else f"{record.kind}: {record.decision or 'failed'}",
        "metadata": _drop_none(
            {
                "version": OCSF_VERSION,
                "product": {"name": PRODUCT, "vendor_name": PRODUCT, "version": VERSION},
                "uid": None if record.seq is None else str(record.seq),
                "sequence": record.chain_pos,
                "correlation_uid": record.request_id,
                "log_name": "access_log",
            }
        ),
        "user": user or None,
        "actor": actor if actor["user"] else None,
        "src_endpoint": {"ip": record.source_ip} if record.source_ip else None,
    }
    if record.method is not None or record.path is not None:
        result["http_request"] = _drop_none(
            {"http_method": record.method, "url": {"path": record.path} if record.path is not None else None}
        )
    if record.status is not None:
        result["http_response"] = {"code": record.status}
    if class_uid == USER_ACCESS:
        # Required by the class: what was granted or removed (access to a channel, or a group's privileges).
        result["privileges"] = [f"channel:{record.channel}" if record.channel else (record.path or record.kind)]
    if class_uid == API_ACTIVITY:
        result["api"] = {"operation": record.kind, "service": {"name": f"{PRODUCT} admin API"}}
        result["src_endpoint"] = result["src_endpoint"] or {"ip": "0.0.0.0"}  # noqa: S104 - required, not known
    unmapped = _drop_none(
        {
            "kind": record.kind,
            "decision": record.decision,
            "channel": record.channel,
            "subject": record.subject,
            "action": record.action,
            "actor": record.actor,
            "bytes_in": record.bytes_in,
            "bytes_out": record.bytes_out,
            "duration_ms": record.duration_ms,
            "detail": record.detail,
            "seq": record.seq,
            "chain_pos": record.chain_pos,
            "content_hash": record.content_hash,
            "prev_hash": record.prev_hash,
            "hash": record.hash,
            "purged": record.purged or None,
        }
    )
    result["unmapped"] = unmapped
    return _drop_none(result)


class Ocsf:
    name = "ocsf"
    media_type = "application/x-ndjson"

    def format(self, record: AccessRecord) -> str:
        return dumps(event(record))
