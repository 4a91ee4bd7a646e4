"""Research item 28: access records are kept two years by default and a setting below PIPA's floor is refused.

The safety-measure standard (art. 8 ①) keeps access records at least one year, two for large handlers; the history
of access-right grants and removals is kept at least three years (art. 5). ``tests/audit/test_retention.py`` shows
the purge honouring both; here, the settings cannot be made to ask for less.
"""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from gateway.audit.settings import AuditSettings

TWO_YEARS = 730
THREE_YEARS = 1095


def test_by_default_access_records_keep_two_years_and_grants_three() -> None:
    settings = AuditSettings()
    assert settings.retention_days >= TWO_YEARS
    assert settings.grant_retention_days >= THREE_YEARS


@pytest.mark.parametrize(
    ("field", "days"),
    [("retention_days", 364), ("retention_days", 0), ("grant_retention_days", THREE_YEARS - 1)],
)
def test_a_retention_below_the_legal_floor_is_refused_naming_the_setting(field: str, days: int) -> None:
    with pytest.raises(ValidationError) as refused:
        AuditSettings.model_validate({field: days})
    assert [error["loc"] for error in refused.value.errors()] == [(field,)]


def test_the_floor_itself_is_accepted() -> None:
    settings = AuditSettings.model_validate({"retention_days": 365, "grant_retention_days": THREE_YEARS})
    assert (settings.retention_days, settings.grant_retention_days) == (365, THREE_YEARS)
