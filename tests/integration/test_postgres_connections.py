"""``[database]`` as an operator writes it for a managed PostgreSQL, against a real server that accepts the gateway's
role only over TLS with a password (``hostssl … scram-sha-256``): the schema migrates, the gateway runs with its
statement timeout, ``audit verify``'s worker processes connect the same way, and a server the configured CA did not
certify is refused."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest
from sqlalchemy import text

from gateway.errors import StorageError
from gateway.settings import DatabaseSettings
from gateway.storage.database import Database, worker_dsn
from gateway.storage.migrate import head_revision, upgrade_to_head
from gateway.storage.postgres_options import worker_connect_kwargs
from tests.components.pki import TestCa, give_to
from tests.components.ports import LOOPBACK
from tests.components.postgres_server import FAST_SETTINGS, PostgresServer

pytestmark = pytest.mark.postgres

PASSWORD = "app-db-s3cret"
HBA = f"""hostssl all app {LOOPBACK}/32 scram-sha-256
host    all app {LOOPBACK}/32 reject
"""


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> TestCa:
    return TestCa(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def tls_postgres(pki: TestCa) -> Iterator[PostgresServer]:
    base = Path(tempfile.mkdtemp(prefix="channelgate-pg-tls-"))
    base.chmod(0o755)  # the server runs as postgres, below this root-owned directory
    cert, key = pki.issue("postgres-server")
    certs = base / "certs"
    certs.mkdir()
    server_cert, server_key = certs / "server.crt", certs / "server.key"
    shutil.copy(cert, server_cert)
    shutil.copy(key, server_key)
    server_key.chmod(0o600)
    give_to("postgres", certs, server_cert, server_key)
    settings = FAST_SETTINGS | {"ssl": "on", "ssl_cert_file": str(server_cert), "ssl_key_file": str(server_key)}
    server = PostgresServer(base / "cluster", settings=settings)
    try:
        server.start()
        hba = server.data_dir / "pg_hba.conf"
        hba.write_text(HBA + hba.read_text(encoding="utf-8"), encoding="utf-8")
        server.execute("SELECT pg_reload_conf()")
        server.execute(f"CREATE ROLE app LOGIN PASSWORD '{PASSWORD}'")
        server.execute("CREATE DATABASE channelgate OWNER app")
        yield server
    finally:
        server.stop()
        shutil.rmtree(base, ignore_errors=True)


def _settings(server: PostgresServer, tmp_path: Path, **values: object) -> DatabaseSettings:
    secret = tmp_path / "db-password"
    secret.write_text(PASSWORD + "\n", encoding="utf-8")
    return DatabaseSettings.model_validate(
        {"url": f"postgresql+asyncpg://app@{LOOPBACK}:{server.port}/channelgate", "password_file": str(secret)} | values
    )


async def test_the_gateway_migrates_and_runs_over_verified_tls_with_its_timeouts(
    tls_postgres: PostgresServer, pki: TestCa, tmp_path: Path
) -> None:
    settings = _settings(
        tls_postgres, tmp_path, sslmode="verify-full", sslrootcert=str(pki.ca_file), statement_timeout_seconds=30
    )
    await upgrade_to_head(settings)
    database = Database.from_settings(settings)
    try:
        async with database.engine.connect() as conn:
            encrypted = (await conn.execute(text("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()"))).scalar()
            timeout = (await conn.execute(text("SHOW statement_timeout"))).scalar()
            revision = (await conn.execute(text("SELECT version_num FROM alembic_version"))).scalar()
        assert encrypted is True
        assert timeout == "30s"
        assert revision == head_revision()

        worker = await asyncpg.connect(**worker_connect_kwargs(worker_dsn(database.engine)))
        try:
            assert await worker.fetchval("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()") is True
        finally:
            await worker.close()
    finally:
        await database.dispose()


async def test_a_server_certificate_the_configured_ca_did_not_issue_is_refused(
    tls_postgres: PostgresServer, tmp_path: Path
) -> None:
    stranger = TestCa(tmp_path, name="another-ca")
    database = Database.from_settings(
        _settings(tls_postgres, tmp_path, sslmode="verify-full", sslrootcert=str(stranger.ca_file))
    )
    try:
        with pytest.raises(StorageError) as refused:
            await database.ping()
    finally:
        await database.dispose()
    assert "certificate verify failed" in str(refused.value.detail)
    assert PASSWORD not in f"{refused.value.message} {refused.value.detail}"


async def test_without_tls_the_server_turns_the_gateway_away(tls_postgres: PostgresServer, tmp_path: Path) -> None:
    database = Database.from_settings(_settings(tls_postgres, tmp_path, sslmode="disable"))
    try:
        with pytest.raises(StorageError) as refused:
            await database.ping()
    finally:
        await database.dispose()
    assert "pg_hba.conf rejects connection" in str(refused.value.detail)
