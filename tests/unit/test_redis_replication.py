"""gateway/sessions/redis_replication.py: when the primary's connected replicas and ``wait_for_replicas`` disagree,
and what the operator is told (once per change)."""

from __future__ import annotations

import logging

import pytest

from gateway.sessions.redis_replication import ReplicationWatch, replication_problem


def _info(connected: int, role: str = "master") -> dict[str, object]:
    return {"role": role, "connected_slaves": connected}


@pytest.mark.parametrize(("connected", "wait_for"), [(0, 0), (1, 1), (3, 3)])
def test_as_many_replicas_as_the_wait_asks_for_is_no_problem(connected: int, wait_for: int) -> None:
    assert replication_problem(_info(connected), wait_for) is None


def test_a_replica_answering_during_a_failover_is_not_judged() -> None:
    assert replication_problem(_info(0, role="slave"), 1) is None


def test_fewer_replicas_than_the_wait_means_every_revocation_is_refused() -> None:
    problem = replication_problem(_info(1), 2)
    assert problem is not None
    assert "1 connected replica(s)" in problem and "wait_for_replicas is 2" in problem
    assert "refused (503) until 2 are connected again" in problem


@pytest.mark.parametrize(
    ("connected", "wait_for", "said"), [(2, 0, "not waited for"), (3, 1, "confirmed by 1 of them")]
)
def test_more_replicas_than_the_wait_names_the_setting_that_covers_them(
    connected: int, wait_for: int, said: str
) -> None:
    problem = replication_problem(_info(connected), wait_for)
    assert problem is not None and said in problem
    assert problem.endswith(f"set [sessions.redis] wait_for_replicas = {connected}")


def test_the_watch_logs_a_problem_once_and_its_end_once(caplog: pytest.LogCaptureFixture) -> None:
    watch = ReplicationWatch(1)
    with caplog.at_level(logging.INFO, logger="channelgate.sessions"):
        for connected in (1, 0, 0, 0, 2, 2, 1, 1):
            watch.observe(_info(connected))
    said = [(r.levelname, r.getMessage()[:40]) for r in caplog.records]
    assert [level for level, _ in said] == ["WARNING", "WARNING", "INFO"]
    assert "0 connected" in said[0][1] and "2 connected" in said[1][1]
