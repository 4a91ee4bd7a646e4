"""SCIM bearer tokens: one per IdP client, kept as SHA-256 only (RFC 7644 §2: the client authenticates per request).

A token is 256 bits from ``secrets`` (``cgscim_`` prefix, so a leaked one is recognisable in a scanner), shown
once at creation and never stored: a copy of the table cannot be replayed against /scim/v2. With that much
entropy an unsalted hash is not guessable, and looking it up by hash takes no secret-dependent comparison.
"""

from __future__ import annotations

import builtins
import hashlib
import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Final

from sqlalchemy import delete, insert, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.errors import BadRequest, NotFound
from gateway.storage._time import from_db, to_db
from gateway.storage.database import read_transaction, write_transaction
from gateway.storage.quick_reads import QuickReads
from gateway.storage.schema import scim_tokens

TOKEN_PREFIX: Final = "cgscim_"  # noqa: S105 - a public prefix, not a secret
#: How stale ``last_used_at`` may be: it tells an operator whether a client is still in use, not when exactly.
LAST_USED_RESOLUTION: Final = timedelta(minutes=1)
_NAME: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "replace")).hexdigest()


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


@dataclass(frozen=True, slots=True)
class ScimToken:
    name: str
    created_at: datetime
    revoked_at: datetime | None
    last_used_at: datetime | None

    @property
    def active(self) -> bool:
        return self.revoked_at is None


class ScimTokenRepository:
    def __init__(self, engine: AsyncEngine, reads: QuickReads | None = None) -> None:
        self._engine = engine
        self._reads = reads or QuickReads(engine)

    async def create(self, name: str, now: datetime, token: str | None = None) -> str:
        """Store a token for client ``name`` and return it (the only time it is visible).

        A revoked client's name can be reused; a live one cannot (revoke it first, so two tokens never
        silently authenticate the same client).
        """
        if not _NAME.fullmatch(name):
            raise BadRequest(f"{name!r} is not a valid client name: use 1-64 letters, digits, '.', '_' or '-'")
        token = token or new_token()
        async with write_transaction(self._engine) as conn:
            existing = (await conn.execute(select(scim_tokens).where(scim_tokens.c.name == name))).mappings().first()
            if existing is not None:
                if existing["revoked_at"] is None:
                    raise BadRequest(f"the SCIM client {name!r} already has a live token; revoke it first")
                await conn.execute(delete(scim_tokens).where(scim_tokens.c.name == name))
            await conn.execute(
                insert(scim_tokens).values(name=name, token_hash=token_hash(token), created_at=to_db(now))
            )
        return token

    async def authenticate(self, token: str, now: datetime) -> str | None:
        """The client name of a live token, or None; records when the token was last used, to the minute.

        Every SCIM request authenticates, so a write (and a commit to disk) per request would cap /scim/v2 at
        the disk's commit rate; ``last_used_at`` is rewritten only once it is older than ``LAST_USED_RESOLUTION``.
        """
        digest = token_hash(token)
        query = select(scim_tokens.c.name, scim_tokens.c.last_used_at).where(
            scim_tokens.c.token_hash == digest, scim_tokens.c.revoked_at.is_(None)
        )
        row = await self._reads.run(lambda conn: conn.execute(query).first())
        if row is None:
            return None
        if row.last_used_at is None or from_db(row.last_used_at) <= now - LAST_USED_RESOLUTION:
            async with write_transaction(self._engine) as conn:
                await conn.execute(
                    update(scim_tokens).where(scim_tokens.c.token_hash == digest).values(last_used_at=to_db(now))
                )
        return str(row.name)

    async def revoke(self, name: str, now: datetime) -> None:
        async with write_transaction(self._engine) as conn:
            result = await conn.execute(
                update(scim_tokens)
                .where(scim_tokens.c.name == name, scim_tokens.c.revoked_at.is_(None))
                .values(revoked_at=to_db(now))
            )
        if result.rowcount == 0:
            raise NotFound(f"no live SCIM token for the client {name!r}")

    async def list(self) -> builtins.list[ScimToken]:
        async with read_transaction(self._engine) as conn:
            rows = (await conn.execute(select(scim_tokens).order_by(scim_tokens.c.name))).mappings()
            return [
                ScimToken(
                    name=row["name"],
                    created_at=from_db(row["created_at"]),
                    revoked_at=None if row["revoked_at"] is None else from_db(row["revoked_at"]),
                    last_used_at=None if row["last_used_at"] is None else from_db(row["last_used_at"]),
                )
                for row in rows
            ]
