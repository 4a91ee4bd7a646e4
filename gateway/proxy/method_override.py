"""What a console may run a POST as: the ``_method`` override.

Rails (Rack::MethodOverride), Laravel and Symfony (``Request::getMethod``), Spring (``HiddenHttpMethodFilter``) and
Express's method-override run a POST whose form field ``_method`` names another method as that method; Symfony,
Laravel and Spring read it from the query too, Laravel from a JSON body as well. The header spellings
(``X-HTTP-Method-Override`` …) are stripped (headers.py), but a field cannot be taken out of a body that streams,
so the gateway decides a POST as every method it may run as (``inline_proxy.check_request``):

- the query's ``_method`` values, always;
- the ``_method`` values of a form (urlencoded, or no or an empty Content-Type, which Rack reads as a form) or JSON
  body of known length up to 64 KiB (``data_access.MAX_BODY``), read whole (Starlette keeps it for the upstream),
  and read as each of these it may be when several Content-Types are sent;
- any method, for a body that may carry the field and is not read (chunked, larger, in forward-auth where no body
  reaches the gateway), is compressed, does not parse, or is a multipart one that holds ``method`` anywhere or a
  part name the gateway cannot read as every parser does (its parts are not parsed: a parser that differs from the
  console's is the classic bypass). Other media types (``application/octet-stream``, ``text/plain`` …) carry none.

A field name counts as the frameworks read it: exactly ``_method``, or what PHP stores under ``_method`` (the name
ends at a NUL, leading spaces dropped, `` `` ``.`` and an unclosed ``[`` made ``_``: ``php_register_variable_ex``),
or what Rack 2 does (brackets around it dropped).
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
    """The variable name PHP stores a form field under (``php_register_variable_ex``, which takes it as a C string:
    ``_method%00x`` is ``_method``)."""
    name = key.partition("\0")[0].lstrip(" ").replace(" ", "_").replace(".", "_")
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


def _media_types(content_types: list[str]) -> frozenset[str]:
    """What a body may be read as: ``form``, ``multipart``, ``json``; none when no console reads a method from it.
    No Content-Type is a form, and so is an empty one or one without a media type (Rack reads a POST whose
    ``CONTENT_TYPE`` is nil or empty so: ``Rack::Request#form_data?``). Several are read as each they may be."""
    if not content_types or any(not re.split("[;,]", value)[0].strip() for value in content_types):
        kinds = {"form"}
    else:
        kinds = set()
    joined = ",".join(content_types).lower()
    if "multipart" in joined:
        return frozenset({"multipart"})  # any method if it mentions one: the riskiest reading covers the others
    if "json" in joined:  # Laravel: "/json" or "+json" anywhere in the header
        kinds.add("json")
    if "form" in joined:
        kinds.add("form")
    return frozenset(kinds)


#: A part's ``name`` parameter (on the lower-cased body) whose value the parsers may read otherwise than spelled: a
#: backslash or an RFC 2047 ``=?`` in it, or a quoted one left open at the line's end. Looked for anywhere (the
#: parts are not split: a match outside a part's head only costs a decision). Linear: no run is scanned from two
#: starts (an unquoted value ends at an ``=``, as a token does, and a quoted one at a quote).
_HIDDEN_NAME = re.compile(rb'name\s*+=\s*+(?:"(?:[^"\\\r\n=]++|=(?!\?))*+(?:\\|=\?|\r|\n|\Z)|[^;\r\n\\=]*+(?:\\|=\?))')
#: What may not precede a part's ``name`` (``filename=`` is not one).
_NOT_A_NAME = re.compile(rb"[\w-]")


def _multipart_may_name_any(body: bytes) -> bool:
    """Whether a multipart body may name a ``_method`` part: it mentions ``method`` anywhere (PHP's name rules,
    Rack's ``Content-ID`` as a name), or a part name is one the parsers read otherwise than spelled: backslash
    escapes (Rack drops every backslash before a character, PHP those before a backslash or a quote), RFC 2231
    ``name*=`` (busboy, Go, commons-fileupload decode it though RFC 7578 §4.2 forbids it), RFC 2047 ``=?…?=``
    words (commons-fileupload decodes them) or a quote left open at the line's end."""
    lowered = body.lower()
    if b"method" in lowered or b"name*" in lowered:
        return True
    return any(
        not _NOT_A_NAME.fullmatch(lowered, match.start() - 1, match.start()) for match in _HIDDEN_NAME.finditer(lowered)
    )


def body_overrides(body: bytes, kind: str) -> frozenset[str] | None:
    """Methods a read body names; None when it may name any."""
    if kind == "json":
        return json_overrides(body)
    if kind == "multipart":
        return None if _multipart_may_name_any(body) else frozenset()
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
    kinds = _media_types(headers.getlist("content-type"))
    length = headers.get("content-length", "").strip()
    chunked = "transfer-encoding" in headers
    if not kinds or (not chunked and length in ("", "0")):
        return RunsAs(named, why="its _method query parameter") if named else NONE
    if chunked or not length.isdigit() or int(length) > max_body:
        return RunsAs(
            named, any=True, why=f"its body, which the gateway reads only up to {max_body} bytes, could name one"
        )
    encoding = headers.get("content-encoding", "identity").strip().lower()
    if encoding != "identity":
        return RunsAs(named, any=True, why="its body could name one in a way the gateway does not read")
    body = await connection.body()
    for kind in sorted(kinds):
        found = body_overrides(body, kind)
        if found is None:
            return RunsAs(named, any=True, why="its body could name one in a way the gateway does not read")
        named |= found
    return RunsAs(named, why="its _method field") if named else NONE
