"""A failure of the forward-auth answer written from the parser repeats at the proxy's request rate: the first is
logged with its traceback, then one line a minute with how many there were."""

from __future__ import annotations

import logging

import pytest

from gateway.forward_auth_protocol import Failures


def test_repeated_failures_are_logged_once_a_minute_with_their_count(caplog: pytest.LogCaptureFixture) -> None:
    now = [1000.0]
    failures = Failures(every=60.0, clock=lambda: now[0])
    caplog.set_level(logging.ERROR, logger="gateway.forward_auth_protocol")
    for step in range(120):
        now[0] = 1000.0 + step
        try:
            raise RuntimeError("boom")
        except RuntimeError:
            failures.log()
    messages = [record.getMessage() for record in caplog.records]
    assert messages == [
        "forward-auth: the protocol's own answer failed 1 time(s); those requests took the full path",
        "forward-auth: the protocol's own answer failed 60 time(s); those requests took the full path",
    ]
    assert all(record.exc_info and record.exc_info[0] is RuntimeError for record in caplog.records)
