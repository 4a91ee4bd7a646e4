"""The base of every settings section: unknown keys are errors (a typo never silently keeps a default), and a
section is immutable once validated."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
