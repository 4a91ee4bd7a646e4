"""Which parts of the request context can change a decision, read from the policies themselves.

The decision cache (policies/engine.py) keys an answer on the request's context. Keyed on the raw context, the
clock alone (minute precision) would make nearly every answer new; but a channel whose policies never mention
``context.time`` decides the same all day, and one whose only time rule is "from 9:00 to 18:00" decides the same
within each of the three stretches those thresholds cut the day into. So, per channel slice, each context field
the policies read becomes one part of the key:

* compared only with literals (``context.time.minute_of_day >= 540``, ``context.network == "office"``): the key
  holds the field's place among those literals — for a number, the number of literals below it and whether it
  equals one (that settles every ``<  <=  >  >=  ==  !=`` against them); for a string or boolean, the value when
  it is one of the literals, else one marker for "none of them";
* used any other way (``context.amr.contains("otp")``, arithmetic, ``has``, the whole ``context``): the exact value;
* not read at all: left out.

This is exact, not a heuristic: two requests with the same key get the same answer from every policy of the slice.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from policies.decision import Context

#: Context fields as (path in the schema, how to read it from a Context).
FIELDS: dict[tuple[str, ...], Callable[[Context], object]] = {
    ("network",): lambda c: c.network,
    ("mfa",): lambda c: c.mfa,
    ("acr",): lambda c: c.acr,
    ("amr",): lambda c: c.amr,
    ("device",): lambda c: c.device,
    ("via",): lambda c: c.via,
    ("time", "weekday"): lambda c: c.time.weekday,
    ("time", "hour"): lambda c: c.time.hour,
    ("time", "minute_of_day"): lambda c: c.time.minute_of_day,
}
_COMPARISONS = frozenset({"==", "!=", "<", "<=", ">", ">="})
_OTHER = object()


@dataclass
class _Use:
    literals: set[Any] = field(default_factory=set)
    exact: bool = False


@dataclass(frozen=True, slots=True)
class ContextKey:
    """Maps a Context to the part of the decision cache's key the policies can tell apart."""

    parts: tuple[tuple[Callable[[Context], object], str, tuple[Any, ...]], ...]

    def __call__(self, context: Context) -> tuple[object, ...]:
        key: list[object] = []
        for read, mode, literals in self.parts:
            value = read(context)
            if mode == "exact":
                key.append(value)
            elif mode == "number":
                key.append((bisect.bisect_left(literals, value), value in literals))
            else:
                key.append(value if value in literals else _OTHER)
        return tuple(key)


def context_key(policies: Iterable[dict[str, Any]]) -> ContextKey:
    """The key function for a slice, given its policies' Cedar JSON (EST) forms."""
    uses: dict[tuple[str, ...], _Use] = {}
    everything = False
    for est in policies:
        for condition in est.get("conditions", ()):
            everything |= _walk(condition["body"], None, uses)
    # A record read as a whole (``context.time == ...``, ``context.time has hour``) makes each field in it exact.
    whole = [path for path, use in uses.items() if use.exact and path not in FIELDS]
    parts = []
    for path, read in FIELDS.items():
        use = uses.get(path)
        if everything or any(path[: len(prefix)] == prefix for prefix in whole) or (use is not None and use.exact):
            parts.append((read, "exact", ()))
        elif use is not None:
            literals = use.literals
            if literals and all(isinstance(v, int) and not isinstance(v, bool) for v in literals):
                parts.append((read, "number", tuple(sorted(literals))))
            else:
                parts.append((read, "value", tuple(literals)))
    return ContextKey(tuple(parts))


def _path(node: Any) -> tuple[str, ...] | None:
    """``context.a.b`` → ("a", "b"); anything else → None."""
    attrs: list[str] = []
    while isinstance(node, dict) and "." in node:
        attrs.append(node["."]["attr"])
        node = node["."]["left"]
    if node == {"Var": "context"}:
        return tuple(reversed(attrs))
    return None


def _literal(node: Any) -> tuple[bool, Any]:
    if isinstance(node, dict) and "Value" in node and not isinstance(node["Value"], (dict, list)):
        return True, node["Value"]
    return False, None


def _walk(node: Any, parent_op: str | None, uses: dict[tuple[str, ...], _Use]) -> bool:
    """Record every context field the expression reads; True when it reads the whole context."""
    if isinstance(node, list):
        return any([_walk(item, None, uses) for item in node])
    if not isinstance(node, dict):
        return False
    if node == {"Var": "context"}:
        return True  # the context as a whole (``context has x``, passed on): every field exactly
    path = _path(node)
    if path is not None:
        uses.setdefault(path, _Use()).exact = True
        return False
    for op, operands in node.items():
        if op in _COMPARISONS and isinstance(operands, dict):
            left, right = operands.get("left"), operands.get("right")
            for field_node, other in ((left, right), (right, left)):
                field_path = _path(field_node)
                is_literal, value = _literal(other)
                if field_path is not None and is_literal:
                    uses.setdefault(field_path, _Use()).literals.add(value)
                    break
            else:
                if _walk(left, op, uses) | _walk(right, op, uses):
                    return True
            continue
        if _walk(operands, op, uses):
            return True
    return False
