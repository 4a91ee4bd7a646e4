"""Through the running gateway: the access log records whose data each request touched and how, the sealer
chains what the gateway writes, and ``channelgate audit verify`` answers for it (issue 5, items 1 and 3)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import text

from gateway.audit.checkpoints import generate_key
from gateway.storage.access_log import AccessQuery
from tests.components.echo_gateway import Deployment, deployment, eventually
from tests.components.oidc_provider import OidcProviderFactory

pytestmark = [pytest.mark.oidc, pytest.mark.timeout(120)]


@pytest.fixture
async def gateway(oidc_provider_factory: OidcProviderFactory, tmp_path: Path) -> AsyncIterator[Deployment]:
    private, _ = generate_key()
    rules = """
[[routes.data]]
path = "/mail/customers/{customer}/recordings/**"
methods = ["GET"]
action = "download"
subject = "path:customer"

[[routes.data]]
path = "/mail/api/notes"
subject = "body:customer.id"
"""
    audit = f"""
[audit]
seal_interval_seconds = 0.1

[audit.checkpoints]
sink = "file://{tmp_path}/checkpoints.jsonl"
signing_keys = {{ "ck1" = "{private}" }}
active_key = "ck1"
interval_seconds = 0.2
"""
    async with deployment(oidc_provider_factory, extra_toml=rules + audit) as deployed:
        yield deployed


async def test_requests_are_logged_with_their_data_subject_and_action(gateway: Deployment) -> None:
    alice = await gateway.login("alice")
    assert (await alice.get(gateway.url + "/mail/customers/C-100/recordings/7.wav")).status_code == 200
    note = {"customer": {"id": "C-200"}, "text": "called back"}
    response = await alice.post(gateway.url + "/mail/api/notes", json=note)
    assert response.status_code == 200
    assert json.loads(gateway.consoles["mail"].seen[-1].body) == note  # the body still reached the console whole
    await gateway.services.audit.flush()
    records = await gateway.services.access_log.search(AccessQuery(channel="mail", kind="request"))
    by_path = {r.path: (r.subject, r.action) for r in records}
    assert by_path["/mail/customers/C-100/recordings/7.wav"] == ("C-100", "download")
    assert by_path["/mail/api/notes"] == ("C-200", "change")
    found = await gateway.services.access_log.search(AccessQuery(subject="C-100"))
    assert [r.path for r in found] == ["/mail/customers/C-100/recordings/7.wav"]


async def test_the_gateways_records_are_sealed_and_verify_until_one_is_edited(gateway: Deployment) -> None:
    alice = await gateway.login("alice")
    for number in range(5):
        await alice.get(gateway.url + f"/mail/customers/C-{number}/recordings/1.wav")
    await gateway.services.audit.flush()

    async def sealed() -> bool:
        count, _ = await gateway.services.sealer.store.unsealed()
        last = await gateway.services.sealer.store.last_checkpoint()
        head = await gateway.services.sealer.store.head()
        return count == 0 and last is not None and last.chain_pos == head.chain_pos and last.delivered_at is not None

    await eventually(sealed)
    verified = await gateway.cli("audit", "verify")
    assert verified.returncode == 0, verified.stderr
    assert verified.stdout.startswith("OK: ") and "signed checkpoint" in verified.stdout
    # The same in two worker processes spawned by the command (each imports it again).
    in_two = await gateway.cli("audit", "verify", "--workers", "2")
    assert in_two.returncode == 0 and in_two.stdout.split(";")[0] == verified.stdout.split(";")[0], in_two.stderr
    head = await gateway.services.sealer.store.head()
    async with gateway.services.database.engine.begin() as conn:
        await conn.execute(text("UPDATE access_log SET subject = 'C-999' WHERE chain_pos = 3"))
        (seq,) = (await conn.execute(text("SELECT seq FROM access_log WHERE chain_pos = 3"))).one()
    for workers in ("1", "2"):
        failed = await gateway.cli("audit", "verify", "--workers", workers)
        assert failed.returncode == 1
        assert f"FAILED at seq {seq}, chain position 3: the record was altered" in failed.stderr
    assert head.chain_pos >= 5
