"""SCIM protocol errors (RFC 7644 §3.12), rendered once, at the SCIM edge, as an ``Error`` resource.

Each class carries its HTTP ``status`` and ``scim_type``; the message becomes the Error's ``detail`` and names
what the client must change. It never contains stored data.

    ChannelgateError (gateway.errors)
    └── ScimError                 400
        ├── InvalidFilter         400  invalidFilter   bad syntax, unknown attribute, unsupported operator
        ├── TooMany               400  tooMany         the query would return too many results
        ├── Uniqueness            409  uniqueness      a unique attribute (userName) is already taken
        ├── Mutability            400  mutability      a readOnly or immutable attribute was changed
        ├── InvalidSyntax         400  invalidSyntax   the request body is not valid JSON / SCIM
        ├── InvalidPath           400  invalidPath     a PATCH path is malformed
        ├── NoTarget              400  noTarget        a PATCH path matched nothing
        ├── InvalidValue          400  invalidValue    a value has the wrong type or is missing
        ├── InvalidVersion        400  invalidVers     the SCIM protocol version is not supported
        ├── Sensitive             400  sensitive       sensitive data was sent in the URI
        └── Busy                  503                  concurrent writes kept changing the resource; retry
"""

from __future__ import annotations

from typing import ClassVar

from gateway.errors import ChannelgateError


class ScimError(ChannelgateError):
    """Base of the SCIM errors; ``scim_type`` is None when RFC 7644 §3.12 defines no ``scimType`` for it."""

    status = 400
    code = "scim_error"
    scim_type: ClassVar[str | None] = None


class InvalidFilter(ScimError):
    """The filter is malformed or names an attribute or operator we do not filter on (RFC 7644 §3.4.2.2)."""

    code = "scim_invalid_filter"
    scim_type = "invalidFilter"


class TooMany(ScimError):
    code = "scim_too_many"
    scim_type = "tooMany"


class Uniqueness(ScimError):
    status = 409
    code = "scim_uniqueness"
    scim_type = "uniqueness"


class Mutability(ScimError):
    code = "scim_mutability"
    scim_type = "mutability"


class InvalidSyntax(ScimError):
    code = "scim_invalid_syntax"
    scim_type = "invalidSyntax"


class InvalidPath(ScimError):
    code = "scim_invalid_path"
    scim_type = "invalidPath"


class NoTarget(ScimError):
    code = "scim_no_target"
    scim_type = "noTarget"


class InvalidValue(ScimError):
    code = "scim_invalid_value"
    scim_type = "invalidValue"


class InvalidVersion(ScimError):
    code = "scim_invalid_version"
    scim_type = "invalidVers"


class Sensitive(ScimError):
    code = "scim_sensitive"
    scim_type = "sensitive"


class Busy(ScimError):
    """Other replicas kept writing the resource while the request was applied to it (``scim.handler``): a 503
    with Retry-After, which IdPs retry, rather than a 412 the client's preconditions did not cause."""

    status = 503
    code = "scim_busy"
