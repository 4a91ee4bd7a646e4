"""Which of Redis's eviction settings the session store refuses (gateway/sessions/redis_eviction.py): every policy
but ``noeviction`` once ``maxmemory`` sets a limit, none without one."""

from __future__ import annotations

import pytest

from gateway.sessions.redis_eviction import EvictionWatch, eviction_problem

EVICTING = [
    "allkeys-lru", "allkeys-lfu", "allkeys-random",
    "volatile-lru", "volatile-lfu", "volatile-random", "volatile-ttl",
]  # fmt: skip


@pytest.mark.parametrize("policy", EVICTING)
def test_every_policy_but_noeviction_is_unsafe_under_a_memory_limit(policy: str) -> None:
    problem = eviction_problem({"maxmemory": 104857600, "maxmemory_policy": policy})
    assert problem is not None and f"maxmemory-policy {policy}" in problem


@pytest.mark.parametrize("policy", [*EVICTING, "noeviction"])
def test_without_a_memory_limit_no_policy_evicts(policy: str) -> None:
    assert eviction_problem({"maxmemory": 0, "maxmemory_policy": policy}) is None


def test_noeviction_under_a_memory_limit_is_safe() -> None:
    assert eviction_problem({"maxmemory": 104857600, "maxmemory_policy": "noeviction"}) is None


def test_a_limit_without_a_reported_policy_is_unsafe() -> None:
    assert eviction_problem({"maxmemory": 104857600}) is not None


def test_an_answer_without_maxmemory_turns_the_check_off_rather_than_calling_it_safe() -> None:
    watch = EvictionWatch()
    watch.observe({"used_memory": 1024})
    assert watch.active is False and watch.problem is None


def test_each_unsafe_setting_is_counted_once_when_it_appears() -> None:
    counted: list[None] = []
    watch = EvictionWatch(lambda: counted.append(None))
    for policy in ["noeviction", "allkeys-lru", "allkeys-lru", "noeviction", "volatile-ttl", "allkeys-lfu"]:
        watch.observe({"maxmemory": 1, "maxmemory_policy": policy})
    assert len(counted) == 3
