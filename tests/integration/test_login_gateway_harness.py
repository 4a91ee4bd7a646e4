"""The login test harness signs an agent in through the real provider and reads their login record."""

from __future__ import annotations

import pytest

from tests.components.login_gateway import JSON, login_gateway, provider_pool

pytestmark = [pytest.mark.oidc, pytest.mark.timeout(60)]


async def test_the_harness_logs_alice_in_and_reads_her_login_record() -> None:
    with provider_pool() as pool:
        async with login_gateway(pool) as gateway:
            mark = await gateway.audit_mark()
            alice = await gateway.login("alice")
            assert (await alice.get(gateway.url + "/chat/echo", headers=JSON)).status_code == 200
            logins = await gateway.records_since(mark, "login")
            assert [record.agent_name for record in logins] == ["alice"]
