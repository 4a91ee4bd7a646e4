"""Alembic migrations, run programmatically by ``gateway.storage.migrate`` (no alembic.ini needed)."""
