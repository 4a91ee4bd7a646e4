"""Which customer's personal data a request touches, and what it does with it (the access log's ``subject`` and
``action``), from the route's ``[[routes.data]]`` rules.

PIPA's safety-measure standard (art. 8) wants every access record of a personal-data handler to say whose data
was handled and how ("view / change / download / export"), so a monthly review can ask why something was
downloaded. Consoles put the customer id in the path (``/crm/customers/C-1/``), a query (``?customerId=C-1``) or
the body of a form or JSON call: a rule names where. Rules are compiled once to one regular expression each;
a route without rules costs one dictionary lookup per request.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from urllib.parse import parse_qs

from gateway.settings import DataRuleSettings, RouteSettings

#: Bodies read to find a subject: larger ones are not buffered (the request streams on, subject unknown).
MAX_BODY = 64 * 1024
#: A subject longer than this is cut (a customer id is short; the column holds 256).
MAX_SUBJECT = 128
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
#: The method a WebSocket upgrade is classified as. A rule naming it applies to upgrades alone; rules naming GET
#: apply to them too (an upgrade is a GET, RFC 6455 §4.1), as they always did.
WEBSOCKET = "WEBSOCKET"
_UPGRADE_METHODS = frozenset({WEBSOCKET, "GET"})
#: What a POST may be run as when its ``_method`` could not be read (gateway/proxy/method_override.py): these,
#: every method a rule names, and one no rule names (``UNNAMED_METHOD``: the default action, rules without methods).
_USUAL_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "PATCH", "DELETE"})
UNNAMED_METHOD = "(another method)"


@dataclass(frozen=True, slots=True)
class DataAccess:
    subject: str | None
    action: str
    pii: str | None = None
    #: Set when the subject is in the body and the body must be read first (``subject_from_body``).
    body_field: str | None = None


def default_action(method: str) -> str:
    return "view" if method in _SAFE_METHODS or method == WEBSOCKET else "change"


def _pattern(path: str) -> re.Pattern[str]:
    parts = []
    for piece in re.split(r"(\{[A-Za-z_][A-Za-z0-9_]*\}|\*\*|\*)", path):
        if piece == "**":
            parts.append(".*")
        elif piece == "*":
            parts.append("[^/]*")
        elif piece.startswith("{") and piece.endswith("}"):
            parts.append(f"(?P<{piece[1:-1]}>[^/]+)")
        else:
            parts.append(re.escape(piece))
    # Case-insensitive: a console on a case-insensitive server (IIS, some Java routers) serves /CRM/Customers/ as
    # /crm/customers/, so a rule (and the policy that reads its data class) must not be bypassed by spelling.
    return re.compile("".join(parts) + "/?", re.IGNORECASE)


def clean(value: str) -> str | None:
    """A subject as it may be logged: no control characters, bounded length; None when empty."""
    value = _CONTROL.sub("", value).strip()[:MAX_SUBJECT]
    return value or None


@dataclass(frozen=True, slots=True)
class _Rule:
    pattern: re.Pattern[str]
    methods: frozenset[str]
    action: str | None
    source: str | None
    name: str
    pii: str | None

    @classmethod
    def of(cls, rule: DataRuleSettings) -> _Rule:
        source, _, name = (rule.subject or "").partition(":")
        return cls(_pattern(rule.path), frozenset(rule.methods), rule.action, source or None, name, rule.pii)


class DataRules:
    """The compiled rules of one route."""

    def __init__(self, rules: Sequence[DataRuleSettings]) -> None:
        self._rules = tuple(_Rule.of(rule) for rule in rules)
        self.methods = frozenset(method for rule in self._rules for method in rule.methods)

    def classify(self, method: str, path: str, query: str, headers: Mapping[str, str]) -> DataAccess:
        """Subject and action of a request (``path`` normalised, ``query`` raw); a body subject is left to
        ``subject_from_body`` once the body was read."""
        for rule in self._rules:
            if rule.methods and (
                rule.methods.isdisjoint(_UPGRADE_METHODS) if method == WEBSOCKET else method not in rule.methods
            ):
                continue
            found = rule.pattern.fullmatch(path)
            if found is None:
                continue
            action = rule.action or default_action(method)
            subject: str | None = None
            if rule.source == "path":
                subject = clean(found.group(rule.name))
            elif rule.source == "query":
                values = parse_qs(query, keep_blank_values=False).get(rule.name)
                subject = clean(values[0]) if values else None
            elif rule.source == "header":
                value = headers.get(rule.name.lower())
                subject = clean(value) if value else None
            elif rule.source == "body":
                return DataAccess(None, action, rule.pii, body_field=rule.name)
            return DataAccess(subject, action, rule.pii)
        return DataAccess(None, default_action(method))


def classify(rules: DataRules | None, method: str, path: str, query: str, headers: Mapping[str, str]) -> DataAccess:
    """``rules.classify``, or the method's default action for a route without rules."""
    if rules is None:
        return DataAccess(None, default_action(method))
    return rules.classify(method, path, query, headers)


def override_candidates(rules: DataRules | None) -> frozenset[str]:
    """Every method whose rules could decide a POST differently, for a POST that may run as any method."""
    named = rules.methods if rules is not None else frozenset()
    return (_USUAL_METHODS | named | {UNNAMED_METHOD}) - {"POST", WEBSOCKET}


def subject_from_body(body: bytes, content_type: str, field: str) -> str | None:
    """The subject in a JSON body (``field`` dotted for nested members) or a form body; None if absent."""
    kind = content_type.split(";", 1)[0].strip().lower()
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        return None
    if kind == "application/x-www-form-urlencoded":
        values = parse_qs(text).get(field)
        return clean(values[0]) if values else None
    if kind == "application/json" or kind.endswith("+json"):
        try:
            value: object = json.loads(text)
        except ValueError:
            return None
        for part in field.split("."):
            if not isinstance(value, dict) or part not in value:
                return None
            value = value[part]
        if isinstance(value, str | int) and not isinstance(value, bool):
            return clean(str(value))
    return None


def compile_routes(routes: Sequence[RouteSettings]) -> dict[int, DataRules]:
    """Rules by ``id(route)`` for the routes that have any."""
    return {id(route): DataRules(route.data) for route in routes if route.data}
