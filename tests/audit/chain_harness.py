"""A migrated database with access records, a sealer signing into a checkpoint file, and raw SQL for tampering."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from pydantic import SecretStr
from sqlalchemy import text

from gateway.audit.chain import Sealer
from gateway.audit.checkpoints import CheckpointSigner, FileSink, generate_key
from gateway.audit.settings import AuditSettings, CheckpointSettings
from gateway.audit.verify import VerifyReport, verify_chain
from gateway.metrics import Metrics
from gateway.settings import DatabaseSettings
from gateway.storage.access_log import AccessLogRepository, AccessRecord
from gateway.storage.audit_chain import ChainStore
from gateway.storage.database import Database
from gateway.storage.migrate import upgrade_to_head

T0 = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)


def record(number: int, **fields: Any) -> AccessRecord:
    values: dict[str, Any] = {
        "time": T0 + timedelta(seconds=number),
        "kind": "request",
        "agent_id": f"agent-{number % 7}",
        "agent_name": f"agent{number % 7}",
        "channel": "chat",
        "method": "GET",
        "path": f"/chat/customers/{number}",
        "status": 200,
        "decision": "allow",
        "subject": f"C-{number:05d}",
        "action": "view",
        "detail": {"n": number, "z": [1, 2], "a": "é"},
    }
    values.update(fields)
    return AccessRecord(**values)


def checkpoint_settings(path: Path, keys: dict[str, str], active: str, trusted: dict[str, str]) -> CheckpointSettings:
    return CheckpointSettings(
        sink=f"file://{path}",
        signing_keys={name: SecretStr(value) for name, value in keys.items()},
        active_key=active,
        trusted_keys=trusted,
        interval_seconds=3600,
    )


@dataclass
class Chain:
    database: Database
    repository: AccessLogRepository
    store: ChainStore
    sealer: Sealer
    checkpoint_file: Path
    signer: CheckpointSigner

    async def write(self, records: Sequence[AccessRecord], *, batch: bool = False) -> None:
        if batch:
            await self.repository.append_batch(records)
        else:
            await self.repository.append(records)

    async def seal_and_sign(self) -> None:
        await self.sealer.seal_all()
        await self.sealer.checkpoint()

    async def verify(self, **kwargs: Any) -> VerifyReport:
        lines = self.checkpoint_file.read_text().splitlines() if self.checkpoint_file.exists() else []
        return await verify_chain(self.store, lines, self.signer.trusted, **kwargs)

    async def sql(self, statement: str, **params: Any) -> list[Any]:
        async with self.database.engine.begin() as conn:
            result = await conn.execute(text(statement), params)
            return list(result.all()) if result.returns_rows else []

    async def seq_at(self, position: int) -> int:
        [(seq,)] = await self.sql("SELECT seq FROM access_log WHERE chain_pos = :p", p=position)
        return int(seq)


@asynccontextmanager
async def chain_on(
    database_url: str, tmp_path: Path, *, keys: dict[str, str] | None = None, active: str = "k1",
    trusted: dict[str, str] | None = None,
) -> AsyncIterator[Chain]:  # fmt: skip
    await upgrade_to_head(database_url)
    database = Database.from_settings(DatabaseSettings(url=SecretStr(database_url)))
    if keys is None:
        keys = {"k1": generate_key()[0]}
    path = tmp_path / "checkpoints.jsonl"
    settings = checkpoint_settings(path, keys, active, trusted or {})
    signer = CheckpointSigner(settings)
    store = ChainStore(database.engine)
    sealer = Sealer(store, AuditSettings(checkpoints=settings), Metrics(), signer, FileSink(path))
    repository = AccessLogRepository(database.engine)
    try:
        yield Chain(database, repository, store, sealer, path, signer)
    finally:
        repository.close()
        store.close()
        await database.dispose()
