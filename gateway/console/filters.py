"""The console's log search form, read by the one search parser of ``gateway.audit.search`` (pure).

What is the form's own: the values as typed (trimmed, to refill the form), the next page's link and the page size.
Times in the form are UTC: ``datetime-local`` inputs carry no zone, the parser reads a time without an offset as
UTC, and the page says UTC next to them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from gateway.audit.search import FILTERS, Search, encode_cursor, parse_search
from gateway.storage.access_log import AccessRecord

PAGE_SIZE = 50


@dataclass(frozen=True, slots=True)
class SearchForm:
    """What the reviewer asked for: the values as typed and the search they make (one record more than a page, to
    know whether there is a next one)."""

    values: Mapping[str, str]
    search: Search

    def next_page(self, last: AccessRecord) -> dict[str, str]:
        """Query parameters of the page after ``last``: the same filters and a cursor."""
        params = {key: value for key, value in self.values.items() if value}
        params["before"] = encode_cursor(last)
        return params


def read_form(params: Mapping[str, str]) -> SearchForm:
    """Read the form (other parameters are ignored); the parser's ``BadRequest`` names the field to fix."""
    values = {name: params.get(name, "").strip() for name in FILTERS}
    search = parse_search({**values, "before": params.get("before")}, default_limit=PAGE_SIZE + 1)
    return SearchForm(values, search)
