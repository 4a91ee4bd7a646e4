"""The security console in a real browser (headless Debian Chromium driven by Playwright), signed in through the
OpenID provider's own form, in front of the three demo consoles of issue 4:

- a reviewer searches the log, opens an agent's history and report, and cannot reach any admin action;
- an admin deprovisions an agent, watches each channel's steps and receipts arrive live (one channel down, so it
  retries and is dead-lettered), retries it from the dead-letter queue and sees the run finish;
- a forged POST, from another origin's page or without the form's token, is refused and changes nothing.

Screenshots of every page are kept in ``test-artifacts/console/``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from playwright.async_api import Browser, Page
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse
from starlette.routing import Route

from deploy.demo.tickets_api import REASSIGNED
from gateway.deprovision.plan import RunState
from gateway.storage.access_log import AccessQuery, AccessRecord
from tests.components.asgi_server import AsgiServer
from tests.components.console_stack import CONSOLE, ConsoleStack, console_stack
from tests.components.oidc_provider import DEMO_PASSWORD
from tests.components.oidc_provider import OidcProviderFactory as Factory

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "console"

pytestmark = [pytest.mark.oidc, pytest.mark.timeout(180)]


@pytest.fixture
async def stack(oidc_provider_factory: Factory) -> AsyncIterator[ConsoleStack]:
    async with console_stack(oidc_provider_factory, {"alice": 2, "carol": 1}) as running:
        yield running


async def _shot(page: Page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


async def _sign_in(page: Page, url: str, user: str) -> None:
    """Open a console page: the gateway sends the browser to the provider's form, and back to the page."""
    await page.goto(url)
    await page.fill("input[name=username]", user)
    await page.fill("input[name=password]", DEMO_PASSWORD)
    await page.click("button[type=submit]")
    await page.wait_for_url(url.split("?")[0] + "**")


async def _until(check: Callable[[], Awaitable[bool]], timeout: float = 30.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not await check():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.1)


async def _seed_activity(stack: ConsoleStack, user_name: str) -> None:
    agent = await stack.services.agents.find(user_name)
    assert agent is not None
    start = datetime.now(UTC) - timedelta(hours=2)
    await stack.services.audit.write(
        *(
            AccessRecord(
                time=start + timedelta(minutes=n),
                kind="request",
                agent_id=agent.id,
                agent_name=agent.user_name,
                source_ip="10.0.0.7",
                channel="mail",
                method="GET",
                path=f"/mail/customers/cust-{1000 + n}/export",
                status=200,
                decision="allow",
                subject=f"cust-{1000 + n}",
                action="download" if n % 2 else "view",
            )
            for n in range(6)
        )
    )


async def test_a_reviewer_searches_the_log_opens_an_agents_report_and_cannot_reach_admin_actions(
    stack: ConsoleStack, browser: Browser
) -> None:
    await _seed_activity(stack, "alice")
    alice = await stack.services.agents.find("alice")
    assert alice is not None
    page = await browser.new_page()
    await _sign_in(page, stack.url + CONSOLE + "/log", "rita")
    assert await page.inner_text("#role") == "reviewer"
    await _shot(page, "01-reviewer-log")

    await page.fill("#search input[name=agent]", "alice")
    await page.select_option("#search select[name=action]", "download")
    await page.click("#search button[type=submit]")
    await page.wait_for_url("**/console/log?**")
    rows = page.locator("table.records tbody tr")
    assert await rows.count() == 3
    assert sorted(await page.locator("table.records tbody tr td:nth-child(8)").all_inner_texts()) == [
        "cust-1001", "cust-1003", "cust-1005",
    ]  # fmt: skip
    await _shot(page, "02-reviewer-search-downloads")

    await page.locator("td.agent-name a").first.click()
    await page.wait_for_selector("#agent-name")
    assert await page.inner_text("#agent-name") == "alice"
    assert await page.locator("#deprovision-link, #end-sessions").count() == 0
    await _shot(page, "03-reviewer-agent-history")

    await page.click("#agent-report")
    await page.wait_for_selector("text=Offboarding evidence: alice")
    assert await page.locator("#report .cg-report").count() == 1
    await _shot(page, "04-reviewer-agent-report")
    await page.click("text=Chain status")
    await page.wait_for_selector("#chain-head")
    await _shot(page, "04b-reviewer-chain-status")

    for path in ("/dead-letters", f"/agents/{alice.id}/deprovision"):
        response = await page.goto(stack.url + CONSOLE + path)
        assert response is not None and response.status == 403
        assert "reviewer (read-only)" in await page.inner_text("#error-message")
    await _shot(page, "05-reviewer-refused-admin-page")
    forged = await page.request.post(
        stack.url + CONSOLE + f"/agents/{alice.id}/deprovision", form={"reason": "forged by a reviewer"}
    )
    assert forged.status == 403
    still = await stack.services.agents.get(alice.id)
    assert still is not None and still.active


async def _run_page_state(page: Page) -> str:
    return (await page.inner_text("#run-state")).strip()


async def test_an_admin_deprovisions_an_agent_watches_receipts_arrive_and_retries_the_dead_letter(
    stack: ConsoleStack, browser: Browser
) -> None:
    await stack.give_access("alice")
    phone = stack.offboarding.consoles["phone"]
    phone.faults.set("unavailable")  # the phone console is down: its steps retry, then go dead
    alice_page = await browser.new_page()
    await _sign_in(alice_page, stack.url + "/", "alice")
    page = await browser.new_page()
    await _sign_in(page, stack.url + CONSOLE + "/agents", "adam")
    assert await page.inner_text("#role") == "admin"
    await page.click("table.agents a:text-is('alice')")
    await page.wait_for_selector("#deprovision-link")
    assert await page.locator("table.sessions tbody tr").count() == 1  # alice's browser session
    await _shot(page, "06-admin-agent-with-live-session")
    await page.click("#deprovision-link")
    await page.fill("input[name=reason]", "left the company")
    await page.fill("input[name=successor]", "bob")
    await _shot(page, "07-admin-deprovision-form")
    await page.click("#confirm-deprovision")
    await page.wait_for_url("**/console/runs/**")
    await page.evaluate("window.sameDocument = true")  # set by the test, so a reload would lose it
    await _shot(page, "08-admin-run-started")
    receipts = page.locator("#receipts tr")
    first_count = await receipts.count()

    async def phone_retrying() -> bool:
        """The phone step was tried again: still pending, or already dead after its last attempt (with retries
        ~0.3 s apart the live view may refresh only after the last one)."""
        row = page.locator("#steps tr", has_text="phone").first
        if await row.count() == 0:
            return False
        text = await row.inner_text()
        return ("pending" in text or "dead" in text) and int((await row.locator("td").nth(3).inner_text()) or 0) >= 2

    await _until(phone_retrying)
    await _shot(page, "09-admin-run-phone-retrying")
    await _until(lambda: _states_are(page, {"attention"}))
    await _shot(page, "10-admin-run-attention")
    assert await page.is_visible("#retry")  # shown by the live view once the run needs attention
    await alice_page.reload()
    await alice_page.wait_for_selector("text=Your access has ended")
    assert await page.evaluate("window.sameDocument === true")  # updated in place by the live view
    assert await receipts.count() > first_count
    receipt_rows = await receipts.all_inner_texts()
    assert any("chat" in row and "done" in row for row in receipt_rows)
    assert any("phone" in row and "dead" in row for row in receipt_rows)

    await page.click("text=Dead letters")
    await page.wait_for_selector("section.dead-run")
    assert "alice" in await page.inner_text("section.dead-run")
    await _shot(page, "11-admin-dead-letters")
    phone.faults.set("ok")
    await page.click("section.dead-run button[type=submit]")
    await page.wait_for_url("**/console/runs/**?notice=retried")
    await _until(lambda: _states_are(page, {"done"}))
    await _shot(page, "12-admin-run-done-after-retry")
    alice = await stack.services.agents.get_any(stack.offboarding.agents["alice"])
    assert alice is not None and not alice.active
    runs = await stack.services.pipeline.runs_of_agent(alice.id)
    assert [(r.state, r.actor, r.source) for r in runs] == [(RunState.DONE, "console:adam", "console")]
    retried = await stack.services.access_log.search(AccessQuery(kind="deprovision_retried"))
    assert [r.actor for r in retried] == ["console:adam"]
    await page.goto(stack.url + CONSOLE + "/reports/agent?agent=alice")
    verdict = page.locator("#report .verdict")
    assert await verdict.get_attribute("class") == "verdict ok", await verdict.inner_text()
    await _shot(page, "15-admin-agent-report-access-ended")
    effects = await stack.offboarding.consoles["chat"].effects()
    assert sorted(e["detail"] for e in effects if e["effect"] == REASSIGNED) == [
        "T-alice-0 -> assignee bob", "T-alice-1 -> assignee bob",
    ]  # fmt: skip


async def _states_are(page: Page, states: set[str]) -> bool:
    return await _run_page_state(page) in states


def _attacker_site(target: str) -> Starlette:
    """Another origin's page that posts a deprovisioning to the console as soon as it loads."""

    async def lure(request: Request) -> HTMLResponse:
        return HTMLResponse(
            f'<form method="post" action="{target}"><input type="hidden" name="reason" value="forged">'
            '<input type="hidden" name="csrf_token" value="guessed"></form>'
            "<script>document.forms[0].submit()</script>"
        )

    return Starlette(routes=[Route("/", lure)])


async def test_a_forged_post_from_another_origin_or_without_the_token_is_refused(
    stack: ConsoleStack, browser: Browser
) -> None:
    carol_id = stack.offboarding.agents["carol"]
    page = await browser.new_page()
    await _sign_in(page, stack.url + CONSOLE + "/", "adam")
    target = stack.url + CONSOLE + f"/agents/{carol_id}/deprovision"
    # 127.0.0.1 on another port: the same site (so the SameSite=Lax cookie is sent), another origin.
    attacker = AsgiServer(_attacker_site(target))
    await attacker.start()
    try:
        await page.goto(attacker.url + "/")
        await page.wait_for_url(target)
        await page.wait_for_selector("#error-message")
        assert "came from another site" in await page.inner_text("#error-message")
        await _shot(page, "13-forged-post-from-another-origin")
    finally:
        await attacker.stop()

    await page.goto(target)
    await page.evaluate("document.querySelector('input[name=csrf_token]').remove()")
    await page.fill("input[name=reason]", "no token")
    await page.click("#confirm-deprovision")
    await page.wait_for_selector("#error-message")
    assert "security token is missing" in await page.inner_text("#error-message")
    await _shot(page, "14-forged-post-without-token")

    await page.goto(target)
    await page.evaluate("document.querySelector('input[name=csrf_token]').value = 'A'.repeat(43)")
    await page.fill("input[name=reason]", "wrong token")
    await page.click("#confirm-deprovision")
    await page.wait_for_selector("#error-message")
    assert "not valid for your session" in await page.inner_text("#error-message")

    carol = await stack.services.agents.get(carol_id)
    assert carol is not None and carol.active
    assert await stack.services.pipeline.runs_of_agent(carol_id) == []
    await stack.services.audit.flush()
    refused = await stack.services.access_log.search(AccessQuery(kind="console_refused"))
    assert [(r.actor, r.reason) for r in refused] == [("console:adam", "csrf_rejected")] * 3
