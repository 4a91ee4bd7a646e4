"""Errors rendered at the edge (gateway/pages.py: the app, the inline proxy, forward-auth's redirect mode): an error
written for operators, such as a StorageError naming the database, shows a generic message and is logged."""

from __future__ import annotations

import logging

import pytest
from starlette.requests import Request

from gateway.errors import AccessDenied, StorageError
from gateway.pages import error_response

ADDRESS = "postgresql+asyncpg://cg_prod_user:***@10.20.0.5:5432/channelgate_prod"


def _request(accept: str) -> Request:
    return Request(
        {
            "type": "http",
            "method": "GET",
            "scheme": "https",
            "server": ("consoles.example.com", 443),
            "path": "/phone/calls",
            "query_string": b"",
            "headers": [(b"accept", accept.encode())],
        }
    )


@pytest.mark.parametrize("accept", ["text/html", "application/json"])
def test_a_database_failure_is_shown_without_the_database_address_which_goes_to_the_log(
    accept: str, caplog: pytest.LogCaptureFixture
) -> None:
    failed = StorageError(f"database read failed on {ADDRESS}", detail="ConnectionRefusedError: [Errno 111]")
    with caplog.at_level(logging.WARNING, logger="channelgate"):
        page = error_response(_request(accept), failed, "req-42")
    body = bytes(page.body).decode()
    assert page.status_code == 503 and page.headers["retry-after"]
    assert "database is not answering" in body and "req-42" in body
    for disclosed in ("cg_prod_user", "10.20.0.5", "5432", "channelgate_prod", "postgresql"):
        assert disclosed not in body, disclosed
    assert [r.getMessage() for r in caplog.records] == [
        f"request req-42: database read failed on {ADDRESS} (ConnectionRefusedError: [Errno 111])"
    ]


def test_a_refusal_written_for_the_agent_is_shown_as_it_is(caplog: pytest.LogCaptureFixture) -> None:
    page = error_response(_request("application/json"), AccessDenied("The phone console is read-only."), "req-43")
    assert b"The phone console is read-only." in bytes(page.body)
    assert caplog.records == []


@pytest.mark.parametrize("path", ["/.channelgate/console/agents", "/.channelgate/console/live.json"])
def test_the_console_shows_a_database_failure_without_the_database_address(
    path: str, caplog: pytest.LogCaptureFixture
) -> None:
    from types import SimpleNamespace

    from gateway.console.failures import error_response as console_error_response

    request = _request("text/html")
    request.scope["path"] = path
    services = SimpleNamespace(settings=SimpleNamespace(server=SimpleNamespace(trusted_proxies=())))
    failed = StorageError(f"database read failed on {ADDRESS}", detail="ConnectionRefusedError: [Errno 111]")
    with caplog.at_level(logging.WARNING, logger="channelgate"):
        page = console_error_response(request, services, failed)  # type: ignore[arg-type]
    body = bytes(page.body).decode()
    assert page.status_code == 503 and "database is not answering" in body
    assert "10.20.0.5" not in body and "cg_prod_user" not in body
    assert ADDRESS in caplog.text
