"""Path canonicalisation: decide, before any route matching, the exact path the upstream will see.

The gateway authorises on a path and the upstream routes on a path; if the two parse the same bytes differently,
authorisation is bypassed (CWE-551, CWE-706). So the gateway produces one canonical form, decides on it, and sends
exactly that form upstream. Ambiguous spellings are refused rather than guessed:

* ``..`` / ``.`` dot-segments, literal or encoded (``%2e%2e``, ``.%2e``) are refused: traversal past a prefix
  check (Envoy CVE-2019-9901, Apache CVE-2021-41773). Browsers remove dot-segments before sending, so only
  hand-made requests carry them.
* ``%2f`` and ``%5c`` are refused: an upstream that decodes them sees an extra segment the gateway did not
  (Apache Shiro CVE-2020-11989, Tomcat CVE-2007-0450). Literal ``\\`` is refused for the same reason: Windows
  servers and some routers treat it as a separator.
* ``;`` (and ``%3b``) is refused: Tomcat, Jetty and Spring strip ``;params`` from a segment, so ``/a/..;/admin``
  is a traversal to the upstream while the gateway sees a segment named ``..;`` (Orange Tsai's "Breaking Parser
  Logic", Apache Shiro CVE-2020-1957 and, encoded, CVE-2020-13933; Keycloak behind a prefix proxy).
* NUL and control characters, raw or encoded, are refused: truncation and splitting at the upstream
  (nginx CVE-2013-4547, Jetty CVE-2021-34429).
* ``%25`` followed by two hex digits is refused: a double-decoding upstream would turn ``%252e`` into ``.``
  (Apache CVE-2021-42013, Shiro CVE-2020-11989). A ``%`` not followed by two hex digits (``%u002e``) is invalid
  percent-encoding and refused.
* Segments that become ``..`` or contain a separator after Unicode NFKC (fullwidth full stop U+FF0E, fullwidth
  solidus U+FF0F) are refused: some upstream stacks apply compatibility normalisation after our check.
* ``//`` is collapsed to ``/`` (CWE-51): the gateway's prefix check and the upstream router must agree on one
  spelling, and no console needs empty segments.

What is kept: percent-encoded unreserved characters (RFC 3986 §2.3) are decoded, every other escape is kept with
upper-case hex (RFC 3986 §6.2.2.1), characters that must be escaped (space, non-ASCII, ``"<>``...) are encoded as
UTF-8, the way browsers send them.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from urllib.parse import quote, unquote

from gateway.errors import BadRequest

_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
#: RFC 3986 pchar minus ``;`` (refused) and ``%`` (handled as escapes): kept literally.
_LITERAL = _UNRESERVED | frozenset("!$&'()*+,=:@/")
_HEX = frozenset("0123456789abcdefABCDEF")
_DOUBLE_ENCODED = re.compile(r"%25[0-9A-F]{2}", re.IGNORECASE)


def _refuse(reason: str) -> BadRequest:
    return BadRequest(f"The request path was refused: {reason}.")


def _decode_escape(pair: str) -> str:
    """Return the canonical spelling of one ``%XX`` escape, or raise when it is ambiguous."""
    code = int(pair, 16)
    char = chr(code)
    if code < 0x20 or code == 0x7F:
        raise _refuse("it contains an encoded control character")
    if char == "/":
        raise _refuse("it contains an encoded slash (%2F)")
    if char == "\\":
        raise _refuse("it contains an encoded backslash (%5C)")
    if char == ";":
        raise _refuse("it contains an encoded semicolon (%3B)")
    if char in _UNRESERVED:
        return char
    return "%" + pair.upper()


def _canonical_characters(path: str) -> str:
    out: list[str] = []
    i = 0
    while i < len(path):
        char = path[i]
        if char == "%":
            pair = path[i + 1 : i + 3]
            if len(pair) != 2 or not set(pair) <= _HEX:
                raise _refuse("it contains a '%' that is not followed by two hex digits")
            out.append(_decode_escape(pair))
            i += 3
            continue
        if ord(char) < 0x20 or ord(char) == 0x7F:
            raise _refuse("it contains a control character")
        if char == "\\":
            raise _refuse("it contains a backslash")
        if char == ";":
            raise _refuse("it contains ';' (matrix parameters are not accepted)")
        if char in "?#":
            raise _refuse(f"it contains {char!r}")
        if char in _LITERAL:
            out.append(char)
        else:
            out.append("".join(f"%{byte:02X}" for byte in char.encode("utf-8")))
        i += 1
    return "".join(out)


def _check_segments(path: str) -> None:
    for segment in path.split("/"):
        if segment in {".", ".."}:
            raise _refuse("it contains a '.' or '..' segment")
        folded = unicodedata.normalize("NFKC", unquote(segment, errors="replace"))
        if folded in {".", ".."} or any(sep in folded for sep in "/\\;"):
            raise _refuse("a segment becomes '..', a separator or ';' after Unicode normalisation")


#: The longest request path taken (bytes as sent, without the query); longer ones are a 414 before any work. Far
#: above what consoles use, and below nginx's 8 KiB request line.
MAX_PATH_BYTES = 4096
#: Paths cached at most this long: the cache is filled before the session is checked, so its size must not
#: depend on what an anonymous client sends (8,192 entries of 15 KB paths pinned ~250 MB).
_CACHED_PATH_BYTES = 512


class PathTooLong(BadRequest):
    """The request path is longer than channelgate takes (RFC 9110 §15.5.15)."""

    status = 414
    code = "uri_too_long"


def normalise_path(raw_path: bytes | str) -> str:
    """Return the canonical path the upstream will see, or raise ``BadRequest`` for ambiguous spellings and
    ``PathTooLong`` past ``MAX_PATH_BYTES``.

    Pure, so the results for the (short) paths agents actually use are cached (refusals are not).
    ``raw_path`` is the undecoded path without the query (ASGI ``scope["raw_path"]``). Bytes are read as
    Latin-1 so that each byte stays one character; non-ASCII bytes are then re-encoded as ``%XX``.
    """
    if len(raw_path) > MAX_PATH_BYTES:
        raise PathTooLong(f"The request path was refused: it is longer than {MAX_PATH_BYTES} bytes.")
    if len(raw_path) > _CACHED_PATH_BYTES:
        return _normalise(raw_path)
    return _normalise_cached(raw_path)


def _normalise(raw_path: bytes | str) -> str:
    if isinstance(raw_path, bytes):
        text = raw_path.decode("latin-1")
        text = "".join(c if ord(c) < 0x80 else f"%{ord(c):02X}" for c in text)
    else:
        text = raw_path
    if not text.startswith("/"):
        raise _refuse("it must start with '/'")
    path = _canonical_characters(text)
    path = re.sub(r"/{2,}", "/", path)
    _check_segments(path)
    if _DOUBLE_ENCODED.search(path):
        raise _refuse("it contains a double percent-encoding (%25XX)")
    return path


_normalise_cached = functools.lru_cache(maxsize=8192)(_normalise)


_QUERY_KEY_SAFE = "".join(sorted(_LITERAL - {"&", "="})) + "%"


def strip_query_values(path: str, query: str) -> str:
    """Return ``path?key1&key2`` for the access log: query keys are kept, values (tokens, e-mails) are not.

    Keys stay percent-encoded as sent and anything else is escaped, so a key cannot inject a line into the log.
    """
    if not query:
        return _bounded(path)
    keys = [part.split("=", 1)[0] for part in query.split("&") if part]
    escaped = [quote(key, safe=_QUERY_KEY_SAFE) for key in keys if key]
    return _bounded(f"{path}?{'&'.join(escaped)}" if escaped else path)


#: The longest path the access log keeps of a request: every record is retained and chained for years, and an
#: anonymous client must not make each of its requests cost kilobytes there (or in the writer's queue).
MAX_LOGGED_PATH = 1024
_CUT = "...(cut)"


def _bounded(logged: str) -> str:
    return logged if len(logged) <= MAX_LOGGED_PATH else logged[: MAX_LOGGED_PATH - len(_CUT)] + _CUT
