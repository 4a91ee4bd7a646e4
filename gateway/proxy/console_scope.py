"""A console's answer kept inside its prefix on the gateway's one origin.

Many consoles share the gateway's origin, each under a path prefix. What a console answers is rewritten so it acts
only there: its cookies host-only and under the prefix, the URLs of its redirects, ``Content-Location``,
``Refresh`` and ``Link`` under the prefix and never naming its internal address (read as a browser reads them,
gateway/proxy/url_fields.py), and fields that act on the whole origin dropped. ``sanitise_response_headers``
(gateway/proxy/headers.py) applies it; docs/operations/hardening.md says what one origin cannot isolate.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Collection
from dataclasses import dataclass
from urllib.parse import urlsplit

from gateway.proxy.url_fields import (
    SPECIAL_SCHEMES,
    as_browser_reads,
    canonical_host,
    has_dot_segment,
    link_values,
    refresh_parts,
    remove_dot_segments,
    scheme_of,
    split_reference,
)

#: Response fields that act on the whole origin rather than on the console's path, so only the gateway may send
#: them: Clear-Site-Data would wipe the gateway's session cookie and every console's storage, Service-Worker-Allowed
#: widen a worker's scope past its prefix, Strict-Transport-Security (``max-age=0``) switch off the origin's HSTS,
#: Origin-Agent-Cluster change the origin's agent cluster, and ``Access-Control-*`` open the origin to other sites
#: (CORS is the gateway's decision, not a console's). NEL and Report-To set the origin's network-error reporting
#: (W3C Network Error Logging): a console could have the browser report every failed request to any console's
#: paths — URLs, referrers, client addresses — to an endpoint of its choice, for as long as ``max_age``; Alt-Svc
#: (RFC 7838) sends the browser's later requests for the whole origin to another port or host.
ORIGIN_WIDE = frozenset(
    {
        "clear-site-data",
        "service-worker-allowed",
        "strict-transport-security",
        "origin-agent-cluster",
        "nel",
        "report-to",
        "alt-svc",
    }
)
_ORIGIN_WIDE_PREFIXES = ("access-control-",)


def is_origin_wide(name: str) -> bool:
    """Whether a (lower-case) response field acts on the whole origin: ``ORIGIN_WIDE`` or ``Access-Control-*``."""
    return name in ORIGIN_WIDE or name.startswith(_ORIGIN_WIDE_PREFIXES)


#: RFC 6265bis §4.1.3: the name prefixes a browser binds to the origin (``__Host-``: this host, Path=/, Secure).
#: They are the gateway's own; a console's copy could shadow one, so it never reaches the browser.
_RESERVED_COOKIE_PREFIXES = ("__host-", "__secure-")

_DEFAULT_PORTS = {"http": 80, "https": 443}

#: Link relations that act beyond the linking page: a ``serviceworker`` link registers a worker (W3C Service
#: Workers, "Link type serviceworker"; its ``scope`` could be ``/``). Such a link-value is dropped, not rewritten.
_ORIGIN_WIDE_RELATIONS = frozenset({"serviceworker"})
#: Link parameters holding a URL other than the target: ``anchor`` (RFC 8288 §3.2, the link's context) and
#: ``imagesrcset`` (a list of image URLs, HTML preload). Rewriting a second URL grammar is not worth the risk of
#: reading it unlike the browser: a link-value carrying one is dropped (they are hints; the page still works).
_OTHER_URL_PARAMS = frozenset({"anchor", "imagesrcset"})


def _origin_of(scheme: str, host: str, port: int | None) -> tuple[str, str, int | None]:
    """``host`` already in ``canonical_host`` form."""
    scheme = scheme.lower()
    return scheme, host, port or _DEFAULT_PORTS.get(scheme)


def _configured_host(host: str | None) -> str:
    """A host from the configuration (the upstream's, the public URL's) in ``canonical_host`` form, as written
    (lower case) if a browser could not read it: then no URL's host compares equal to it."""
    host = (host or "").lower()
    return canonical_host(host) or host


@dataclass(frozen=True, slots=True)
class ConsoleScope:
    """Where one console lives on the gateway's single origin, to keep its answers there (nginx's
    ``proxy_cookie_path`` and default ``proxy_redirect``). Made by ``console_scope``, once per route."""

    #: The route's prefix (``/chat/``), and whether it is removed before the request goes upstream.
    prefix: str
    strip_prefix: bool
    #: The upstream's origin (scheme, lower-case host, port) and base path (``""`` or ``/base``).
    upstream_origin: tuple[str, str, int | None]
    upstream_base: str
    #: The gateway's public origin, ``https://gateway.example``.
    public_origin: str
    #: False for a cookie jar: its connector takes every ``Set-Cookie`` out (none reaches the browser) and must
    #: store it as the console wrote it.
    rewrite_cookies: bool = True

    def public_path(self, path: str) -> str:
        """The gateway path of an upstream path: the reverse of ``routes.upstream_path``."""
        base = self.upstream_base
        if base and (path == base or path.startswith((base + "/", base + "?"))):
            path = path[len(base) :]
            path = path if path.startswith("/") else "/" + path
        return self.prefix[:-1] + path if self.strip_prefix else path

    def cookie_path(self, path: str | None) -> str:
        """``Path`` kept under the prefix: ``/x`` → ``/chat/x`` when the prefix is stripped; no path, an
        invalid one (RFC 6265 §5.2.4) or one outside the prefix → the prefix."""
        if path and path.startswith("/"):
            public = self.public_path(path)
            if public.startswith(self.prefix):
                return public
        return self.prefix

    def location(self, value: str, request_path: str | None = None) -> str | None:
        """A URL the console sent (``Location`` and the others in ``URL_FIELDS``) kept under its prefix, or None
        (drop it) when it would leave the prefix and cannot be kept under it.

        Read as the browser will read it (``url_fields.as_browser_reads``: ``\\x01/phone/`` and ``\\phone`` are
        absolute paths, ``/\\host`` is another host), dot segments resolved first (RFC 3986 §5.2.4, ``%2e`` as
        ``.``) so that nothing put under the prefix climbs out of it again. The console's own upstream → the public
        URL under the prefix; an absolute path, or a relative one with dot segments (resolved against
        ``request_path``, the path the console was sent), is a path of the console's → under the prefix when the
        route strips it; a URL on the gateway's public origin stays if under the prefix, else is taken as the
        console's path. A relative path without dot segments stays under the page's directory and passes, as
        does any other site's URL (a redirect elsewhere is the console's business). On a route that does not strip
        its prefix, a path outside it is dropped."""
        text = as_browser_reads(value, self.public_origin.partition(":")[0])
        scheme = scheme_of(text)
        if scheme is None and not text.startswith("//"):
            path, rest = split_reference(text)
            if not path.startswith("/"):
                if not has_dot_segment(path):
                    return value  # resolves in the page's own directory, which is under the prefix
                if request_path is None:
                    return None
                path = request_path[: request_path.rfind("/") + 1] + path  # RFC 3986 §5.2.3
            public = self._console_path(remove_dot_segments(path))
            return None if public is None else public + rest
        if scheme is not None and scheme not in SPECIAL_SCHEMES:
            return value  # mailto:, data: …: not a place on any origin
        try:
            parts = urlsplit(text)
            host, port = parts.hostname, parts.port
        except ValueError:
            return value  # a browser cannot open it either
        if not parts.netloc:
            return value
        # The host as the browser reads it (WHATWG host parser): "2130706433", "0x7f.1" and "%31%32%37.0.0.1" are
        # 127.0.0.1 to it, so they are compared as such. A host it rejects ("256.0.0.1") cannot be followed.
        name = canonical_host(host or "")
        if name is None:
            return None
        rest = (f"?{parts.query}" if parts.query else "") + (f"#{parts.fragment}" if parts.fragment else "")
        path = remove_dot_segments(parts.path or "/")  # what a browser does to a URL with a host (WHATWG URL)
        # A scheme-relative URL takes the page's scheme; for the upstream, its own is assumed (it leaked before).
        if _origin_of(parts.scheme or self.upstream_origin[0], name, port) == self.upstream_origin:
            public = self._console_path(path)
        elif name == self._public_host:
            # The gateway's host on any scheme or port: http:// is upgraded to the same origin (HSTS, the front
            # proxy's redirect), so it is the gateway's too. Taking more as ours only keeps more under the prefix.
            public = path if path.startswith(self.prefix) else self._console_path(path, public=True)
        else:
            return value
        return None if public is None else f"{self.public_origin}{public}{rest}"

    @property
    def _public_host(self) -> str:
        return _configured_host(urlsplit(self.public_origin).hostname)

    def _console_path(self, path: str, *, public: bool = False) -> str | None:
        """The public path of the console's ``path`` (dot segments already resolved), or None when it is outside
        the prefix of a route that does not strip it. ``public``: a path written on the gateway's origin, which
        has no upstream base to remove."""
        if self.strip_prefix:
            return self.prefix[:-1] + path if public else self.public_path(path)
        return path if path.startswith(self.prefix) else None

    def refresh(self, value: str, request_path: str | None = None) -> str | None:
        """``Refresh`` (``0; url=…``) with its URL kept as ``location`` keeps a ``Location``'s, written back in
        one plain form; None (drop it) when a browser would not read it as we do or it would leave the prefix."""
        parts = refresh_parts(value)
        if parts is None:
            return None
        delay, url = parts
        if url is None:
            return value
        target = self.location(url, request_path)
        # A browser would take a leading quote for one around the URL (HTML refresh steps).
        return None if target is None or target[:1] in ("'", '"') else f"{delay}; url={target}"

    def link(self, value: str, request_path: str | None = None) -> str | None:
        """``Link`` (RFC 8288) with each target kept as ``location`` keeps a ``Location``'s; link-values with an
        origin-wide relation (``serviceworker``), a second URL (``anchor``, ``imagesrcset``) or a target that
        would leave the prefix dropped; the
        whole field dropped when it cannot be read with certainty (it is a hint: nothing breaks)."""
        links = link_values(value)
        if links is None:
            return None
        kept = []
        for link in links:
            relations = {rel for text in link.values("rel") for rel in text.lower().split()}
            if relations & _ORIGIN_WIDE_RELATIONS or any(p.name in _OTHER_URL_PARAMS for p in link.params):
                continue
            target = self.location(link.target, request_path)
            if target is not None:
                kept.append(f"<{target}>" + "".join(f"; {p.raw}" for p in link.params))
        return ", ".join(kept) or None


@functools.lru_cache(maxsize=256)
def console_scope(
    prefix: str, strip_prefix: bool, upstream: str, public_url: str, *, rewrite_cookies: bool = True
) -> ConsoleScope:
    """The ``ConsoleScope`` of a route (cached: routes are few, and this is on every proxied request)."""
    up, pub = urlsplit(upstream), urlsplit(public_url)
    return ConsoleScope(
        prefix=prefix,
        strip_prefix=strip_prefix,
        upstream_origin=_origin_of(up.scheme, _configured_host(up.hostname), up.port),
        upstream_base=up.path.rstrip("/"),
        public_origin=f"{pub.scheme}://{pub.netloc}".lower(),
        rewrite_cookies=rewrite_cookies,
    )


def console_set_cookie(value: str, gateway_cookie_names: Collection[str], console: ConsoleScope | None) -> str | None:
    """A console's ``Set-Cookie`` fit for the browser, or None to drop it.

    The name is read as a browser reads it (RFC 6265bis §5.6): text before the first ``=``, none without one.
    A nameless cookie (``=channelgate=ID``) is sent back as ``channelgate=ID``, a copy of the gateway's cookie,
    so it is dropped like any gateway name, in any letter case. Otherwise ``Domain`` goes (host-only) and
    ``Path`` stays under the console's prefix, so one console cannot plant cookies on another's path or the
    gateway's (cookie tossing, session fixation).
    """
    pair, _, attributes = value.partition(";")
    name = pair.split("=", 1)[0].strip().lower() if "=" in pair else ""
    if not name or name in gateway_cookie_names:
        return None
    if console is not None and not console.rewrite_cookies:
        return value
    if name.startswith(_RESERVED_COOKIE_PREFIXES):
        return None
    if console is None:
        return value
    kept = [pair.strip()]
    path: str | None = None
    for attribute in attributes.split(";"):
        key, _, text = attribute.partition("=")
        key = key.strip().lower()
        if key == "path":
            path = text.strip()  # the last one wins (RFC 6265 §5.3 step 7)
        elif key and key != "domain":
            kept.append(attribute.strip())
    kept.append("Path=" + console.cookie_path(path))
    return "; ".join(kept)


#: Answer fields holding a URL the browser follows or fetches, each kept under the console's prefix
#: (``ConsoleScope``): redirects, ``Content-Location`` (RFC 9110 §8.7), ``Refresh`` (HTML) and ``Link``
#: (RFC 8288: preload, prefetch, preconnect).
URL_FIELDS: dict[str, Callable[[ConsoleScope, str, str | None], str | None]] = {
    "location": ConsoleScope.location,
    "content-location": ConsoleScope.location,
    "refresh": ConsoleScope.refresh,
    "link": ConsoleScope.link,
}
