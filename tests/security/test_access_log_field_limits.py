"""A value its access-log column cannot hold never stops the access log.

PostgreSQL refuses a text longer than its column (``method`` holds 16 characters) and a NUL character in any text,
and the writer keeps and retries a refused batch: one such record would hold up every record queued behind it
until the queue filled and the gateway refused all traffic (fail closed). Some of these values come from outside:
nginx passes the client's request method to forward-auth as ``X-Original-Method``, whatever its length, and a
request for ``/chat/a%00b`` is logged with its path decoded. Every writer fits them: a bounded value cut to its
column, the cut marked with "…", a NUL replaced by U+FFFD. The same limits made a deprovisioning fail after the
sessions had ended, and a lookup by an id holding a NUL answer "the database is not answering".
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from gateway.audit.writer import AuditLog
from gateway.forward_auth import SECRET_HEADER
from gateway.settings import DatabaseSettings
from gateway.storage.access_log import AccessLogRepository, AccessQuery, AccessRecord
from gateway.storage.database import create_engine
from gateway.storage.migrate import upgrade_to_head
from tests.components.browserless_login import login_steps
from tests.components.echo_gateway import Deployment, deployment
from tests.components.oidc_provider import DEMO_PASSWORD, OidcAccount, OidcProvider, OidcProviderFactory

pytestmark = [pytest.mark.postgres, pytest.mark.timeout(90)]

SECRET = secrets.token_urlsafe(32)


@pytest.fixture
async def gateway(oidc_provider_factory: OidcProviderFactory, postgres_url: str) -> AsyncIterator[Deployment]:
    toml = f'[forward_auth]\nenabled = true\nsecret = "{SECRET}"\n'
    async with deployment(oidc_provider_factory, database_url=postgres_url, extra_toml=toml) as deployed:
        yield deployed


async def test_a_forward_auth_method_longer_than_its_column_is_recorded_cut_and_the_log_goes_on(
    gateway: Deployment,
) -> None:
    alice = await gateway.login("alice")
    cookie = "; ".join(f"{name}={value}" for name, value in alice.cookies.items())
    asked = {SECRET_HEADER: SECRET, "X-Original-URI": "/chat/echo"}
    async with httpx.AsyncClient() as nginx:
        strange = await nginx.get(gateway.url + "/.channelgate/auth", headers=asked | {"X-Original-Method": "A" * 40})
        await gateway.services.audit.flush()  # raised StorageError for ever before, the batch kept and retried
        usual = await nginx.get(
            gateway.url + "/.channelgate/auth", headers=asked | {"X-Original-Method": "GET", "Cookie": cookie}
        )
    await gateway.services.audit.flush()
    assert strange.status_code in (401, 403, 405)
    assert usual.status_code == 200
    assert gateway.services.audit.pending == 0
    chat = await gateway.services.access_log.search(AccessQuery(channel="chat"))
    records = [r for r in chat if r.path == "/chat/echo"]
    assert [r.method for r in records] == ["GET", "A" * 15 + "…"]
    assert [(r.detail or {}).get("fitted") for r in records] == [None, ["method"]]  # which value is not as received


async def test_a_nul_in_a_requests_path_is_recorded_replaced_and_the_log_goes_on(gateway: Deployment) -> None:
    alice = await gateway.login("alice")
    async with httpx.AsyncClient() as anybody:
        unsigned = await anybody.get(gateway.url + "/chat/a%00b", headers={"Accept": "application/json"})
    signed = await alice.get(gateway.url + "/chat/c%00d", headers={"Accept": "application/json"})
    await gateway.services.audit.flush()  # raised StorageError for ever before: invalid byte sequence 0x00
    assert gateway.services.audit.pending == 0
    assert (unsigned.status_code, signed.status_code) != (200, 200)
    fitted = {r.path: (r.detail or {}).get("fitted") for r in await gateway.services.access_log.tail(50)}
    assert fitted["/chat/a\ufffdb"] == fitted["/chat/c\ufffdd"] == ["path"]


async def test_every_bounded_value_is_cut_to_its_column_by_the_batch_and_the_strict_writer(postgres_url: str) -> None:
    await upgrade_to_head(postgres_url)
    engine = create_engine(DatabaseSettings.model_validate({"url": postgres_url}))
    repository = AccessLogRepository(engine)
    audit = AuditLog(repository)
    long: dict[str, Any] = {
        "method": "M" * 17,
        "source_ip": "1" * 65,
        "agent_name": "n" * 257,
        "actor": "a" * 300,
        "subject": "s" * 257,
        "channel": "c" * 65,
    }
    try:
        audit.submit(AccessRecord(time=datetime.now(UTC), kind="request", request_id="batched", **long))
        await audit.flush()
        [written] = await audit.repository.append(
            [AccessRecord(time=datetime.now(UTC), kind="login", request_id="strict", **long)]
        )
        stored = await repository.tail(10)
    finally:
        await engine.dispose()
    assert [r.request_id for r in stored] == ["batched", "strict"]
    for record in stored:
        for name, value in long.items():
            kept = getattr(record, name)
            assert kept == value[: len(kept) - 1] + "…", name
        assert (len(record.method or ""), len(record.agent_name or "")) == (16, 256)
        assert record.detail == {"fitted": sorted(long)}
    assert written.method == stored[1].method


async def test_a_deprovisioning_whose_reason_or_successor_the_database_cannot_hold_still_ends_the_access(
    gateway: Deployment,
) -> None:
    """The reason and the successor come from an admin's request: a NUL in the reason or a successor longer than any
    userName failed the disable's transaction on PostgreSQL, after the sessions had ended, and the agent stayed
    enabled. Fitted (the NUL replaced, the name cut), the agent is disabled and its run queued."""
    alice = await gateway.login("alice")
    body = {"reason": "left\u0000 the company", "successor": "s" * 300}
    async with httpx.AsyncClient() as admin:
        response = await admin.post(
            gateway.url + "/.channelgate/admin/agents/alice/deprovision", json=body, headers=gateway.admin_headers()
        )
    assert response.status_code == 200, response.text
    agent = await gateway.services.agents.find("alice")
    assert agent is not None and not agent.active
    [run] = await gateway.services.pipeline.runs_of_agent(agent.id)
    assert run.reason == "left\ufffd the company"
    assert run.successor is not None and len(run.successor) == 256 and run.successor.endswith("…")
    assert (await alice.get(gateway.url + "/chat/echo", headers={"Accept": "application/json"})).status_code == 401


async def test_an_id_or_name_with_a_nul_names_no_agent_and_no_run_rather_than_failing_the_database(
    gateway: Deployment,
) -> None:
    """PostgreSQL refuses a query comparing with a NUL: the admin API answered 503 "the database is not answering"
    for ``/agents/a%00b``. No stored id or name holds one, so nothing is found."""
    async with httpx.AsyncClient(headers=gateway.admin_headers()) as admin:
        base = gateway.url + "/.channelgate/admin"
        shown = await admin.get(base + "/agents/a%00b")
        ended = await admin.post(base + "/agents/a%00b/deprovision", json={"reason": "left"})
        retried = await admin.post(base + "/deprovision/runs/r%00/retry")
    answers = (shown, ended, retried)
    assert [r.status_code for r in answers] == [404, 404, 404], [r.text for r in answers]


LONG_NAME = "Dr. " + "Very Long Name " * 20  # 304 characters: the column holds 256


@pytest.fixture
async def long_accounts(oidc_provider_factory: OidcProviderFactory, postgres_url: str) -> AsyncIterator[Deployment]:
    accounts = (
        OidcAccount("long-0001", "l" * 300, DEMO_PASSWORD, "long@example.com", "Long Username", ("chat-agents",)),
        OidcAccount("name-0002", "named", DEMO_PASSWORD, "named@example.com", LONG_NAME, ("chat-agents",)),
    )

    def provider(redirect_uris: Sequence[str], **kwargs: Any) -> OidcProvider:
        return oidc_provider_factory(redirect_uris, **(kwargs | {"accounts": accounts}))

    async with deployment(provider, database_url=postgres_url) as deployed:
        yield deployed


async def test_a_sign_in_whose_claims_the_database_cannot_hold_is_refused_by_name_or_fitted(
    long_accounts: Deployment,
) -> None:
    """A user name over 256 characters was a failed write on PostgreSQL, answered as the database not answering:
    the sign-in is refused naming the claim, as SCIM refuses it. A display name is only shown: cut, not refused."""
    steps = await login_steps(long_accounts.url, "l" * 300, DEMO_PASSWORD)
    try:
        refused = await steps.client.get(steps.callback_url)
    finally:
        await steps.client.aclose()
    assert refused.status_code == 401, refused.text
    assert "user name (preferred_username) is 300 characters long; the gateway stores at most 256" in refused.text
    [record] = await long_accounts.services.access_log.search(AccessQuery(kind="login_refused"))
    assert record.reason == "unstorable_identity"

    named = await long_accounts.login("named")
    echoed = await named.get(long_accounts.url + "/chat/echo", headers={"Accept": "application/json"})
    assert echoed.status_code == 200
    agent = await long_accounts.services.agents.find("named")
    assert agent is not None and agent.display_name == LONG_NAME[:255] + "…"
