"""Searching the access log (issue 5, item 4) on SQLite and PostgreSQL: each filter, the agent filter by id,
userName or a deleted agent's recorded name, time ranges, keyset pages that neither repeat nor skip, exports that
read every page; bad filter values refused with a message that says what is expected."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pydantic import SecretStr

from gateway.audit.formats import FORMATS
from gateway.audit.search import decode_cursor, encode_cursor, export_lines, parse_search, records, to_query
from gateway.errors import BadRequest
from gateway.settings import DatabaseSettings
from gateway.storage.access_log import AccessLogRepository, AccessRecord
from gateway.storage.agents import AgentRepository
from gateway.storage.database import Database
from gateway.storage.migrate import upgrade_to_head

T0 = datetime(2026, 11, 3, 9, 0, tzinfo=UTC)


def _cursor(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


@dataclass
class Log:
    repository: AccessLogRepository
    agents: AgentRepository
    alice_id: str

    async def search(self, **values: str) -> list[AccessRecord]:
        search = parse_search(values, max_limit=10_000, default_limit=10_000)
        return await self.repository.search(await to_query(search, self.agents))


def _record(n: int, **fields: Any) -> AccessRecord:
    values: dict[str, Any] = {
        "time": T0 + timedelta(minutes=n),
        "kind": "request",
        "channel": "chat" if n % 2 else "mail",
        "method": "GET",
        "path": f"/x/{n}",
        "decision": "deny" if n % 5 == 0 else "allow",
        "subject": f"C-{n % 3}",
        "action": "download" if n % 4 == 0 else "view",
    }
    values.update(fields)
    return AccessRecord(**values)


@pytest.fixture
async def log(database_url: str) -> AsyncIterator[Log]:
    await upgrade_to_head(database_url)
    database = Database.from_settings(DatabaseSettings(url=SecretStr(database_url)))
    agents = AgentRepository(database.engine)
    alice = await agents.link_or_create_from_login(
        "https://idp.example", "sub-alice", "alice", None, None, T0, link_by="user_name_is_preferred_username",
        email_verified=False,
    )  # fmt: skip
    repository = AccessLogRepository(database.engine)
    rows = [_record(n, agent_id=alice.id, agent_name="alice") for n in range(30)]
    # A record of alice from before her login linked an id, and records of "zed", an agent since deleted.
    rows += [_record(30 + n, agent_name="zed") for n in range(5)]
    rows.append(_record(40, kind="login_failed", agent_name="alice", decision=None, channel=None, action=None))
    await repository.append(rows)
    yield Log(repository, agents, alice.id)
    repository.close()
    await database.dispose()


async def test_each_filter_narrows_the_search_to_matching_records(log: Log) -> None:
    assert len(await log.search()) == 36
    assert {r.channel for r in await log.search(channel="chat")} == {"chat"}
    assert len(await log.search(channel="chat")) == 17
    assert {r.subject for r in await log.search(subject="C-1")} == {"C-1"}
    assert all(r.action == "download" for r in await log.search(action="download"))
    assert len(await log.search(action="download")) == 9
    assert {r.path for r in await log.search(decision="deny")} == {f"/x/{n}" for n in (0, 5, 10, 15, 20, 25, 30)}
    assert [r.kind for r in await log.search(kind="login_failed")] == ["login_failed"]
    window = await log.search(since="2026-11-03T09:10:00Z", until="2026-11-03T09:15:00Z")
    assert [r.path for r in window] == [f"/x/{n}" for n in (14, 13, 12, 11, 10)]  # until is exclusive, newest first
    combined = await log.search(agent="alice", channel="chat", action="view", since="2026-11-03T09:00:00+00:00")
    assert combined and all(r.channel == "chat" and r.action == "view" and r.agent_id == log.alice_id for r in combined)


async def test_the_agent_filter_takes_an_id_a_username_or_a_deleted_agents_recorded_name(log: Log) -> None:
    by_name = await log.search(agent="ALICE")  # userNames compare case-insensitively
    by_id = await log.search(agent=log.alice_id)
    assert by_name == by_id and len(by_id) == 30
    assert {r.path for r in await log.search(agent="zed")} == {f"/x/{n}" for n in range(30, 35)}
    assert await log.search(agent="nobody") == []


async def test_the_agent_filter_finds_a_deleted_agents_records_by_its_id(log: Log) -> None:
    yan = await log.agents.link_or_create_from_login(
        "https://idp.example", "sub-yan", "yan", None, None, T0, link_by="user_name_is_preferred_username",
        email_verified=False,
    )  # fmt: skip
    await log.repository.append([_record(50 + n, agent_id=yan.id, agent_name="yan") for n in range(3)])
    await log.agents.mark_deleted(yan.id, "left", T0 + timedelta(days=1))
    assert {r.path for r in await log.search(agent=yan.id)} == {"/x/50", "/x/51", "/x/52"}
    assert len(await log.search(agent="yan")) == 3  # the recorded userName, the name being free again


async def test_pages_by_cursor_cover_every_record_once_newest_first(log: Log) -> None:
    seen: list[AccessRecord] = []
    before: str | None = None
    while True:
        values = {"limit": "7"} | ({"before": before} if before else {})
        search = parse_search(values)
        page = await log.repository.search(await to_query(search, log.agents))
        seen += page
        if len(page) < 7:
            break
        before = encode_cursor(page[-1])
    assert len(seen) == 36 and len({r.seq for r in seen}) == 36
    assert [(r.time, r.seq) for r in seen] == sorted(((r.time, r.seq) for r in seen), reverse=True)


async def test_an_export_reads_every_page_and_writes_one_line_per_record(log: Log) -> None:
    query = await to_query(parse_search({"agent": "alice"}), log.agents)
    everything = [record async for record in records(log.repository, query, page=4)]
    assert len(everything) == 30 and len({r.seq for r in everything}) == 30
    lines = [line async for line in export_lines(log.repository, query, FORMATS["cef"])]
    assert len(lines) == 30 and all(line.startswith("CEF:0|") and line.endswith("\n") for line in lines)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"since": "yesterday"}, "'since' must be an ISO 8601 date or time"),
        ({"until": "2026-13-01"}, "'until' must be an ISO 8601"),
        ({"since": "2026-12-02", "until": "2026-12-01"}, "'since' must be before 'until'"),
        ({"action": "delete"}, "'action' must be one of view, change, download, export"),
        ({"limit": "0"}, "'limit' must be a whole number from 1 to 1000"),
        ({"limit": "-5"}, "'limit' must be a whole number"),
        ({"limit": "1001"}, "from 1 to 1000"),
        ({"agent": "x" * 257}, "'agent' must be at most 256 characters"),
        ({"subject": "C-1\r\nkind=login"}, "without control characters"),
        ({"before": "not-a-cursor"}, "'before' is not a cursor"),
        ({"before": "MjAyNi0xMi0wMVQwMTowMjowMy80Mg"}, "'before' is not a cursor"),  # 2026-12-01T01:02:03/42
        ({"before": "2026-11-01T00:00:00+00:00_5"}, "'before' is not a cursor"),  # the console's former cursor
        ({"sort": "time"}, "Unknown filter 'sort'"),
        ({"limit": "\u00b2"}, "'limit' must be a whole number"),  # isdigit() is true for '²', int() refuses it
        ({"since": "0001-01-01T00:00:00+01:00"}, "'since' must be an ISO 8601"),  # in UTC: before year 1
        ({"until": "9999-12-31T23:59:59-01:00"}, "'until' must be an ISO 8601"),  # in UTC: after 9999
        ({"before": _cursor("0001-01-01T00:00:00+01:00/5")}, "'before' is not a cursor"),
        ({"before": _cursor("2026-01-01T00:00:00+00:00/99999999999999999999999")}, "'before' is not a cursor"),
        ({"before": _cursor("2026-01-01T00:00:00+00:00/\u00b2")}, "'before' is not a cursor"),
    ],
)
def test_a_bad_filter_value_is_refused_with_what_is_expected(values: dict[str, str], message: str) -> None:
    with pytest.raises(BadRequest, match=message.replace("(", r"\(")) as raised:
        parse_search(values)
    assert raised.value.status == 400


def test_times_without_an_offset_are_utc_and_cursors_round_trip() -> None:
    search = parse_search({"since": "2026-12-01", "until": "2026-12-01T18:00:00+09:00"})
    assert search.since == datetime(2026, 12, 1, tzinfo=UTC)
    assert search.until == datetime(2026, 12, 1, 9, tzinfo=UTC)
    record = AccessRecord(time=datetime(2026, 12, 1, 1, 2, 3, 456789, tzinfo=UTC), kind="request", seq=991)
    assert decode_cursor(encode_cursor(record)) == (record.time, 991)
