"""docs/openapi/channelgate-admin.yaml is valid OpenAPI 3.1 and describes exactly the routes the gateway serves.

The admin routes are read from the application itself (``gateway.app.create_app``), the SCIM ones from the
protocol engine's route table expanded with our resource types: an operation added to either, or removed, without
its description failing here keeps the document honest.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, cast

import pytest
import yaml
from openapi_spec_validator import validate
from scim2_server.routing import ROUTES
from starlette.routing import Mount, Route

from gateway.app import create_app
from gateway.deprovision.plan import RunState, StepState
from gateway.settings import Settings
from scim.app import MOUNT_PATH
from scim.provider import MAX_RESULTS, scim_provider

ROOT = Path(__file__).resolve().parents[2]
DOCUMENT = ROOT / "docs" / "openapi" / "channelgate-admin.yaml"
ADMIN = "/.channelgate/admin/"
SCIM = MOUNT_PATH + "/v2"
METHODS = ("get", "put", "post", "delete", "patch", "head", "options", "trace")


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(DOCUMENT.read_text(encoding="utf-8"))
    return loaded


def _shape(path: str) -> str:
    """A path with every parameter written ``{}`` (names differ: ``{agent}``, ``{resource_id}``, ``{path:path}``)."""
    return re.sub(r"\{[^}]*\}", "{}", path)


def _documented(document: dict[str, Any], prefix: str) -> set[tuple[str, str]]:
    return {
        (method.upper(), _shape(path))
        for path, item in document["paths"].items()
        if path.startswith(prefix)
        for method in item
        if method in METHODS
    }


def _admin_routes() -> set[tuple[str, str]]:
    settings = Settings.model_validate(
        {
            "server": {"public_url": "https://gateway.example"},
            "oidc": {"issuer": "https://idp.example", "client_id": "c", "client_secret": "s"},
        }
    )
    [own] = [
        route for route in create_app(settings).routes if isinstance(route, Mount) and route.path == "/.channelgate"
    ]
    served = set()
    for route in own.routes:
        if isinstance(route, Route) and (path := own.path + route.path).startswith(ADMIN):
            served |= {(method, _shape(path)) for method in route.methods or () if method != "HEAD"}
    return served


def _scim_routes() -> set[tuple[str, str]]:
    endpoints = [cast(str, resource_type.endpoint) for resource_type in scim_provider().resource_types or []]
    served = set()
    for route in ROUTES:
        expanded = [route.pattern.replace("/{endpoint}", endpoint) for endpoint in endpoints]
        for pattern in expanded if "{endpoint}" in route.pattern else [route.pattern]:
            served.add((route.method, _shape(SCIM + pattern)))
    return served


def test_the_document_is_valid_openapi_3_1(document: dict[str, Any]) -> None:
    validate(document)
    assert document["openapi"].startswith("3.1.")


def test_every_admin_route_is_described_and_nothing_else_under_the_admin_prefix(document: dict[str, Any]) -> None:
    served = _admin_routes()
    assert len(served) == 6
    assert _documented(document, ADMIN) == served


def test_every_scim_route_is_described_and_nothing_else_under_scim(document: dict[str, Any]) -> None:
    assert {endpoint for _, endpoint in _scim_routes() if endpoint.startswith(SCIM + "/Users")}
    assert _documented(document, SCIM) == _scim_routes()


def test_every_operation_names_the_token_it_needs_and_only_the_service_provider_config_is_public(
    document: dict[str, Any],
) -> None:
    """What the code does is checked against the running gateway (test_schemathesis_apis); here, what is said."""
    for path, item in document["paths"].items():
        for method, operation in item.items():
            if method not in METHODS:
                continue
            security = operation.get("security", document["security"])
            if path == SCIM + "/ServiceProviderConfig":
                assert security == [], path
            elif path.startswith(ADMIN):
                assert security == [{"adminToken": []}], (method, path)
                assert "401" in operation["responses"], (method, path)
            else:
                assert security == [{"scimToken": []}], (method, path)
                assert "401" in operation["responses"], (method, path)


def test_the_documented_service_provider_config_matches_what_is_served(document: dict[str, Any]) -> None:
    described = document["components"]["schemas"]["ServiceProviderConfig"]["properties"]
    served = scim_provider().config
    assert served is not None and served.filter is not None and served.bulk is not None and served.sort is not None
    assert described["filter"]["properties"]["maxResults"]["const"] == served.filter.max_results == MAX_RESULTS
    assert described["bulk"]["properties"]["supported"]["const"] is served.bulk.supported is False
    assert described["sort"]["properties"]["supported"]["const"] is served.sort.supported is False


def test_the_documented_run_and_step_states_are_exactly_the_pipelines(document: dict[str, Any]) -> None:
    schemas = document["components"]["schemas"]
    assert schemas["RunState"]["enum"] == [state.value for state in RunState]
    assert schemas["Step"]["properties"]["state"]["enum"] == [state.value for state in StepState]
