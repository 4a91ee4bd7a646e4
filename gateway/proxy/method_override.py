"""What a console may run a POST as: the ``_method`` override.

Rails (Rack::MethodOverride), Laravel and Symfony (``Request::getMethod``), Spring (``HiddenHttpMethodFilter``) and
Express's method-override run a POST whose form field ``_method`` names another method as that method; Symfony,
Laravel and Spring read it from the query too, Laravel from a JSON body as well. The header spellings
(``X-HTTP-Method-Override`` …) are stripped (headers.py), but a field cannot be taken out of a body that streams,
so the gateway decides a POST as every method it may run as (``inline_proxy.check_request``):

- the query's ``_method`` values, always;
- the ``_method`` values of a form (urlencoded, or no Content-Type, which Rack reads as a form) or JSON body of
  known length up to 64 KiB (``data_access.MAX_BODY``), read whole (Starlette keeps it for the upstream);
- any method, for a body that may carry the field and is not read (chunked, larger, in forward-auth where no body
  reaches the gateway), is compressed, does not parse, or is a multipart one that holds ``method`` or an extended
  ``name*`` parameter anywhere (its parts are not parsed: a parser that differs from the console's is the
  classic bypass). Other media types (``application/octet-stream``, ``text/plain`` …) carry none.

A field name counts as the frameworks read it: exactly ``_method``, or what PHP stores under ``_method`` (leading
spaces dropped, `` `` ``.`` and an unclosed ``[`` made ``_``), or what Rack 2 does (brackets around it dropped).
A value counts upper-cased as a method token, as all of them read it; anything else is ignored by them.
Pure but for ``runs_as``, which reads the body.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import unquote_plus

from starlette.requests import HTTPConnection, Request

FIELD = "_method"
#: What a method is to the frameworks (Symfony ``[A-Z]+``, Rack's list, Node's ``M-SEARCH``).
_METHOD = re.compile(r"[A-Z][A-Z-]*")
#: Fields of one form whose name may be ``_method`` (it holds "method" or a ``%``) read one by one, at ~2 µs each;
#: past this many, any method (6,000 of them in 64 KiB would cost the event loop 12 ms).
_MAX_CANDIDATES = 256


@dataclass(frozen=True, slots=True)
class RunsAs:
    """The methods a console may run a request as besides its own: named ones, or ``any``."""

    methods: frozenset[str] = frozenset()
    any: bool = False
    #: For the refusal's message: where the override is, or why any method is possible.
    why: str = ""

    def __bool__(self) -> bool:
        return self.any or bool(self.methods)


NONE = RunsAs()


def _php_name(key: str) -> str:
    """The variable name PHP stores a form field under (``php_register_variable_ex``)."""
    name = key.lstrip(" ").replace(" ", "_").replace(".", "_")
    bracket = name.find("[")
    if bracket >= 0 and "]" not in name[bracket:]:
        name = name[:bracket] + "_" + name[bracket + 1 :]
    return name


def is_override_field(key: str) -> bool:
    return FIELD in (key, _php_name(key), key.lstrip("[]").rstrip("]"))


def _methods(values: Iterable[object]) -> frozenset[str]:
    found = set()
    for value in values:
        if isinstance(value, str):
            method = value.strip().upper()
            if _METHOD.fullmatch(method) and method != "POST":
                found.add(method)
    return frozenset(found)


def form_overrides(text: str) -> frozenset[str] | None:
    """Methods named by ``_method`` fields of urlencoded ``text`` (a query or a form body); None (any method) past
    ``_MAX_CANDIDATES`` fields that may be one. Split on ``&`` and on ``;`` (Rack 2 splits queries on both:
    reading more fields than a console does only adds decisions)."""
    if FIELD[1:] not in unquote_plus(text, errors="replace"):
        return frozenset()  # most forms: one pass over the text
    values = []
    candidates = 0
    for pair in re.split("[&;]", text):
        if FIELD[1:] not in pair and "%" not in pair:
            continue  # cannot decode to a name holding "method"
        key, equals, value = pair.partition("=")
        if FIELD[1:] not in key and "%" not in key:
            continue
        candidates += 1
        if candidates > _MAX_CANDIDATES:
            return None
        if "%" in key or "+" in key:
            key = unquote_plus(key, errors="replace")
        if equals and FIELD[1:] in key and is_override_field(key):
            values.append(unquote_plus(value, errors="replace"))
    return _methods(values)


def json_overrides(body: bytes) -> frozenset[str] | None:
    """Methods named by the top-level ``_method`` members of a JSON body (Laravel); None when it does not parse."""
    try:
        document = json.loads(body, object_pairs_hook=lambda pairs: pairs)
    except (ValueError, RecursionError):
        return None
    if not isinstance(document, list) or not all(isinstance(pair, tuple) for pair in document):
        return frozenset()  # an array or a scalar: no members
    return _methods(value for key, value in document if key == FIELD)


def _media_type(content_types: list[str]) -> str | None:
    """What a body may be read as: ``form``, ``multipart``, ``json``, or None when no console reads a method from
    it. No Content-Type is a form (Rack reads a POST without one so); several are read as the riskiest."""
    if not content_types:
        return "form"
    joined = ",".join(content_types).lower()
    if "multipart" in joined:
        return "multipart"
    if "json" in joined:  # Laravel: "/json" or "+json" anywhere in the header
        return "json"
    if "form" in joined:
        return "form"
    return None


def body_overrides(body: bytes, kind: str) -> frozenset[str] | None:
    """Methods a read body names; None when it may name any."""
    if kind == "json":
        return json_overrides(body)
    if kind == "multipart":
        lowered = body.lower()
        return None if b"method" in lowered or b"name*" in lowered else frozenset()
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        return None
    return form_overrides(text)


async def runs_as(connection: HTTPConnection, method: str, query: str, *, read_body: bool, max_body: int) -> RunsAs:
    """What a console may run this request as besides ``method``: only a POST is overridden (every framework
    above). ``read_body`` False (forward-auth: neither the body nor its headers reach the gateway) means any."""
    if method != "POST":
        return NONE
    from_query = form_overrides(query)
    if from_query is None:
        return RunsAs(any=True, why="its query could name one in a way the gateway does not read")
    named = from_query
    if not read_body or not isinstance(connection, Request):
        return RunsAs(named, any=True, why="its body, which the gateway does not see here, could name one")
    headers = connection.headers
    kind = _media_type(headers.getlist("content-type"))
    length = headers.get("content-length", "").strip()
    chunked = "transfer-encoding" in headers
    if kind is None or (not chunked and length in ("", "0")):
        return RunsAs(named, why="its _method query parameter") if named else NONE
    if chunked or not length.isdigit() or int(length) > max_body:
        return RunsAs(
            named, any=True, why=f"its body, which the gateway reads only up to {max_body} bytes, could name one"
        )
    encoding = headers.get("content-encoding", "identity").strip().lower()
    found = body_overrides(await connection.body(), kind) if encoding == "identity" else None
    if found is None:
        return RunsAs(named, any=True, why="its body could name one in a way the gateway does not read")
    named |= found
    return RunsAs(named, why="its _method field") if named else NONE
