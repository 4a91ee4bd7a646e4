"""The login the agent contract tests make: the identity provider, the clock, and the link rule most of them use."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

ISSUER = "https://idp.example.com"
NOW = datetime(2025, 3, 1, 9, 30, tzinfo=UTC)
#: The default link rule; an unverified email, so no test links by email unless it says so.
BY_NAME: dict[str, Any] = {"link_by": "user_name_is_preferred_username", "email_verified": False}
