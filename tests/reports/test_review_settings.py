"""``[audit.review]``: a bad time zone, business hours or weekday is refused at start-up with a message that says
what to write instead, never silently replaced by a default."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from gateway.audit.settings import AuditSettings, ReviewSettings


def test_the_default_review_is_seoul_office_hours_on_weekdays() -> None:
    review = AuditSettings().review
    assert (review.timezone, review.business_minutes) == ("Asia/Seoul", (8 * 60, 19 * 60))
    assert review.business_days == ("mon", "tue", "wed", "thu", "fri")
    assert ReviewSettings(business_hours="00:00-24:00").business_minutes == (0, 1440)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("timezone", "Korea/Busan", "unknown time zone 'Korea/Busan'"),
        ("timezone", "../../etc/passwd", "unknown time zone"),
        ("business_hours", "8-19", "HH:MM-HH:MM"),
        ("business_hours", "19:00-08:00", "must end after they start"),
        ("business_hours", "08:00-24:30", "on the same day"),
        ("business_days", ["monday"], "'mon'"),
        ("volume_factor", 1.0, "greater than 1"),
        ("volume_floor_requests", 0, "greater than or equal to 1"),
    ],
)
def test_a_bad_review_setting_is_refused_with_what_to_write(field: str, value: object, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        ReviewSettings.model_validate({field: value})
