"""Repositories handed one transaction commit together, on SQLite and PostgreSQL: an agent's state change and its
access record are both written or neither is, so no privileged action stands without its record."""

from __future__ import annotations

import pytest

from gateway.storage.access_log import AccessLogRepository, AccessRecord
from gateway.storage.agents import AgentRepository
from gateway.storage.database import Database
from tests.contracts.agent_logins import BY_NAME, ISSUER, NOW


async def test_a_state_change_and_its_record_commit_together_or_not_at_all(
    database: Database, repo: AgentRepository
) -> None:
    log = AccessLogRepository(database.engine)
    agent = await repo.link_or_create_from_login(ISSUER, "sub-1", "alice", None, None, NOW, **BY_NAME)

    async def deprovision(*, fail: bool) -> None:
        async with database.begin() as conn:
            await repo.set_active(agent.id, False, "deprovisioned", NOW, conn=conn)
            await log.append([AccessRecord(time=NOW, kind="deprovision", agent_id=agent.id)], conn=conn)
            if fail:
                raise RuntimeError("the revocation step failed")

    with pytest.raises(RuntimeError):
        await deprovision(fail=True)
    unchanged = await repo.get(agent.id)
    assert unchanged is not None
    assert unchanged.active
    assert await log.tail() == []

    await deprovision(fail=False)
    disabled = await repo.get(agent.id)
    assert disabled is not None
    assert not disabled.active
    assert [r.kind for r in await log.for_agent(agent.id)] == ["deprovision"]
