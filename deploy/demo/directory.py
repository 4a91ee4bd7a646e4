"""The demo's directory push: what an IdP's SCIM client sends before anyone signs in.

alice, bob and carol are created over SCIM 2.0 (RFC 7644 §3.3) with carol as alice's and bob's manager (the
enterprise extension's ``manager``, RFC 7643 §4.3: the default successor for their open tickets), then the
groups the demo provider puts in its ID tokens. A login then links to the provisioned agent by userName
(``[scim] link_by``), and the directory, not the token, decides the agent's groups.
"""

from __future__ import annotations

import json
import urllib.request
from typing import Any

from deploy.demo.idp_store import ACCOUNTS

USER = "urn:ietf:params:scim:schemas:core:2.0:User"
ENTERPRISE = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"
GROUP = "urn:ietf:params:scim:schemas:core:2.0:Group"
#: Who hands over to whom when an agent leaves.
MANAGERS = {"alice": "carol", "bob": "carol"}


def _post(base_url: str, token: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
    request = urllib.request.Request(  # noqa: S310 - the demo's own loopback gateway
        f"{base_url}/scim/v2/{path}",
        data=json.dumps(body).encode(),
        method="POST",
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/scim+json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 - as above
        created: dict[str, Any] = json.load(response)
    return created


def provision(base_url: str, token: str) -> dict[str, str]:
    """Create the demo's users (managers first) and groups; returns userName → SCIM id."""
    ids: dict[str, str] = {}
    ordered = sorted(ACCOUNTS.values(), key=lambda a: a.username in MANAGERS)
    for account in ordered:
        body: dict[str, Any] = {
            "schemas": [USER],
            "userName": account.username,
            "displayName": account.name,
            "emails": [{"value": account.email, "primary": True}],
            "active": True,
        }
        manager = MANAGERS.get(account.username)
        if manager is not None:
            body["schemas"].append(ENTERPRISE)
            body[ENTERPRISE] = {"manager": {"value": ids[manager]}}
        ids[account.username] = str(_post(base_url, token, "Users", body)["id"])
    groups = sorted({group for account in ACCOUNTS.values() for group in account.groups})
    for group in groups:
        members = [{"value": ids[a.username]} for a in ACCOUNTS.values() if group in a.groups]
        _post(base_url, token, "Groups", {"schemas": [GROUP], "displayName": group, "members": members})
    return ids
