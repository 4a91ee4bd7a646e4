"""The headless browser of the end-to-end tests: Debian's ``chromium`` driven by Playwright (never
``playwright install``)."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator

import pytest
from playwright.async_api import Browser, async_playwright

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=["--disable-background-networking", "--disable-component-update", "--no-first-run"],
        )
        yield browser
        await browser.close()
