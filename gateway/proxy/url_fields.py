"""Reading the answer fields that carry URLs besides ``Location``: ``Refresh`` and ``Link``.

``headers.ConsoleScope`` keeps a console's URLs under its prefix; it can do so only for a URL it reads exactly
as the browser will. These parsers therefore follow what browsers do (``Refresh``) or the grammar with the
leniency browsers have (``Link``), and say ``None`` for anything they cannot read with certainty: the field is
then dropped, never passed on unread. Pure functions, no I/O.
"""

from __future__ import annotations

import ipaddress
import re
import string
from dataclasses import dataclass
from urllib.parse import unquote_to_bytes

import idna

#: HTML's "ASCII whitespace" (the refresh steps skip it) and HTTP's OWS (RFC 9110 §5.6.3).
_ASCII_WHITESPACE = " \t\n\f\r"
_OWS = " \t"
#: RFC 9110 §5.6.2 ``tchar``.
_TCHAR = "!#$%&'*+-.^_`|~" + string.ascii_letters + string.digits


def _skip(text: str, at: int, chars: str) -> int:
    while at < len(text) and text[at] in chars:
        at += 1
    return at


def refresh_parts(value: str) -> tuple[str, str | None] | None:
    """``(delay, url)`` of a ``Refresh`` field as the HTML standard's "shared declarative refresh steps" read it
    (the same for the header and ``<meta http-equiv>``): ``url`` None when it reloads the page itself, the
    result None when a browser ignores the field. ``0; URL='/x'``, ``0,/x`` and ``0 /x`` all go to ``/x``."""
    at = _skip(value, 0, _ASCII_WHITESPACE)
    start = at
    at = _skip(value, at, string.digits)
    if at == start and value[at : at + 1] != ".":
        return None
    at = _skip(value, at, string.digits + ".")
    delay = value[start:at]
    if at < len(value):
        if value[at] not in ";," + _ASCII_WHITESPACE:
            return None
        at = _skip(value, at, _ASCII_WHITESPACE)
        if value[at : at + 1] in (";", ","):
            at += 1
        at = _skip(value, at, _ASCII_WHITESPACE)
    if at >= len(value):
        return delay, None
    url = value[at:]
    # "URL" (any case), optional whitespace and "=" introduce it; without the "=" the text from "U" on is the URL.
    if value[at : at + 3].lower() == "url":
        after = _skip(value, at + 3, _ASCII_WHITESPACE)
        if value[after : after + 1] != "=":
            return delay, url
        at = _skip(value, after + 1, _ASCII_WHITESPACE)
    elif value[at : at + 1] in ("u", "U"):
        return delay, url
    quote = value[at] if value[at : at + 1] in ("'", '"') else ""
    url = value[at + len(quote) :]
    if quote and quote in url:
        url = url[: url.index(quote)]
    return delay, url


@dataclass(frozen=True, slots=True)
class LinkParam:
    #: Lower case, any ``*`` of an extended value (RFC 8187) removed: ``rel*`` counts as ``rel``.
    name: str
    #: Unquoted.
    value: str
    #: As the console wrote it (``rel="preload"``), to be sent on unchanged.
    raw: str


@dataclass(frozen=True, slots=True)
class LinkValue:
    target: str
    params: tuple[LinkParam, ...]

    def values(self, name: str) -> list[str]:
        return [param.value for param in self.params if param.name == name]


def _quoted(text: str, at: int) -> tuple[str, int] | None:
    """The quoted-string (RFC 9110 §5.6.4) at ``text[at] == '"'``, unescaped, and the index after it."""
    out: list[str] = []
    at += 1
    while at < len(text):
        char = text[at]
        if char == '"':
            return "".join(out), at + 1
        if char == "\\":
            at += 1
            if at >= len(text):
                return None
            char = text[at]
        out.append(char)
        at += 1
    return None


def _param(text: str, at: int) -> tuple[LinkParam | None, int] | None:
    """One ``link-param`` from ``at`` (after ``;`` and OWS): None when malformed; ``(None, at)`` for an empty one
    (``</a>; rel=x;``, which browsers accept)."""
    start = at
    at = _skip(text, at, _TCHAR)
    name = text[start:at]
    if not name:
        return (None, at) if at >= len(text) or text[at] in ",;" else None
    at = _skip(text, at, _OWS)
    value = ""
    if text[at : at + 1] == "=":
        at = _skip(text, at + 1, _OWS)
        if text[at : at + 1] == '"':
            quoted = _quoted(text, at)
            if quoted is None:
                return None
            value, at = quoted
        else:
            # Browsers take an unquoted value up to the next ";" or "," (``type=text/css``), not only a token.
            end = at
            while end < len(text) and text[end] not in ";,":
                end += 1
            value = text[at:end].rstrip(_OWS)
            if any(char in value for char in '"<>'):
                return None
            at = at + len(value)
    raw = text[start:at]
    return LinkParam(name.lower().rstrip("*"), value, raw), at


def link_values(value: str) -> list[LinkValue] | None:
    """The link-values of a ``Link`` field (RFC 8288 §3), or None when it is malformed anywhere."""
    links: list[LinkValue] = []
    at = 0
    while True:
        at = _skip(value, at, _OWS + ",")  # empty list elements are allowed (RFC 9110 §5.6.1)
        if at >= len(value):
            return links
        if value[at] != "<":
            return None
        end = value.find(">", at)
        if end < 0:
            return None
        target, at = value[at + 1 : end], end + 1
        params: list[LinkParam] = []
        while True:
            at = _skip(value, at, _OWS)
            if at >= len(value) or value[at] == ",":
                break
            if value[at] != ";":
                return None
            found = _param(value, _skip(value, at + 1, _OWS))
            if found is None:
                return None
            param, at = found
            if param is not None:
                params.append(param)
        links.append(LinkValue(target, tuple(params)))


#: Schemes whose URLs have a host (WHATWG URL "special schemes", but file:, which browsers do not open from a
#: web page). For them a browser reads ``\`` as ``/`` and skips any number of slashes before the host.
SPECIAL_SCHEMES = frozenset({"http", "https", "ws", "wss", "ftp"})
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:")
#: What a browser's URL parser strips around a reference (leading and trailing C0 controls and spaces) and
#: removes inside it (tab, CR, LF): ``"\x01/phone/"`` is ``/phone/`` to it.
_C0_OR_SPACE = "".join(chr(code) for code in range(0x21))
_TAB_OR_NEWLINE = str.maketrans("", "", "\t\n\r")


def as_browser_reads(value: str, base_scheme: str) -> str:
    """A URL reference in the spelling a browser resolves it to on a page whose URL has ``base_scheme``
    (WHATWG URL): ``\\x01/a`` → ``/a``, ``\\\\host\\a`` → ``//host/a``, ``///host`` → ``//host``,
    ``http:host/a`` → ``http://host/a``, and ``https:/a`` on an https page → ``/a`` (a relative reference).
    Query and fragment are left as they are (no ``\\`` is a ``/`` there)."""
    text = value.strip(_C0_OR_SPACE).translate(_TAB_OR_NEWLINE)
    cut = min((at for at in (text.find("?"), text.find("#")) if at >= 0), default=len(text))
    head, tail = text[:cut], text[cut:]
    scheme = _SCHEME.match(head)
    name = scheme.group()[:-1].lower() if scheme else ""
    if scheme is not None and name not in SPECIAL_SCHEMES:
        return text  # mailto:, data:, another scheme: nothing of ours
    head = head.replace("\\", "/")
    if scheme is not None:
        rest = head[scheme.end() :]
        if name == base_scheme.lower() and not rest.startswith("//"):
            return rest + tail  # "https:/a" on an https page is the relative reference "/a"
        return f"{name}://{rest.lstrip('/')}{tail}"
    if head.startswith("//"):
        return "//" + head.lstrip("/") + tail
    return head + tail


#: Dot segments as a browser reads them (WHATWG URL "single-dot / double-dot URL path segment"): ``%2e`` is ``.``.
_SINGLE_DOT = frozenset({".", "%2e"})
_DOUBLE_DOT = frozenset({"..", ".%2e", "%2e.", "%2e%2e"})


def split_reference(text: str) -> tuple[str, str]:
    """``(path, rest)`` of a URL reference: ``rest`` is its query and fragment (``?a#b``), kept as they are."""
    cut = min((at for at in (text.find("?"), text.find("#")) if at >= 0), default=len(text))
    return text[:cut], text[cut:]


def has_dot_segment(path: str) -> bool:
    """Whether a browser would resolve ``.`` or ``..`` in ``path`` (``%2e`` counts as ``.``)."""
    return any(segment.lower() in _SINGLE_DOT | _DOUBLE_DOT for segment in path.split("/"))


def remove_dot_segments(path: str) -> str:
    """RFC 3986 §5.2.4 on an absolute path, with ``%2e`` read as ``.`` as browsers read it (WHATWG URL): the
    result never climbs above ``/`` (``/../phone/x`` → ``/phone/x``), so a path put under a prefix after this
    stays under it."""
    segments = path.split("/")[1:]
    kept: list[str] = []
    for at, segment in enumerate(segments):
        last = at == len(segments) - 1
        name = segment.lower()
        if name in _DOUBLE_DOT:
            if kept:
                kept.pop()
        elif name not in _SINGLE_DOT:
            kept.append(segment)
            continue
        if last:
            kept.append("")  # "/a/.." is "/", "/a/." is "/a/": the last dot segment leaves a directory
    return "/" + "/".join(kept)


def scheme_of(text: str) -> str | None:
    """The lower-case scheme of an absolute URL reference, None for a relative one (RFC 3986 §3.1, §4.2)."""
    found = _SCHEME.match(text)
    return found.group()[:-1].lower() if found else None


#: WHATWG URL "forbidden domain code points": a host holding one after percent-decoding makes the URL invalid.
_FORBIDDEN_DOMAIN = frozenset("\x00\t\n\r #/:<>?@[\\]^|%\x7f" + "".join(chr(code) for code in range(0x20)))


_DIGITS = {8: "01234567", 10: string.digits, 16: string.hexdigits}


def _ipv4_number(part: str) -> int | None:
    """WHATWG URL "IPv4 number parser": ``0x``/``0X`` makes it hex, a leading ``0`` octal, else decimal."""
    if not part:
        return None
    radix = 10
    if part[:2] in ("0x", "0X"):
        part, radix = part[2:], 16
    elif len(part) > 1 and part[0] == "0":
        part, radix = part[1:], 8
    if not part:
        return 0
    if not all(char in _DIGITS[radix] for char in part):
        return None
    return int(part, radix)


def _ipv4(parts: list[str]) -> str | None:
    """WHATWG URL "IPv4 parser" on a host's dot-separated parts: ``127.1``, ``0x7f000001``, ``0177.0.0.1`` are all
    ``127.0.0.1``; None (the browser rejects the URL) for a bad part or an overflow."""
    if parts[-1] == "" and len(parts) > 1:
        parts = parts[:-1]
    if len(parts) > 4:
        return None
    numbers = [_ipv4_number(part) for part in parts]
    if any(number is None for number in numbers):
        return None
    values = [number for number in numbers if number is not None]
    if any(value > 255 for value in values[:-1]) or values[-1] >= 256 ** (5 - len(values)):
        return None
    address = values[-1] + sum(value << (8 * (3 - at)) for at, value in enumerate(values[:-1]))
    return str(ipaddress.IPv4Address(address))


def _ends_in_a_number(parts: list[str]) -> bool:
    """WHATWG URL "ends in a number checker": the last label (a trailing empty one aside) is all digits or an IPv4
    number (``0x``, ``0x1f``), so the whole host is read as IPv4 (and a failure there is the URL's)."""
    if parts[-1] == "" and len(parts) > 1:
        parts = parts[:-1]
    last = parts[-1]
    return bool(last) and ((last.isascii() and last.isdigit()) or _ipv4_number(last) is not None)


def canonical_host(host: str) -> str | None:
    """A URL's host as a browser reads it (WHATWG URL "host parser", special schemes), for comparing hosts: an
    IPv6 literal (with or without its brackets) in canonical form, an IPv4 address in any spelling the standard
    accepts (``2130706433``, ``0x7f.1``, ``%31%32%37.0.0.1``) as dotted decimal, a domain percent-decoded and
    mapped as UTS #46 maps it (``GW.Example`` and fullwidth letters: ``gw.example``), trailing dot removed. None when a
    browser rejects the host, so the URL cannot be followed: an overflowing or malformed IPv4 address, a
    forbidden code point, bytes that are not UTF-8. The port is not part of ``host``."""
    if host.startswith("[") or ":" in host:
        inner = host[1:-1] if host.startswith("[") and host.endswith("]") else host
        if "%" in inner:
            return None  # a zone identifier: browsers reject it
        try:
            return ipaddress.IPv6Address(inner).compressed
        except ValueError:
            return None
    try:
        text = unquote_to_bytes(host).decode("utf-8")
        if not text.isascii():
            text = idna.uts46_remap(text, std3_rules=False, transitional=False)
            labels = text.split(".")
            text = ".".join(
                label if label.isascii() else "xn--" + label.encode("punycode").decode() for label in labels
            )
    except (UnicodeError, idna.IDNAError):
        return None
    text = text.lower()
    if not text or any(char in _FORBIDDEN_DOMAIN for char in text):
        return None
    parts = text.split(".")
    if _ends_in_a_number(parts):
        return _ipv4(parts)
    return text.rstrip(".")
