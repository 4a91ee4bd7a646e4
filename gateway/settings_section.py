"""The base of every settings section: unknown keys are errors (a typo never silently keeps a default), and a
section is immutable once validated."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, StringConstraints

#: A header name we set (RFC 9110 §5.1 field-name, narrowed to letters, digits and hyphens): anything else would
#: be refused by the HTTP server at every answer, or, with a line break, write headers of its own.
HeaderName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9-]{1,64}$")]


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
