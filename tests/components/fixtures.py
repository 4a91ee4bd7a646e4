"""Pytest fixtures that start real servers; registered by ``pytest_plugins = ["tests.components.fixtures"]``.

One Redis and one PostgreSQL server serve the whole session; ``redis_url`` and ``postgres_url`` give each test a
clean slate on them (``module_redis_url`` and ``module_postgres_url`` one slate for a module whose tests share a
stack), and ``database_url`` runs a test on SQLite and again on PostgreSQL. Tests that kill or restart
a server (fault tests) start their own ``RedisServer()`` or ``PostgresServer(...)`` instead of disturbing the
shared one. A missing binary fails the test with a message to run ``make test``; nothing is skipped silently.
"""

from __future__ import annotations

import shutil
import tempfile
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.components.oidc_provider import (
    STANDARD_ACCOUNTS,
    TEST_CLIENT_ID,
    TEST_CLIENT_SECRET,
    Jwks,
    OidcAccount,
    OidcProvider,
    OidcProviderFactory,
    provider_config,
)
from tests.components.postgres_server import PostgresServer
from tests.components.redis_server import RedisServer


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """A Redis server shared by the test session."""
    with RedisServer() as server:
        yield server


def _emptied(redis_server: RedisServer) -> str:
    if not redis_server.running:
        redis_server.start()
    redis_server.flushall()
    return redis_server.url


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """The shared Redis server's URL, emptied (and restarted if a test stopped it) before each test."""
    return _emptied(redis_server)


@pytest.fixture(scope="module")
def module_redis_url(redis_server: RedisServer) -> str:
    """The shared Redis server's URL, emptied once for a module; its tests must not also ask for ``redis_url``."""
    return _emptied(redis_server)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A PostgreSQL server shared by the test session (under /tmp, where the postgres user can reach it)."""
    base_dir = Path(tempfile.mkdtemp(prefix="channelgate-pg-"))
    try:
        with PostgresServer(base_dir) as server:
            yield server
    finally:
        shutil.rmtree(base_dir, ignore_errors=True)


@contextmanager
def _fresh_database(postgres_server: PostgresServer) -> Iterator[str]:
    if not postgres_server.running:
        postgres_server.start()
    name = f"test_{uuid.uuid4().hex[:16]}"
    url = postgres_server.create_database(name)
    yield url
    postgres_server.drop_database(name)


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> Iterator[str]:
    """SQLAlchemy async URL of a fresh, empty database, dropped after the test."""
    with _fresh_database(postgres_server) as url:
        yield url


@pytest.fixture(scope="module")
def module_postgres_url(postgres_server: PostgresServer) -> Iterator[str]:
    """SQLAlchemy async URL of a fresh, empty database for a module's tests, dropped after the last one."""
    with _fresh_database(postgres_server) as url:
        yield url


@pytest.fixture(
    params=[
        pytest.param("sqlite", id="sqlite"),
        pytest.param("postgresql", id="postgresql", marks=pytest.mark.postgres),
    ]
)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The test runs twice: on a SQLite file (in a directory yet to be made) and on a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path}/data/channelgate.db"
    url: str = request.getfixturevalue("postgres_url")
    return url


@pytest.fixture
def oidc_provider_factory() -> Iterator[OidcProviderFactory]:
    """A factory of started providers (alice, bob, carol with DEMO_PASSWORD by default), all stopped after the test."""
    started: list[OidcProvider] = []

    def start(
        redirect_uris: Sequence[str],
        *,
        client_id: str = TEST_CLIENT_ID,
        client_secret: str = TEST_CLIENT_SECRET,
        post_logout_redirect_uris: Sequence[str] = (),
        backchannel_logout_uri: str | None = None,
        accounts: Sequence[OidcAccount] = STANDARD_ACCOUNTS,
        jwks: Jwks | None = None,
        ttl: Mapping[str, int] | None = None,
    ) -> OidcProvider:
        provider = OidcProvider(
            provider_config(
                redirect_uris,
                client_id=client_id,
                client_secret=client_secret,
                post_logout_redirect_uris=post_logout_redirect_uris,
                backchannel_logout_uri=backchannel_logout_uri,
                accounts=accounts,
                jwks=jwks,
                ttl=ttl,
            )
        )
        started.append(provider)
        provider.start()
        return provider

    yield start
    for provider in started:
        provider.close()
