"""schemathesis against docs/openapi/channelgate-admin.yaml and the real gateway (SQLite, memory sessions).

Every operation of the admin API and of SCIM is called with generated requests that the document allows:

* with the right token, no answer is a server error (a 501 only where the document declares the feature
  unsupported) and every answer conforms to the document: status, content type, headers, body;
* without a token, with a wrong one, or with the other API's token, every operation is refused with 401 and an
  error body, and nothing changes: no agent, group, run or session (no auth bypass). Only the
  ServiceProviderConfig is public (RFC 7643 §5).

Generation is derandomized with a fixed seed and bounded per operation, so CI sees the same cases every run.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar, cast

import hypothesis
import pytest
import requests
import schemathesis
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.specs.openapi.schemas import OpenApiSchema
from sqlalchemy import text

from gateway.sessions.base import SessionData
from scim.provider import MAX_BODY_BYTES
from tests.security.api_gateway import ThreadedGateway, threaded_gateway

if TYPE_CHECKING:
    from schemathesis.specs.openapi.schemas import OpenApiCase

ROOT = Path(__file__).resolve().parents[2]
DOCUMENT = ROOT / "docs" / "openapi" / "channelgate-admin.yaml"
SEED = 20261205
ADMIN_PREFIX = "/.channelgate/admin/"
PUBLIC = {"GET /scim/v2/ServiceProviderConfig"}
USER = "urn:ietf:params:scim:schemas:core:2.0:User"
GROUP = "urn:ietf:params:scim:schemas:core:2.0:Group"
ERROR = "urn:ietf:params:scim:api:messages:2.0:Error"

pytestmark = [pytest.mark.timeout(120)]


def _load(examples: int, *, coverage: bool) -> OpenApiSchema:
    """The document, generating ``examples`` random cases per operation after the document's own examples and
    (with ``coverage``) schemathesis's boundary cases of every parameter and body."""
    generation = {"mode": "positive", "max-examples": examples, "deterministic": True, "database": "none"}
    phases = {"coverage": {"enabled": coverage}, "examples": {"enabled": coverage}}
    config = {"seed": SEED, "generation": generation, "phases": phases}
    return schemathesis.openapi.from_path(DOCUMENT, config=schemathesis.Config.from_dict(config))


FunctionT = TypeVar("FunctionT", bound=Callable[..., None])


def _parametrize(loaded: OpenApiSchema) -> Callable[[FunctionT], FunctionT]:
    """``loaded.parametrize()``, whose annotation is a bare ``Callable``: the test keeps its own signature."""
    return cast(Callable[[FunctionT], FunctionT], loaded.parametrize())


schema = _load(8, coverage=True)
#: A refusal comes before anything reads the request: two random cases per operation, each with every credential.
refusals = _load(2, coverage=False)


@pytest.fixture(scope="module")
def api() -> Iterator[ThreadedGateway]:
    """The gateway with a few agents (alice has a live session), a group and a deprovisioning run."""
    with threaded_gateway() as gateway, requests.Session() as client:
        client.headers["Authorization"] = f"Bearer {gateway.scim_token}"
        ids = {}
        for name in ("alice", "bob", "carol"):
            created = client.post(
                f"{gateway.url}/scim/v2/Users", json={"schemas": [USER], "userName": name}, timeout=10
            )
            assert created.status_code == 201, created.text
            ids[name] = created.json()["id"]
        group: dict[str, str | list[str] | list[dict[str, str]]] = {
            "schemas": [GROUP],
            "displayName": "chat-agents",
            "members": [{"value": ids["alice"]}],
        }
        assert client.post(f"{gateway.url}/scim/v2/Groups", json=group, timeout=10).status_code == 201
        admin = {"Authorization": f"Bearer {gateway.admin_token}"}
        left = client.post(
            f"{gateway.url}{ADMIN_PREFIX}agents/carol/deprovision", json={"reason": "left"}, headers=admin, timeout=10
        )
        assert left.status_code == 200, left.text
        data = SessionData(ids["alice"], "alice", "https://idp.example", "alice-sub", frozenset({"chat-agents"}))
        gateway.run(gateway.services.sessions.create(data, time.time()))
        yield gateway


@pytest.fixture(scope="module")
def http() -> Iterator[requests.Session]:
    """One keep-alive session for every call (schemathesis opens a new one per call otherwise)."""
    with requests.Session() as session:
        yield session


def _token_for(case: OpenApiCase, gateway: ThreadedGateway) -> str:
    return gateway.admin_token if case.operation.path.startswith(ADMIN_PREFIX) else gateway.scim_token


def _declared(case: OpenApiCase) -> set[str]:
    return set(case.operation.definition.raw.get("responses", {}))


@schemathesis.check
def no_server_error_but_a_declared_501(ctx: schemathesis.CheckContext, response: Any, case: OpenApiCase) -> None:
    """No 5xx, except a 501 the document declares (a SCIM feature the ServiceProviderConfig says is not offered)."""
    status = response.status_code
    if status >= 500 and not (status == 501 and "501" in _declared(case)):
        raise AssertionError(f"{case.operation.label} answered {status}: {response.text[:500]}")


CHECKS = [
    no_server_error_but_a_declared_501,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]


@_parametrize(schema)
def test_every_operation_answers_a_valid_client_as_documented_and_never_with_a_server_error(
    case: OpenApiCase, api: ThreadedGateway, http: requests.Session
) -> None:
    token = {"Authorization": f"Bearer {_token_for(case, api)}"}
    response = case.call(base_url=api.url, headers=token, session=http, timeout=15)
    case.validate_response(response, checks=CHECKS)


def _state(api: ThreadedGateway) -> dict[str, Any]:
    """Everything a request could change, but the access log (which records refusals): rows and live sessions."""

    async def read() -> dict[str, Any]:
        state: dict[str, Any] = {}
        async with api.services.database.engine.connect() as conn:
            for table in ("agents", "groups", "group_members", "deprovision_runs", "deprovision_steps", "scim_tokens"):
                rows = await conn.execute(text(f"SELECT * FROM {table}"))  # noqa: S608 - fixed table names
                state[table] = sorted(map(repr, rows.all()))
        alice = await api.services.agents.find("alice")
        assert alice is not None
        state["alice's sessions"] = len(await api.services.sessions.sessions_of(alice.id, time.time()))
        return state

    return api.run(read())


#: What a client without the right token may send → the token it sends (``{admin}``/``{scim}``: the real ones).
CREDENTIALS = {
    "none": None,
    "empty bearer": "Bearer ",
    "unknown bearer": "Bearer x9QkL2mN0pR7sT4vW1yZ3bC6dF8gH5jK",
    "basic": "Basic " + base64.b64encode(b"admin:admin").decode(),
    "token without a scheme": "{own}",
    "own token with a suffix": "Bearer {own}x",
    "other API's token": "Bearer {other}",
}


@_parametrize(refusals)
def test_no_operation_serves_or_changes_anything_without_its_apis_token(
    case: OpenApiCase, api: ThreadedGateway, http: requests.Session
) -> None:
    own = _token_for(case, api)
    other = api.scim_token if own == api.admin_token else api.admin_token
    # A plain dict serves: the case only reads its headers to merge them into the call's.
    case.headers = {  # type: ignore[assignment]
        key: value for key, value in (case.headers or {}).items() if key.lower() != "authorization"
    }
    before = _state(api)
    for name, credential in CREDENTIALS.items():
        headers = dict(case.headers)
        if credential is not None:
            headers["Authorization"] = credential.format(own=own, other=other)
        response = case.call(base_url=api.url, headers=headers, session=http, timeout=15)
        if case.operation.label in PUBLIC:
            assert response.status_code == 200
            continue
        assert response.status_code == 401, (name, response.status_code, response.text[:300])
        body = response.json()
        if case.operation.path.startswith(ADMIN_PREFIX):
            assert body.keys() == {"error", "message", "request_id"} and body["error"] == "admin_token_required", name
        else:
            assert body["schemas"] == [ERROR] and body["status"] == "401", name
            assert set(body) <= {"schemas", "status", "detail"}, name
        assert response.headers["www-authenticate"][0].startswith("Bearer realm="), name  # RFC 6750 §3
    assert _state(api) == before


@pytest.fixture(scope="module")
def workflow(api: ThreadedGateway, http: requests.Session) -> type[Any]:
    """schemathesis's state machine over the document's links: a Group or User created is read, replaced,
    changed and deleted by the id its creation answered (RFC 7644 §3.3), so these calls reach real resources."""
    machine = schema.as_state_machine()

    class Workflow(machine):  # type: ignore[misc, valid-type]
        def get_call_kwargs(self, case: OpenApiCase) -> dict[str, Any]:
            token = {"Authorization": f"Bearer {_token_for(case, api)}"}
            return {"base_url": api.url, "headers": token, "session": http, "timeout": 15}

        def validate_response(self, response: Any, case: OpenApiCase, **kwargs: Any) -> None:
            case.validate_response(response, checks=CHECKS, transport_kwargs=kwargs)

    return Workflow


def test_created_users_and_groups_are_read_changed_and_deleted_as_documented(workflow: type[Any]) -> None:
    workflow.run(
        settings=hypothesis.settings(
            max_examples=10,
            stateful_step_count=10,
            derandomize=True,
            database=None,
            deadline=None,
            suppress_health_check=list(hypothesis.HealthCheck),
        )
    )


def test_a_scim_body_over_the_limit_is_refused_as_too_large_not_as_broken_json(
    api: ThreadedGateway, http: requests.Session
) -> None:
    """The body is read up to one byte past 1 MiB; that cut must be reported as 413, never as invalidSyntax."""
    user = {"schemas": [USER], "userName": "big", "displayName": "x" * MAX_BODY_BYTES}
    token = {"Authorization": f"Bearer {api.scim_token}"}
    response = http.post(f"{api.url}/scim/v2/Users", json=user, headers=token, timeout=15)
    assert response.status_code == 413
    assert response.json()["schemas"] == [ERROR] and str(MAX_BODY_BYTES) in response.json()["detail"]
    assert api.run(api.services.agents.find("big")) is None


@pytest.mark.parametrize("character", ["%01", "%0D", "%1F", "%7F", "%C2%85"])
def test_a_control_character_in_a_scim_path_gets_a_scim_answer_not_a_dropped_connection(
    api: ThreadedGateway, http: requests.Session, character: str
) -> None:
    """The answer's Location repeats the path: decoded, a control character is a header value no server may send
    (RFC 9110 §5.5), so the connection used to drop without an answer."""
    token = {"Authorization": f"Bearer {api.scim_token}"}
    response = http.get(f"{api.url}/scim/v2/Users/a{character}b", headers=token, timeout=15)
    assert response.status_code == 404
    assert response.json()["schemas"] == [ERROR]
    assert response.headers["Location"] == f"{api.url}/scim/v2/Users/a{character}b"
