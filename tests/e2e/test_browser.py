"""A person in a real browser (headless Debian Chromium driven by Playwright): sign in through the OpenID
provider's form, open the consoles, be deprovisioned from the CLI, and find every console shut.

Screenshots are kept in ``test-artifacts/`` as evidence of what the agent saw.
"""

from __future__ import annotations

import asyncio
import json
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.async_api import Browser, Page

from tests.components.gateway import GatewayStack
from tests.components.oidc_provider import DEMO_PASSWORD, OidcProvider, provider_config

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"

pytestmark = [pytest.mark.oidc, pytest.mark.timeout(180)]


@pytest.fixture(scope="module")
def stack() -> Iterator[GatewayStack]:
    """One stack for the module: only the first test deprovisions, and its agent (alice) is no other test's."""
    base = Path(tempfile.mkdtemp(prefix="channelgate-browser-"))
    stack = GatewayStack(issuer="", database_url=f"sqlite+aiosqlite:///{base}/gateway.db", base_dir=base)
    stack.allocate(replicas=1)
    with OidcProvider(provider_config(stack.redirect_uris, post_logout_redirect_uris=[stack.url(0) + "/"])) as provider:
        stack.issuer = provider.issuer
        try:
            stack.start()
            yield stack
        finally:
            stack.stop()


async def _shot(page: Page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    await page.screenshot(path=str(ARTIFACTS / f"browser-{name}.png"), full_page=True)


async def _sign_in(page: Page, url: str, user: str) -> None:
    await page.goto(url)
    await page.fill("input[name=username]", user)
    await page.fill("input[name=password]", DEMO_PASSWORD)
    await page.click("button[type=submit]")
    await page.wait_for_url(url.rstrip("/") + "/**")


async def test_an_agent_signs_in_works_in_the_consoles_and_loses_them_all_when_deprovisioned(
    stack: GatewayStack, browser: Browser
) -> None:
    context = await browser.new_context()
    page = await context.new_page()
    await _sign_in(page, stack.url(0) + "/", "alice")
    assert await page.locator("ul.channels a").all_inner_texts() == ["chat", "phone", "mail"]
    await _shot(page, "1-home")

    chat = await context.new_page()
    await chat.goto(stack.url(0) + "/chat/")
    await chat.wait_for_selector("#ws-status:text('connected')")
    assert "alice" in await chat.inner_text("#agent")
    await _shot(chat, "2-chat-connected")
    phone = await context.new_page()
    await phone.goto(stack.url(0) + "/phone/")
    assert "alice" in await phone.inner_text("body")
    content = await chat.content() + await phone.content()
    assert all(credential not in content for credential in stack.credentials.values())

    result = await asyncio.to_thread(stack.cli, "agents", "deprovision", "alice", "--reason", "left the company")
    assert json.loads(result.stdout)["sessions_revoked"] == 1

    await chat.wait_for_selector("#ws-status:text('connection closed')", timeout=2000)
    await _shot(chat, "3-chat-closed")
    await phone.reload()
    # The session is gone; the gateway sends the browser to sign in, the provider still knows alice and sends
    # her straight back, and the gateway refuses the disabled agent with a page that says so.
    await phone.wait_for_selector("text=Your access has ended")
    assert "alice" not in await phone.inner_text("main")
    await _shot(phone, "4-access-ended")


async def test_an_agent_sees_only_the_consoles_their_groups_open(stack: GatewayStack, browser: Browser) -> None:
    page = await browser.new_page()
    await _sign_in(page, stack.url(0) + "/", "bob")
    assert await page.locator("ul.channels a").all_inner_texts() == ["chat"]
    response = await page.goto(stack.url(0) + "/phone/")
    assert response is not None
    assert response.status == 403
    assert "phone-agents" in await page.inner_text("main")
    await _shot(page, "5-forbidden")
