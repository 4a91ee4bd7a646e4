"""``channelgate serve`` freezes the start-up heap (``gc.freeze``), tests' in-process gateways do not.

Measured with the inline-proxy benchmark's load: without it, each full collection walked the whole start-up heap
(SQLAlchemy, pydantic and SCIM schemas, ~80 ms a pause) every few seconds, costing ~20 % of the CPU per request
and tripling the p99.
"""

from __future__ import annotations

import asyncio
import gc
from pathlib import Path

from gateway.app import create_app
from gateway.storage.migrate import upgrade_to_head
from tests.scim.harness import scim_settings


async def test_serving_freezes_the_start_up_heap_and_tests_do_not(tmp_path: Path) -> None:
    settings = scim_settings(tmp_path, "http://127.0.0.1:9")
    await upgrade_to_head(settings.database.url.get_secret_value())
    gc.unfreeze()
    try:
        plain = create_app(settings)
        async with plain.router.lifespan_context(plain):
            assert gc.get_freeze_count() == 0
        served = create_app(settings, freeze_heap=True)
        async with served.router.lifespan_context(served):
            assert gc.get_freeze_count() > 10_000
    finally:
        gc.unfreeze()


async def test_serving_paces_the_full_collections_and_gives_back_cpythons_schedule_when_it_stops(
    tmp_path: Path,
) -> None:
    """``channelgate serve`` runs gateway/collector.py: no full collection after a burst of allocations (a storm of
    deprovisionings), one every ``[server] full_gc_interval_seconds``, deferred while a deprovisioning starts."""
    settings = scim_settings(tmp_path, "http://127.0.0.1:9")
    await upgrade_to_head(settings.database.url.get_secret_value())
    before = gc.get_threshold()
    try:
        served = create_app(settings, freeze_heap=True)
        async with served.router.lifespan_context(served):
            services = served.state.services
            assert services.collector is not None
            assert services.killer.on_ending == services.collector.ending_access
            await asyncio.sleep(0.05)  # the collector's task has started
            assert gc.get_threshold()[2] > 10**9
        assert gc.get_threshold() == before
        plain = create_app(settings)
        async with plain.router.lifespan_context(plain):
            assert plain.state.services.collector is None
            assert gc.get_threshold() == before
    finally:
        gc.unfreeze()
