"""What /scim/v2 declares (RFC 7643 §5-7): User with the enterprise extension, Group, and our capabilities.

The policy is the tolerant reading IdPs need (research note §1, §6): unknown attributes and schema URNs are
dropped rather than refused (Microsoft's ADSCIM group URN, Entra's extra ``roles``/``meta`` on create), an
Entra ``remove`` with a value list removes those values, and an ``add`` to a filtered path that matches
nothing creates the entry. Bulk and sorting are not offered: every write goes through the single-resource
path that triggers deprovisioning, and paging is by a fixed, stable order.
"""

from __future__ import annotations

from typing import Annotated, ClassVar, Final

from scim2_models import (
    AnyExtension,
    AuthenticationScheme,
    Bulk,
    ChangePassword,
    ComplexAttribute,
    Email,
    EnterpriseUser,
    ETag,
    External,
    Filter,
    Group,
    GroupMember,
    Mutability,
    Patch,
    Reference,
    ResourceType,
    ScimPolicy,
    ScimProvider,
    ServiceProviderConfig,
    Sort,
    User,
)


class ScimGroupMember(GroupMember):
    """A member as we serve it: ``display`` is the member's userName, computed, so it is declared read-only
    (RFC 7643 §7: a client value is ignored, not stored). scim2-models leaves it readWrite, which would promise
    clients that a ``display`` they send comes back."""

    display: Annotated[str | None, Mutability.read_only] = None


class ScimGroup(Group):
    members: list[ScimGroupMember] | None = None  # type: ignore[assignment]

    Members: ClassVar[type[ComplexAttribute]] = ScimGroupMember


class ScimEmail(Email):
    """An email as we store it: any string. scim2-models checks it as a deliverable address (pydantic's
    ``EmailStr``), which refuses directory addresses such as ``jdoe@corp.local`` or ``jdoe@contoso``; RFC 7643
    §4.1.2 only says the value SHOULD follow RFC 5321, and the gateway never sends mail."""

    value: str | None = None
    """Email addresses for the user."""


class ScimUser(User[AnyExtension]):
    emails: list[ScimEmail] | None = None  # type: ignore[assignment]

    Emails: ClassVar[type[ComplexAttribute]] = ScimEmail


#: Largest page a search returns; a larger ``count`` is lowered to it (RFC 7644 §3.4.2.4).
MAX_RESULTS: Final = 200
#: Largest request body accepted, in bytes; a group with thousands of members still fits.
MAX_BODY_BYTES: Final = 1024 * 1024

TOLERANT_POLICY: Final = ScimPolicy(
    unknown=ScimPolicy.Unknown.ignore,
    remove_value_as_filter=ScimPolicy.RemoveValue.apply,
    unmatched_path_filter=ScimPolicy.UnmatchedPathFilter.create,
)

BEARER: Final = AuthenticationScheme(
    type=AuthenticationScheme.Type.oauthbearertoken,
    name="Bearer token",
    description="One token per IdP client: channelgate scim-tokens create NAME",
    spec_uri=Reference[External]("https://www.rfc-editor.org/rfc/rfc6750"),
    primary=True,
)


def service_provider_config() -> ServiceProviderConfig:
    return ServiceProviderConfig(
        patch=Patch(supported=True),
        bulk=Bulk(supported=False, max_operations=0, max_payload_size=0),
        filter=Filter(supported=True, max_results=MAX_RESULTS),
        change_password=ChangePassword(supported=False),
        sort=Sort(supported=False),
        etag=ETag(supported=True),
        authentication_schemes=[BEARER],
    )


def scim_provider() -> ScimProvider:
    return ScimProvider(
        models=[ScimUser, EnterpriseUser, ScimGroup],
        resource_types=[
            ResourceType.from_resource(ScimUser[EnterpriseUser]),
            ResourceType.from_resource(ScimGroup),
        ],
        config=service_provider_config(),
        policy=TOLERANT_POLICY,
    )
