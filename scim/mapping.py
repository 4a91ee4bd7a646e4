"""SCIM resources ↔ our rows, with no I/O (RFC 7643 §4).

A SCIM user is an agent: the attributes the gateway and the filters use live in indexed columns, and the whole
SCIM representation is kept in ``agents.attributes`` so an IdP reads back what it wrote. The columns win on
read: an agent created at first login (no SCIM representation) still reads as a User. ``password`` is never
stored (Okta sends a dummy one); ``groups`` is computed from the memberships; ``id`` and ``meta`` are ours.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, Final

from scim2_models import (
    Context,
    EnterpriseUser,
    Group,
    Meta,
    User,
)

from gateway.storage._time import from_db
from gateway.storage.agents import user_name_key
from gateway.storage.groups import Group as GroupRow
from gateway.storage.limits import unstorable
from gateway.storage.schema import agents, groups
from scim.provider import ScimGroup, ScimGroupMember, ScimUser
from scim.urns import ENTERPRISE_USER_SCHEMA, USER_SCHEMA

UserModel: Final = ScimUser[EnterpriseUser]
#: Never kept in ``agents.attributes``: ours (id, meta), computed (groups), or never stored (password).
_NOT_STORED: Final = frozenset({"id", "meta", "password", "groups"})
#: The SCIM attribute each indexed column holds, as the IdP's admin knows it.
_USER_ATTRIBUTES: Final = {
    "user_name": "userName",
    "user_name_key": "userName",
    "external_id": "externalId",
    "display_name": "displayName",
    "email": "emails.value",
    "employee_number": f"{ENTERPRISE_USER_SCHEMA}:employeeNumber",
    "manager_id": f"{ENTERPRISE_USER_SCHEMA}:manager.value",
}
_GROUP_ATTRIBUTES: Final = {"display_name": "displayName", "external_id": "externalId"}


def etag(version: int) -> str:
    """``meta.version`` is a weak ETag of the row version (RFC 7644 §3.14)."""
    return f'W/"{version}"'


def version_of(text: str) -> int | None:
    """The row version named by an ETag we issued; None for any other string (it then matches nothing)."""
    value = text.strip().removeprefix("W/").strip('"')
    return int(value) if value.isdigit() else None


def work_email(user: User[Any]) -> str | None:
    """The one searchable email: the work one, else the primary one, else the first."""
    emails = [email for email in user.emails or [] if email.value]
    chosen = (
        next((e for e in emails if e.type == "work"), None) or next((e for e in emails if e.primary), None)
        if emails
        else None
    )
    chosen = chosen or (emails[0] if emails else None)
    return None if chosen is None else str(chosen.value)


def user_columns(user: User[Any]) -> dict[str, Any]:
    """The indexed columns of ``agents`` for a User; ``active`` is left to the caller (lifecycle)."""
    enterprise = user[EnterpriseUser]
    manager = enterprise.manager if enterprise is not None else None
    assert user.user_name is not None  # required in every request context, checked by the engine
    return {
        "user_name": user.user_name,
        "user_name_key": user_name_key(user.user_name),
        "external_id": user.external_id,
        "display_name": user.display_name,
        "email": work_email(user),
        "employee_number": enterprise.employee_number if enterprise is not None else None,
        "manager_id": manager.value if manager is not None else None,
        "attributes": stored_attributes(user),
    }


def unstorable_user(columns: Mapping[str, Any]) -> str | None:
    """Why ``user_columns`` cannot be stored, naming the attribute (``unstorable``), or None."""
    return unstorable(agents, _USER_ATTRIBUTES, columns)


def unstorable_group(display_name: str, external_id: str | None) -> str | None:
    """Why a group cannot be stored, naming the attribute (``unstorable``), or None."""
    return unstorable(groups, _GROUP_ATTRIBUTES, {"display_name": display_name, "external_id": external_id})


def stored_attributes(user: User[Any]) -> dict[str, Any]:
    dumped: dict[str, Any] = user.model_dump(scim_ctx=Context.RESOURCE_QUERY_RESPONSE)
    return {key: value for key, value in dumped.items() if key not in _NOT_STORED}


def user_document(row: Any, groups: Sequence[tuple[str, str]]) -> dict[str, Any]:
    """The stored SCIM representation of an ``agents`` row and its (group id, displayName) memberships.

    References are relative (``Users/{id}``) and ``meta`` has no location: the engine publishes both against
    the base URL. The columns win over ``attributes`` (an agent created at login, or changed by another source,
    has columns the stored representation does not know about).
    """
    document: dict[str, Any] = dict(row["attributes"] or {})
    schemas = list(document.get("schemas") or [USER_SCHEMA])
    document |= {"id": row["id"], "userName": row["user_name"], "active": bool(row["active"])}
    for key, column in (("externalId", "external_id"), ("displayName", "display_name")):
        if row[column] is None:
            document.pop(key, None)
        else:
            document[key] = row[column]
    if row["email"] and not document.get("emails"):
        document["emails"] = [{"value": row["email"], "type": "work", "primary": True}]
    if row["employee_number"] is not None or row["manager_id"] is not None:
        enterprise = dict(document.get(ENTERPRISE_USER_SCHEMA) or {})
        _set_or_drop(enterprise, "employeeNumber", row["employee_number"])
        manager = enterprise.get("manager") or {}
        if row["manager_id"] is None:
            enterprise.pop("manager", None)
        elif manager.get("value") != row["manager_id"]:
            enterprise["manager"] = {"value": row["manager_id"], "$ref": f"Users/{row['manager_id']}"}
        document[ENTERPRISE_USER_SCHEMA] = enterprise
        if ENTERPRISE_USER_SCHEMA not in schemas:
            schemas.append(ENTERPRISE_USER_SCHEMA)
    document["schemas"] = schemas
    if groups:
        document["groups"] = [
            {"value": group_id, "$ref": f"Groups/{group_id}", "display": name, "type": "direct"}
            for group_id, name in groups
        ]
    document["meta"] = {
        "resourceType": "User",
        "created": _timestamp(from_db(row["created_at"])),
        "lastModified": _timestamp(from_db(row["updated_at"])),
        "version": etag(row["version"]),
    }
    return document


def user_resource(row: Any, groups: Sequence[tuple[str, str]]) -> User[Any]:
    """The User for an ``agents`` row and its memberships, as the SCIM engine handles it."""
    return UserModel.model_validate(user_document(row, groups), scim_ctx=None)


def _set_or_drop(target: dict[str, Any], key: str, value: Any) -> None:
    if value is None:
        target.pop(key, None)
    else:
        target[key] = value


def _timestamp(moment: datetime) -> str:
    """RFC 3339 in UTC with a ``Z``, as scim2-models writes it (RFC 7643 §2.3.5)."""
    return moment.isoformat().replace("+00:00", "Z")


def group_resource(group: GroupRow) -> ScimGroup:
    resource = ScimGroup(
        id=group.id,
        display_name=group.display_name,
        external_id=group.external_id,
        members=[
            ScimGroupMember(
                value=member.agent_id, display=member.user_name, type="User", ref=f"Users/{member.agent_id}"
            )
            for member in group.members
        ]
        or None,
    )
    resource.meta = _meta("Group", group.created_at, group.updated_at, group.version)
    return resource


def member_ids(group: Group) -> list[str]:
    return [member.value for member in group.members or [] if member.value]


def _meta(resource_type: str, created: datetime, updated: datetime, version: int) -> Meta:
    return Meta(resource_type=resource_type, created=created, last_modified=updated, version=etag(version))
