"""Agent rows written straight into the database, as the directory would have left them, for storage contracts."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine


async def insert_agent(
    engine: AsyncEngine,
    at: datetime,
    user_name: str,
    *,
    manager: str | None = None,
    version: int = 1,
    **state: object,
) -> str:
    """An agent ``user_name`` (active unless ``active=False``, deleted with ``deleted=True``); returns its id."""
    agent_id = str(uuid.uuid4())
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO agents (id, user_name, user_name_key, email, manager_id, active, deleted_at, source, "
                "attributes, version, created_at, updated_at) VALUES (:id, :name, :key, :email, :manager, :active, "
                ":deleted, 'scim', '{}', :version, :now, :now)"
            ),
            {
                "id": agent_id,
                "name": user_name,
                "key": user_name.lower(),
                "email": f"{user_name}@example.com",
                "manager": manager,
                "active": state.get("active", True),
                "deleted": at if state.get("deleted") else None,
                "version": version,
                "now": at,
            },
        )
    return agent_id
