"""Kinds of access record that retention and ``audit verify`` treat apart."""

from __future__ import annotations

#: The record a purge writes, naming the anchor verification starts from (gateway/audit/retention.py).
PURGE_KIND = "audit_purge"
#: Records of access-right grants and removals (PIPA art. 5 keeps their history 3 years): provisioning by SCIM
#: and LDAP, deprovisioning and each of its steps, approvals and retries of held runs, sessions revoked.
GRANT_KINDS = frozenset(
    {
        "scim",
        "ldap",
        "deprovision",
        "deprovision_step",
        "deprovision_complete",
        "deprovision_held",
        "deprovision_approved",
        "deprovision_retried",
        "sessions_revoked",
        "security_event",
        PURGE_KIND,
    }
)
