"""A logout whose revocation Redis loses while the logout is still waiting for the replicas' acknowledgements — Redis
crashes inside its ``everysec`` window and restarts without it — is ended again by the sweep, against a real
``redis-server`` and the migrated database on SQLite and PostgreSQL (gateway/deprovision/revived.py).

Nothing written to Redis after the revocation can prove the revocation is still there (that write may reach the
restarted Redis): a marker written after it let such a logout's revived session stay valid (review of 43d148d).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest
from pydantic import SecretStr

from gateway.audit.writer import AuditLog
from gateway.deprovision.kill import SessionKiller
from gateway.deprovision.logouts import Logouts
from gateway.deprovision.revived import RevivedSessions
from gateway.errors import ChannelgateError
from gateway.metrics import Metrics
from gateway.sessions.base import Revocation, SessionData, SessionState
from gateway.settings import DatabaseSettings
from gateway.storage.access_log import AccessLogRepository
from gateway.storage.agents import AgentRepository
from gateway.storage.database import Database
from gateway.storage.migrate import upgrade_to_head
from gateway.storage.session_ends import SessionEndRepository
from tests.components.redis_server import RedisServer
from tests.components.session_stores import redis_store
from tests.integration.test_revived_sessions import _command

pytestmark = [pytest.mark.redis, pytest.mark.timeout(90)]


@pytest.fixture
async def database(database_url: str) -> AsyncIterator[Database]:
    await upgrade_to_head(database_url)
    database = Database.from_settings(DatabaseSettings(url=SecretStr(database_url)))
    yield database
    await database.dispose()


def _restart_without_what_came_since_the_save(server: RedisServer) -> None:
    """Redis crashes inside its ``everysec`` window and restarts from the last durable point (the test's SAVE)."""
    server.kill()
    server.start()


async def test_a_logout_redis_lost_while_it_waited_for_acknowledgements_is_ended_again_by_the_sweep(
    database: Database,
) -> None:
    """Redis loses the logout's revocation while it waits for the replicas, and again its second revocation after
    the end is saved (gateway/deprovision/endings.py, which alone would end the revived session): the sweep ends it."""
    with RedisServer() as server:
        agents = AgentRepository(database.engine)
        audit = AuditLog(AccessLogRepository(database.engine))
        store = redis_store(server.url, "replica-a")
        try:
            logouts = Logouts(database, SessionEndRepository(database.engine), audit)
            killer = SessionKiller(database, agents, store, None, audit, Metrics(), 1.0, logouts=logouts)
            alice = await agents.link_or_create_from_login(
                "https://idp.example", "sub-alice", "alice", None, None, datetime.now(UTC),
                link_by="user_name_is_preferred_username", email_verified=False,
            )  # fmt: skip
            data = SessionData(alice.id, "alice", "https://idp.example", "sub-alice")
            stolen = await store.create(data, time.time())
            assert _command(server, "SAVE").startswith(b"+OK")  # the last durable point still holds the session
            real_wait, real_again = store.wait_for_acks, store.revoke_agent_if_any

            async def crash_while_waiting(revocation: Revocation, timeout: float) -> tuple[set[str], set[str]]:
                _restart_without_what_came_since_the_save(server)  # Redis restarts without the revocation
                with contextlib.suppress(ChannelgateError):
                    await store.ping()  # the pool reconnects
                return await real_wait(revocation, timeout)

            async def crash_after_the_second(agent_id: str) -> tuple[int, Revocation | None]:
                ended = await real_again(agent_id)
                _restart_without_what_came_since_the_save(server)  # and without the second one
                with contextlib.suppress(ChannelgateError):
                    await store.ping()
                return ended

            store.wait_for_acks = crash_while_waiting  # type: ignore[method-assign]
            store.revoke_agent_if_any = crash_after_the_second  # type: ignore[method-assign]
            try:
                await killer.endings.end_sessions(alice.id)  # a CAEP / console / back-channel logout, reported done
            finally:
                store.wait_for_acks, store.revoke_agent_if_any = real_wait, real_again  # type: ignore[method-assign]
            assert (await store.lookup(stolen.id, time.time())).state is SessionState.VALID  # revived

            sweep = RevivedSessions(agents, store, audit, Metrics(), session_lifetime_seconds=3600, logouts=logouts)
            await sweep.sweep_if_due()

            assert (await store.lookup(stolen.id, time.time())).state is not SessionState.VALID
        finally:
            await store.close()
