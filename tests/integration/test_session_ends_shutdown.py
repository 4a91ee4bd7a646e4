"""Ends kept in process are not lost at a clean shutdown, and the task that replays them survives what it cannot
read (gateway/services.py ``Services.close``, gateway/app.py ``_revived_sessions``)."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from gateway import app as app_module
from gateway.errors import StorageError
from gateway.settings import DatabaseSettings
from gateway.storage.database import Database
from gateway.storage.session_ends import EndKind, SessionEnd, SessionEndRepository
from tests.components.echo_gateway import deployment
from tests.components.oidc_provider import OidcProviderFactory

pytestmark = [pytest.mark.oidc, pytest.mark.timeout(60)]


async def test_an_end_kept_in_process_is_written_at_shutdown(
    oidc_provider_factory: OidcProviderFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path}/cg.db"
    end = SessionEnd(datetime.now(UTC), EndKind.AGENT, "a-1")
    async with deployment(oidc_provider_factory, database_url=url) as gateway:
        ends = gateway.services.logouts._ends
        real = ends.add
        down = [True]

        async def down_for_now(*args: Any, **kwargs: Any) -> None:
            if down[0]:
                raise StorageError("database write failed on sqlite:///…", detail="database is locked")
            await real(*args, **kwargs)

        monkeypatch.setattr(ends, "add", down_for_now)
        monkeypatch.setattr(app_module, "HEARTBEAT_SECONDS", 3600.0)  # no sweep turn writes it first
        with pytest.raises(StorageError):
            await gateway.services.logouts.remember([end])
        down[0] = False

    database = Database.from_settings(DatabaseSettings(url=SecretStr(url)))
    try:
        assert await SessionEndRepository(database.engine).since(datetime.fromtimestamp(0, UTC)) == [end]
    finally:
        await database.dispose()


class _Sweep:
    """Stands in for RevivedSessions: fails once with what no handler expects, then counts its turns."""

    def __init__(self) -> None:
        self.turns = 0

    async def sweep_if_due(self) -> int:
        self.turns += 1
        if self.turns == 1:
            raise ValueError("'tenant' is not a valid EndKind")
        return 0


async def test_the_sweep_task_survives_an_unexpected_error(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(app_module, "HEARTBEAT_SECONDS", 0.01)
    sweep = _Sweep()
    services: Any = type("Services", (), {"revived": sweep})()
    task = asyncio.create_task(app_module._revived_sessions(services))
    with caplog.at_level(logging.ERROR, "channelgate"):
        for _ in range(200):
            if sweep.turns >= 3:
                break
            await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert sweep.turns >= 3
    assert "failed unexpectedly" in caplog.text
