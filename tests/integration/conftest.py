"""Fixtures shared by the proxy's integration modules (HTTP and WebSocket): the small gateway and its upstream."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.components.proxy_stack import Stack, StackFactory, proxy_stacks


@pytest.fixture
async def stack_factory() -> AsyncIterator[StackFactory]:
    async with proxy_stacks() as make:
        yield make


@pytest.fixture
async def stack(stack_factory: StackFactory) -> Stack:
    return await stack_factory()
