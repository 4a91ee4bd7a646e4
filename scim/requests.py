"""Pure rules on raw SCIM request bodies, applied before the protocol engine sees them.

* Entra sends the enterprise ``manager`` as a bare id string (SCIM-SDK#686, apache/directory-scimple#1242)
  where RFC 7643 §4.3 has a complex ``{"value": id}``; it is rewritten to the RFC form.
* A group member's ``display`` is read-only here (we answer the member's userName, ``scim.provider``), and
  RFC 7643 §7 has a client's value for a read-only attribute ignored: Okta's group push sends one with every
  member, so it is dropped instead of failing the request with ``mutability``.
* Whether a request disables the user is read here, from the raw body, so that a PATCH whose ``active=false``
  comes with an operation that fails still disables the agent (fail closed): the deactivation must not depend
  on the rest of the request being valid.
"""

from __future__ import annotations

import json
from typing import Any, Final

ENTERPRISE: Final = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:user"
_MANAGER_PATHS: Final = frozenset({"manager", f"{ENTERPRISE}:manager"})


def parse(body: bytes) -> Any:
    """The JSON body, or None when it is not JSON (the engine then reports invalidSyntax)."""
    try:
        return json.loads(body) if body else None
    except (ValueError, UnicodeDecodeError):
        return None


def _is_false(value: Any) -> bool:
    """``false``, or Entra's string ``"False"`` (any case)."""
    return value is False or (isinstance(value, str) and value.strip().lower() == "false")


def _manager(value: Any) -> Any:
    """``{"value": id, "$ref": "Users/id"}`` from a bare id, a one-item list, or a complex value without ``$ref``.

    The reference is relative to the SCIM root, as RFC 7643 §2.3.7 allows; the engine requires one.
    """
    if isinstance(value, str):
        value = {"value": value} if value else None
    elif isinstance(value, list) and len(value) == 1 and isinstance(value[0], dict):
        value = value[0]
    if isinstance(value, dict) and isinstance(value.get("value"), str) and not value.get("$ref"):
        value = {**value, "$ref": f"Users/{value['value']}"}
    return value


def _without_display(members: Any) -> Any:
    if not isinstance(members, list):
        return members
    return [
        {k: v for k, v in member.items() if k.lower() != "display"} if isinstance(member, dict) else member
        for member in members
    ]


def _normalise_resource(resource: dict[str, Any]) -> None:
    for key, value in resource.items():
        if key.lower() == "members":
            resource[key] = _without_display(value)
        elif key.lower() == ENTERPRISE and isinstance(value, dict):
            for sub in value:
                if sub.lower() == "manager":
                    value[sub] = _manager(value[sub])
        elif key.lower() == f"{ENTERPRISE}:manager":
            resource[key] = _manager(value)


def normalise(method: str, body: Any) -> Any:
    """The body with IdP deviations rewritten to RFC 7643/7644 forms; anything else is returned unchanged."""
    if not isinstance(body, dict):
        return body
    if method in ("POST", "PUT"):
        _normalise_resource(body)
    elif method == "PATCH":
        for operation in _operations(body):
            path = operation.get("path")
            if isinstance(path, str) and path.lower() in _MANAGER_PATHS:
                operation["value"] = _manager(operation.get("value"))
            elif isinstance(path, str) and path.lower() == "members":
                operation["value"] = _without_display(operation.get("value"))
            elif path is None and isinstance(operation.get("value"), dict):
                _normalise_resource(operation["value"])
    return body


def _operations(body: dict[str, Any]) -> list[dict[str, Any]]:
    operations = next((v for k, v in body.items() if k.lower() == "operations"), None)
    return [op for op in operations if isinstance(op, dict)] if isinstance(operations, list) else []


def deactivates(method: str, body: Any) -> bool:
    """Whether a PUT or PATCH body sets ``active`` to false, in any of the forms IdPs send.

    PATCH: ``{"op":"Replace","path":"active","value":"False"}`` (Entra), ``{"op":"replace","value":{"active":
    false}}`` (Okta OIN); PUT: ``"active": false`` (Okta AIW).
    """
    if not isinstance(body, dict):
        return False
    if method == "PUT":
        return any(k.lower() == "active" and _is_false(v) for k, v in body.items())
    if method != "PATCH":
        return False
    for operation in _operations(body):
        if str(operation.get("op", "")).lower() not in ("replace", "add"):
            continue
        path, value = operation.get("path"), operation.get("value")
        if isinstance(path, str):
            if path.lower() in ("active", "urn:ietf:params:scim:schemas:core:2.0:user:active") and _is_false(value):
                return True
        elif isinstance(value, dict) and any(
            k.lower() in ("active", "urn:ietf:params:scim:schemas:core:2.0:user:active") and _is_false(v)
            for k, v in value.items()
        ):
            return True
    return False
