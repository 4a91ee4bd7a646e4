"""The revocation benchmarks keep their own client's collector out of the timed window (bench/client_pauses.py)."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from bench.client_pauses import client_collector_paused


@pytest.fixture
def collector_enabled() -> Iterator[None]:
    was = gc.isenabled()
    gc.enable()
    yield
    if not was:
        gc.disable()


def test_no_automatic_collection_runs_inside_the_window(collector_enabled: None) -> None:
    passes: list[str] = []

    def count(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            passes.append(phase)

    with client_collector_paused():
        gc.callbacks.append(count)
        try:
            for _ in range(50_000):  # cycles only the collector frees: far beyond generation 0's threshold
                cycle: list[object] = []
                cycle.append(cycle)
            assert not gc.isenabled()
        finally:
            gc.callbacks.remove(count)
    assert passes == []
    assert gc.isenabled()


def test_the_collector_stays_off_after_the_window_when_it_was_off_before(collector_enabled: None) -> None:
    gc.disable()
    with client_collector_paused():
        pass
    assert not gc.isenabled()


def test_the_collector_comes_back_when_the_window_raises(collector_enabled: None) -> None:
    with pytest.raises(RuntimeError), client_collector_paused():
        raise RuntimeError("trial failed")
    assert gc.isenabled()
