"""Route table: a canonical path (and the Host) to one channel console upstream.

Matching runs on the output of ``normalise_path`` only, so the route the decision is made for is the route the
upstream serves. Like nginx ``server``/``location``: a route bound to the request's host beats every host-less
route, then the longest prefix wins. Prefixes match case-sensitively, as nginx's ``location`` does; a path that a
better route would match but for letter case is refused (``RouteCaseMismatch``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

from gateway.audit.data_access import DataRules, compile_routes
from gateway.errors import BadRequest
from gateway.settings import RouteSettings


class RouteCaseMismatch(BadRequest):
    """The path spells a better route's prefix in other letters (``/crm/EXPORTS/`` with routes ``/crm/exports/``
    and ``/crm/``). A case-insensitive console (IIS, some Java routers) serves it as that route's path, and our
    data rules read it so, but by exact prefix it would be decided, and forwarded, under the wider route."""


@dataclass(frozen=True, slots=True)
class RouteMatch:
    """A matched route. ``redirect`` means: answer 308 to ``location`` (``/chat`` → ``/chat/``)."""

    route: RouteSettings
    redirect: bool = False

    @property
    def location(self) -> str:
        return self.route.prefix


def _normalise_host(host: str, *, keep_port: bool) -> str:
    host = host.strip().lower()
    if not keep_port:
        if host.startswith("["):
            host = host[: host.find("]") + 1]
        elif host.count(":") == 1:
            host = host.split(":", 1)[0]
    return host.rstrip(".")


def _host_matches(route_host: str, request_host: str) -> bool:
    route_host = route_host.lower().rstrip(".")
    keep_port = "]:" in route_host if route_host.startswith("[") else ":" in route_host
    return _normalise_host(request_host, keep_port=keep_port) == route_host


class RouteTable:
    """Immutable table of routes; ``match`` is pure and cheap (routes are few)."""

    def __init__(self, routes: Sequence[RouteSettings]) -> None:
        # Longest prefix first so the first hit in each group is the answer.
        self._routes = tuple(sorted(routes, key=lambda r: len(r.prefix), reverse=True))
        self._data_rules = compile_routes(self._routes)
        self._rivals = {id(r): rivals for r in self._routes if (rivals := _case_rivals(r, self._routes))}

    def __len__(self) -> int:
        return len(self._routes)

    def data_rules(self, route: RouteSettings) -> DataRules | None:
        """The personal-data rules of one of this table's routes (None when it has none)."""
        return self._data_rules.get(id(route))

    def match(self, host: str | None, path: str) -> RouteMatch | None:
        """Return the route for ``path`` (already canonical) on ``host``, or ``None``."""
        host_routes = [r for r in self._routes if r.host is not None and host and _host_matches(r.host, host)]
        hostless = [r for r in self._routes if r.host is None]
        for group in (host_routes, hostless):
            found = self._longest(group, path)
            if found is not None:
                rivals = self._rivals.get(id(found.route))
                if rivals:
                    _refuse_case_variants(rivals, host, path)
                return found
        return None

    @staticmethod
    def _longest(routes: Sequence[RouteSettings], path: str) -> RouteMatch | None:
        for route in routes:
            if path.startswith(route.prefix):
                return RouteMatch(route)
            if path == route.prefix[:-1]:
                return RouteMatch(route, redirect=True)
        return None


def _outranks(route: RouteSettings, other: RouteSettings) -> bool:
    """Whether ``route`` wins over ``other`` when both match: host-bound first, then the longer prefix."""
    if (route.host is None) != (other.host is None):
        return route.host is not None
    return len(route.prefix) > len(other.prefix)


def _case_rivals(route: RouteSettings, routes: Sequence[RouteSettings]) -> tuple[tuple[str, RouteSettings], ...]:
    """The routes that outrank ``route`` and could match, but for letter case, a path it matches (with their
    prefixes lower-cased). Most tables have none, and then ``match`` does no case work at all."""
    own = route.prefix.lower()[:-1]
    return tuple(
        (other.prefix.lower(), other)
        for other in routes
        if other is not route
        and _outranks(other, route)
        and (other.prefix.lower().startswith(own) or own.startswith(other.prefix.lower()[:-1]))
    )


def _refuse_case_variants(rivals: Sequence[tuple[str, RouteSettings]], host: str | None, path: str) -> None:
    """Refuse ``path`` when a route that outranks its match matches it ignoring case.

    Not matched case-insensitively instead: in forward-auth mode the front proxy (nginx ``location``, Traefik,
    Envoy) routes by the exact prefix, so deciding under the case-folded route would decide for one console
    while the proxy forwards to another. Refusing keeps the decided route and the upstream the same in both
    modes; the exact spelling of the route's prefix works as before.
    """
    folded = path.lower()
    for prefix, route in rivals:
        if (folded.startswith(prefix) or folded == prefix[:-1]) and (
            route.host is None or (host and _host_matches(route.host, host))
        ):
            raise RouteCaseMismatch(
                f"The request path was refused: it spells the console route {route.prefix} in other letters; "
                "use that spelling."
            )


def upstream_path(match: RouteMatch, path: str) -> str:
    """The path sent upstream: the route prefix removed when ``strip_prefix`` (keeping the leading ``/``)."""
    if match.route.strip_prefix:
        return "/" + path[len(match.route.prefix) :]
    return path


def upstream_url(match: RouteMatch, path: str, query: str = "") -> str:
    """Join the route's upstream origin and base path with ``upstream_path`` and the raw query."""
    base = urlsplit(str(match.route.upstream))
    joined = base.path.rstrip("/") + upstream_path(match, path)
    return f"{base.scheme}://{base.netloc}{joined}" + (f"?{query}" if query else "")
