"""One agent's cookies at one console (RFC 6265), kept by the gateway so they never reach the browser.

Pure: no I/O, the time comes in as an argument. What a server-side, single-console jar needs of RFC 6265 §5:
``Set-Cookie`` parsing (§5.2) with its date algorithm (§5.1.1), storage keyed by name and path with replacement
and deletion by ``Max-Age`` (which wins over ``Expires``) or a past expiry (§5.3), and the ``Cookie`` header for
a request (§5.4: path-match, longer paths first, ``Secure`` cookies only over https or loopback, RFC 6265bis
§5.8.3's "potentially trustworthy" origins).

The jar belongs to the one console it was filled by: ``header`` gives nothing for a URL of any other origin
(and a cookie_jar channel's routes to another origin are refused at config load, gateway/settings_channels.py),
so it is host-only by construction: a ``Domain`` attribute cannot widen it and is not kept. Cookies whose value a
header could not carry (control characters, RFC 6265bis §5.6 step 1) are refused, and a jar holds at most
``MAX_COOKIES`` of at most ``MAX_COOKIE_BYTES`` each (§6.1's minimums), so a console cannot grow what the gateway
stores without bound. Jars are immutable: ``merge`` returns a new one, so a jar shared by concurrent requests
never changes under them.
"""

from __future__ import annotations

import calendar
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

MAX_COOKIES = 50
MAX_COOKIE_BYTES = 4096
LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})
DEFAULT_PORTS = {"http": 80, "https": 443}

# RFC 6265 §5.1.1 cookie-date grammar.
_DELIMITERS = re.compile(r"[\x09\x20-\x2f\x3b-\x40\x5b-\x60\x7b-\x7e]+")
_TIME = re.compile(r"(\d{1,2}):(\d{1,2}):(\d{1,2})(?:\D|$)")
_DAY = re.compile(r"(\d{1,2})(?:\D|$)")
_YEAR = re.compile(r"(\d{2,4})(?:\D|$)")
_MONTHS = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
# RFC 6265bis §5.6 step 1: a Set-Cookie line with these is ignored entirely.
_CONTROLS = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
# A name must be a token of its own on the wire (RFC 6265 §4.1.1): no separators, spaces or "=".
_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


def parse_cookie_date(text: str) -> float | None:
    """RFC 6265 §5.1.1: the date of an ``Expires`` attribute as seconds since the epoch, or None (ignored)."""
    hms: tuple[int, int, int] | None = None
    day = month = year = None
    for token in _DELIMITERS.split(text):
        if not token:
            continue
        if hms is None and (m := _TIME.match(token)):
            hms = (int(m[1]), int(m[2]), int(m[3]))
        elif day is None and (m := _DAY.match(token)):
            day = int(m[1])
        elif month is None and token[:3].lower() in _MONTHS:
            month = _MONTHS.index(token[:3].lower()) + 1
        elif year is None and (m := _YEAR.match(token)):
            year = int(m[1])
    if hms is None or day is None or month is None or year is None:
        return None
    if 70 <= year <= 99:
        year += 1900
    elif 0 <= year <= 69:
        year += 2000
    hour, minute, second = hms
    if year < 1601 or hour > 23 or minute > 59 or second > 59:
        return None
    try:
        datetime(year, month, day)  # only checks that the date exists (31 February does not)
    except ValueError:
        return None
    return float(calendar.timegm((year, month, day, hour, minute, second, 0, 0, 0)))


@dataclass(frozen=True, slots=True)
class Cookie:
    name: str
    value: str
    path: str
    #: Seconds since the epoch; None for a session cookie (kept until the console replaces or deletes it).
    expires: float | None
    secure: bool
    #: When the jar first stored a cookie of this name and path (§5.3 step 11.3 keeps it on replacement).
    created: float

    def __repr__(self) -> str:
        return f"Cookie(name={self.name!r}, path={self.path!r}, value='**********')"

    def expired(self, now: float) -> bool:
        return self.expires is not None and self.expires <= now

    def document(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "value": self.value,
            "path": self.path,
            "expires": self.expires,
            "secure": self.secure,
            "created": self.created,
        }


def parse_set_cookie(line: str, now: float, default_path: str = "/") -> Cookie | None:
    """RFC 6265 §5.2: one ``Set-Cookie`` field value, or None when the whole line is to be ignored.

    An expiry in the past (``Max-Age=0``, an old ``Expires``) is kept as such: merging it deletes the cookie.
    """
    if _CONTROLS.search(line) or len(line.encode("utf-8", "surrogateescape")) > MAX_COOKIE_BYTES:
        return None
    pair, _, attributes = line.partition(";")
    if "=" not in pair:
        return None
    name, _, value = pair.partition("=")
    name, value = name.strip(" \t"), value.strip(" \t")
    if not _NAME.fullmatch(name):
        return None
    path, secure = default_path, False
    max_age: float | None = None
    expires: float | None = None
    for attribute in attributes.split(";"):
        key, _, attribute_value = attribute.partition("=")
        key, attribute_value = key.strip(" \t").lower(), attribute_value.strip(" \t")
        if key == "expires":
            expires = parse_cookie_date(attribute_value) if expires is None else expires
        elif key == "max-age" and re.fullmatch(r"-?\d+", attribute_value):
            # §5.2.2: zero or negative means "the earliest representable time", i.e. delete it now.
            delta = int(attribute_value)
            max_age = now + delta if delta > 0 else float("-inf")
        elif key == "path":
            path = attribute_value if attribute_value.startswith("/") else default_path
        elif key == "secure":
            secure = True
    return Cookie(name, value, path, max_age if max_age is not None else expires, secure, now)


def origin_of(url: str) -> tuple[str, str, int | None]:
    """RFC 6454 §4: scheme, host and port (the scheme's default when none is written), lower-cased."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    try:
        port = parts.port
    except ValueError:
        return scheme, "", None
    return scheme, (parts.hostname or "").lower(), port if port is not None else DEFAULT_PORTS.get(scheme)


def path_matches(cookie_path: str, request_path: str) -> bool:
    """RFC 6265 §5.1.4 path-match."""
    if request_path == cookie_path:
        return True
    return request_path.startswith(cookie_path) and (cookie_path.endswith("/") or request_path[len(cookie_path)] == "/")


@dataclass(frozen=True, slots=True)
class CookieJar:
    cookies: tuple[Cookie, ...] = ()

    def __repr__(self) -> str:
        return f"CookieJar({len(self.cookies)} cookies)"

    def live(self, now: float) -> bool:
        """Whether any cookie in the jar has not expired (an empty or spent jar means "log in again")."""
        return any(not cookie.expired(now) for cookie in self.cookies)

    def merge(self, lines: Iterable[str], now: float) -> CookieJar:
        """RFC 6265 §5.3 storage model: each new cookie replaces the one of the same name and path (keeping
        its creation time); an expired one only deletes; cookies past their expiry are evicted (step 12)."""
        kept = {(c.name, c.path): c for c in self.cookies if not c.expired(now)}
        for line in lines:
            cookie = parse_set_cookie(line, now)
            if cookie is None:
                continue
            old = kept.pop((cookie.name, cookie.path), None)
            if not cookie.expired(now):
                kept[(cookie.name, cookie.path)] = replace(cookie, created=old.created) if old else cookie
        ordered = sorted(kept.values(), key=lambda c: c.created)
        return CookieJar(tuple(ordered[-MAX_COOKIES:]))

    def header(self, url: str, now: float, *, origin: str) -> str:
        """RFC 6265 §5.4: the ``Cookie`` header value for a request to ``url`` (empty when none applies, and
        always when ``url`` is not on ``origin``, the console the jar was filled by)."""
        if origin_of(url) != origin_of(origin):
            return ""
        parts = urlsplit(url)
        secure_ok = parts.scheme == "https" or (parts.hostname or "") in LOOPBACK_HOSTS
        request_path = parts.path or "/"
        chosen = [
            c
            for c in self.cookies
            if not c.expired(now) and (secure_ok or not c.secure) and path_matches(c.path, request_path)
        ]
        chosen.sort(key=lambda c: (-len(c.path), c.created))
        return "; ".join(f"{c.name}={c.value}" for c in chosen)

    def dumps(self) -> str:
        return json.dumps([cookie.document() for cookie in self.cookies], separators=(",", ":"))

    @classmethod
    def loads(cls, text: str) -> CookieJar:
        documents: Sequence[dict[str, Any]] = json.loads(text)
        return cls(
            tuple(
                Cookie(
                    str(d["name"]),
                    str(d["value"]),
                    str(d["path"]),
                    None if d["expires"] is None else float(d["expires"]),
                    bool(d["secure"]),
                    float(d["created"]),
                )
                for d in documents
            )
        )
