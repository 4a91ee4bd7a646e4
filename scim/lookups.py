"""The IdPs' lookup, answered without the generic search: ``GET /Users?filter=userName eq "…"``.

Okta looks a user up by ``userName`` before every create and on every import; Entra ID looks up by ``userName``
or ``externalId`` before every sync of a user (research note §1, §2). Through scim2-server the lookup costs
~8 ms of CPU here (docs/benchmarks.md §3): the search request, each resource and the ListResponse are each
validated and dumped by pydantic, and the stored JSON is validated once more to become a ``User``. This path
answers the same request from the stored document (``scim.mapping.user_document``) with two indexed reads, and
hands anything else (other filters, ``attributes``, ``sortBy``, a count we would cap) to the engine.

The attribute and its literal still go through ``scim.filters`` (same attribute table, same case rules, same
string decoding, never widened); the answer equals the engine's ListResponse, which
``tests/scim/test_properties.py`` checks against the engine itself over random user states.
"""

from __future__ import annotations

import re
from http import HTTPStatus
from typing import Any, Final
from urllib.parse import urlsplit

from scim2_server.requests import ScimRequest
from scim2_server.responses import ScimResponse

from scim.errors import InvalidFilter
from scim.filters import user_equality
from scim.provider import MAX_RESULTS
from scim.storage import DatabaseStorage
from scim.urns import ENTERPRISE_USER_SCHEMA, LIST_RESPONSE

#: An equality on an attribute a unique or selective index answers; a string literal with RFC 7159 escapes.
_INDEXED_EQUALITY: Final = re.compile(r'\s*(userName|externalId|id)\s+eq\s+("(?:[^"\\]|\\.)*")\s*', re.IGNORECASE)
_PARAMETERS: Final = frozenset({"filter", "startIndex", "count"})


def _positive(text: str | None, default: int) -> int | None:
    """A query integer the engine would take as it is; None for anything it would adjust or refuse."""
    if text is None:
        return default
    return int(text) if text.isascii() and text.isdigit() and 0 < int(text) <= 1_000_000 else None


class Lookups:
    def __init__(self, storage: DatabaseStorage, base_url: str) -> None:
        self._storage = storage
        self._base_url = base_url.rstrip("/")

    @staticmethod
    def _plan(request: ScimRequest) -> tuple[str, str, int, int] | None:
        """(attribute, string literal, startIndex, count) when this path answers exactly as the engine would."""
        if request.method.upper() != "GET" or request.path != "/Users" or not _PARAMETERS.issuperset(request.query):
            return None
        text = request.query.get("filter")
        start, count = _positive(request.query.get("startIndex"), 1), _positive(request.query.get("count"), MAX_RESULTS)
        if text is None or start is None or count is None or count > MAX_RESULTS:
            return None
        equality = _INDEXED_EQUALITY.fullmatch(text)
        if equality is None:
            return None
        return equality[1], equality[2], start, count

    async def answer(self, request: ScimRequest) -> ScimResponse | None:
        """The ListResponse for an authenticated indexed lookup, or None to let the engine serve the request."""
        plan = self._plan(request)
        if plan is None:
            return None
        attribute, literal, start, count = plan
        try:
            column, value = user_equality(attribute, literal)
        except InvalidFilter:
            return None  # the engine renders the invalidFilter error
        total, documents = await self._storage.lookup_users(column, value, start - 1, count)
        return ScimResponse(
            HTTPStatus.OK,
            {
                "schemas": [LIST_RESPONSE],
                "totalResults": total,
                "startIndex": start,
                "itemsPerPage": len(documents),
                "Resources": [self._published(document) for document in documents],
            },
        )

    def _published(self, document: dict[str, Any]) -> dict[str, Any]:
        """References as URLs and ``meta.location`` set, as the engine publishes a resource (RFC 7643 §2.3.7)."""
        document["meta"]["location"] = f"{self._base_url}/Users/{document['id']}"
        for group in document.get("groups", ()):
            group["$ref"] = self._absolute(group["$ref"])
        manager = (document.get(ENTERPRISE_USER_SCHEMA) or {}).get("manager")
        if manager and manager.get("$ref"):
            manager["$ref"] = self._absolute(manager["$ref"])
        return document

    def _absolute(self, reference: str) -> str:
        return reference if urlsplit(reference).scheme or reference.startswith("/") else f"{self._base_url}/{reference}"
