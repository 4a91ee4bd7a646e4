"""The admin API over real HTTP (security-tests items 6 and 25), and the metrics that show what it did.

A bearer token is the only way in: no token, a wrong token or a cross-site form riding on the agent's cookie is
refused; GET never changes state; a deprovision answers only once the agent's sessions are gone, and says so.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator

import httpx
import pytest

from gateway.errors import StorageError
from tests.components.echo_gateway import (
    Deployment,
    cookie_of,
    deployment,
)
from tests.components.oidc_provider import OidcProviderFactory

pytestmark = [pytest.mark.oidc, pytest.mark.timeout(90)]

JSON = {"Accept": "application/json"}


@pytest.fixture
async def gateway(oidc_provider_factory: OidcProviderFactory) -> AsyncIterator[Deployment]:
    async with deployment(oidc_provider_factory) as deployed:
        yield deployed


@pytest.fixture
async def admin() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as client:
        yield client


def _deprovision_url(gateway: Deployment, agent: str) -> str:
    return f"{gateway.url}/.channelgate/admin/agents/{agent}/deprovision"


async def _still_serves(gateway: Deployment, client: httpx.AsyncClient) -> bool:
    return (await client.get(gateway.url + "/chat/echo", headers=JSON)).status_code == 200


@pytest.mark.parametrize(
    "authorization",
    [None, "", "Bearer", "Bearer wrong-token", "Basic YWRtaW46YWRtaW4=", "Bearer {token}x", "Token {token}"],
    ids=["absent", "empty", "no-token", "wrong-token", "basic", "longer-token", "other-scheme"],
)
async def test_the_admin_api_refuses_a_missing_or_wrong_token_with_401_json(
    gateway: Deployment, admin: httpx.AsyncClient, authorization: str | None
) -> None:
    alice = await gateway.login("alice")
    headers = {"Content-Type": "application/json"}
    if authorization is not None:
        headers["Authorization"] = authorization.format(token=gateway.admin_token)
    for method, url in (
        ("POST", _deprovision_url(gateway, "alice")),
        ("GET", gateway.url + "/.channelgate/admin/agents/alice"),
    ):
        response = await admin.request(
            method, url, json={"reason": "left"} if method == "POST" else None, headers=headers
        )
        assert response.status_code == 401, (method, response.text)
        assert response.headers["content-type"].startswith("application/json")
        assert response.json()["error"] == "admin_token_required"
    assert await _still_serves(gateway, alice)


async def test_a_cross_site_form_post_riding_on_the_agents_cookie_is_refused(
    gateway: Deployment, admin: httpx.AsyncClient
) -> None:
    alice = await gateway.login("alice")
    response = await admin.post(
        _deprovision_url(gateway, "alice"),
        content=b"reason=left",
        headers={
            "Content-Type": "application/x-www-form-urlencoded",
            "Cookie": cookie_of(alice),
            "Origin": "https://evil.example",
            "Accept": "text/html",
        },
    )
    assert response.status_code in (401, 403)
    assert await _still_serves(gateway, alice)
    # Even with the admin token, a form body is not accepted: the API speaks JSON only.
    with_token = await admin.post(
        _deprovision_url(gateway, "alice"),
        content=b"reason=left",
        headers={"Authorization": f"Bearer {gateway.admin_token}", "Content-Type": "application/x-www-form-urlencoded"},
    )
    assert with_token.status_code == 400
    assert await _still_serves(gateway, alice)


async def test_get_never_changes_state(gateway: Deployment, admin: httpx.AsyncClient) -> None:
    alice = await gateway.login("alice")
    token = {"Authorization": f"Bearer {gateway.admin_token}"}
    status = await admin.get(gateway.url + "/.channelgate/admin/agents/alice", headers=token)
    assert status.status_code == 200
    assert status.json()["active"] is True and status.json()["live_sessions"] == 1
    assert status.json()["live_sessions_not_checked"] is None
    for url in (_deprovision_url(gateway, "alice"), _deprovision_url(gateway, "alice") + "?reason=left"):
        response = await admin.get(url, headers=token)
        assert response.status_code >= 400
    again = await admin.get(gateway.url + "/.channelgate/admin/agents/alice", headers=token)
    assert again.json()["active"] is True and again.json()["live_sessions"] == 1
    assert await _still_serves(gateway, alice)


async def test_deprovisioning_an_unknown_agent_answers_404_json(gateway: Deployment, admin: httpx.AsyncClient) -> None:
    response = await admin.post(
        _deprovision_url(gateway, "nobody-here"), json={"reason": "left"}, headers=gateway.admin_headers()
    )
    assert response.status_code == 404
    assert response.json()["error"] == "not_found"


@pytest.mark.parametrize(
    "body",
    [b"", b"{}", b'{"reason": ""}', b'{"reason": "   "}', b'{"reason": 7}', b"[]", b"not json"],
    ids=["empty", "no-reason", "empty-reason", "blank-reason", "number", "array", "not-json"],
)
async def test_a_deprovision_without_a_reason_is_400_and_changes_nothing(
    gateway: Deployment, admin: httpx.AsyncClient, body: bytes
) -> None:
    alice = await gateway.login("alice")
    response = await admin.post(_deprovision_url(gateway, "alice"), content=body, headers=gateway.admin_headers())
    assert response.status_code == 400, response.text
    assert response.json()["error"] == "bad_request"
    assert await _still_serves(gateway, alice)


async def test_deprovision_revokes_the_sessions_and_a_second_one_is_harmless(
    gateway: Deployment, admin: httpx.AsyncClient
) -> None:
    alice = await gateway.login("alice")
    second_browser = await gateway.login("alice")
    bob = await gateway.login("bob")

    first = await admin.post(
        _deprovision_url(gateway, "alice"), json={"reason": "left"}, headers=gateway.admin_headers()
    )
    assert first.status_code == 200, first.text
    assert first.headers["content-type"].startswith("application/json")
    assert first.json()["active"] is False
    assert first.json()["sessions_revoked"] == 2
    for client in (alice, second_browser):
        assert (await client.get(gateway.url + "/chat/echo", headers=JSON)).status_code == 401
    assert await _still_serves(gateway, bob)

    second = await admin.post(
        _deprovision_url(gateway, "alice"), json={"reason": "left"}, headers=gateway.admin_headers()
    )
    assert second.status_code == 200
    assert second.json()["sessions_revoked"] == 0
    assert second.json()["active"] is False


def _sample(metrics: str, name: str, **labels: str) -> float:
    """The value of one sample of the Prometheus text format, 0 when it is absent."""
    wanted = ",".join(f'{key}="{value}"' for key, value in labels.items())
    for line in metrics.splitlines():
        series, _, value = line.rpartition(" ")
        if series == (f"{name}{{{wanted}}}" if labels else name):
            return float(value)
    return 0.0


async def test_metrics_count_requests_decisions_and_revocations_and_healthz_is_200(
    gateway: Deployment, admin: httpx.AsyncClient
) -> None:
    assert (await admin.get(gateway.url + "/.channelgate/healthz")).status_code == 200
    bob = await gateway.login("bob")
    assert (await bob.get(gateway.url + "/chat/echo", headers=JSON)).status_code == 200
    assert (await bob.get(gateway.url + "/phone/", headers=JSON)).status_code == 403
    await admin.post(_deprovision_url(gateway, "bob"), json={"reason": "left"}, headers=gateway.admin_headers())

    response = await admin.get(gateway.url + "/.channelgate/metrics")
    assert response.status_code == 200
    metrics = response.text
    assert _sample(metrics, "channelgate_requests_total", channel="chat", status="2xx") == 1
    assert _sample(metrics, "channelgate_requests_total", channel="phone", status="4xx") == 1
    assert _sample(metrics, "channelgate_decisions_total", channel="chat", decision="allow") == 1
    assert _sample(metrics, "channelgate_decisions_total", channel="phone", decision="deny") == 1
    assert _sample(metrics, "channelgate_revocations_total") == 1
    assert _sample(metrics, "channelgate_sessions_revoked_total") == 1
    assert gateway.admin_token not in metrics


async def test_deprovisioning_counts_read_while_the_database_is_down_are_not_a_number_not_the_last_values(
    gateway: Deployment, admin: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    counted = (await admin.get(gateway.url + "/.channelgate/metrics")).text
    # Every state is a series from the first scrape (0 included), so an alert has something to compare.
    for state in ("running", "held", "done", "attention", "superseded"):
        assert f'channelgate_deprovision_runs{{state="{state}"}} 0.0' in counted

    async def down(**_: object) -> None:  # the repository's error when the database does not answer
        raise StorageError("select deprovision_runs failed on sqlite:///…", detail="database is locked")

    monkeypatch.setattr(gateway.services.pipeline, "count_runs", down)
    response = await admin.get(gateway.url + "/.channelgate/metrics")

    assert response.status_code == 200  # the other metrics are still scraped
    assert math.isnan(_sample(response.text, "channelgate_deprovision_runs", state="done"))
    assert "sqlite" not in response.text
