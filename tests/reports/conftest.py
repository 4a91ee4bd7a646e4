"""A channelgate installation on a fresh database (SQLite and PostgreSQL, ``database_url``) with the core services
open, for the reports' queries and builders; records are seeded through the access log's own repository."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway.services import Services, open_core
from gateway.settings import load_settings
from gateway.storage.migrate import upgrade_to_head


def config_text(database_url: str, review: str = "") -> str:
    return f"""
[server]
public_url = "https://gateway.example"

[database]
url = "{database_url}"

[oidc]
issuer = "https://idp.example"
client_id = "channelgate"
client_secret = "unused"

[audit.review]
{review}
"""


@pytest.fixture
def review_toml() -> str:
    """``[audit.review]`` lines; a test module overrides this fixture for other hours or zones."""
    return "\n".join(
        [
            'timezone = "Asia/Seoul"',
            'business_hours = "08:00-19:00"',
            "volume_floor_requests = 10",
            "volume_floor_downloads = 3",
        ]
    )


@pytest.fixture
async def services(database_url: str, tmp_path: Path, review_toml: str) -> AsyncIterator[Services]:
    config = tmp_path / "channelgate.toml"
    config.write_text(config_text(database_url, review_toml), encoding="utf-8")
    await upgrade_to_head(database_url)
    opened = open_core(load_settings(config, environ={}))
    try:
        yield opened
    finally:
        await opened.close()
