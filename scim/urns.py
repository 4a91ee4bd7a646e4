"""The schema and message URNs of SCIM 2.0 (RFC 7643 §3, §8.7; RFC 7644 §3.4.2, §3.5.2)."""

from typing import Final

USER_SCHEMA: Final = "urn:ietf:params:scim:schemas:core:2.0:User"
GROUP_SCHEMA: Final = "urn:ietf:params:scim:schemas:core:2.0:Group"
ENTERPRISE_USER_SCHEMA: Final = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"
LIST_RESPONSE: Final = "urn:ietf:params:scim:api:messages:2.0:ListResponse"
