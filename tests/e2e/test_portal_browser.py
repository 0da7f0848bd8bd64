"""The portal in headless Chromium: log in through the form, see the alert and the worklist."""

from __future__ import annotations

from pathlib import Path

import pytest

from radpipe.common.auth import AuthService
from radpipe.common.context import Context
from radpipe.notify.service import notify_study

from ..servers import require_tool
from ..unit.test_stages import analyzed

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def test_login_and_worklist_in_chromium(ctx: Context, live_url: str) -> None:
    portal_url = live_url
    chromium = require_tool("chromium", "apt-get install chromium")
    sync_playwright = pytest.importorskip("playwright.sync_api").sync_playwright
    high, low = analyzed(ctx, 0.92), analyzed(ctx, 0.1)
    notify_study(ctx, high)
    AuthService(ctx.documents).add_user("rad", "radiologist", "reading-room-2")
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_FLAGS)
        page = browser.new_page(viewport={"width": 1200, "height": 700})
        page.goto(portal_url + "/")
        assert page.url == portal_url + "/login"  # not logged in: sent to the login page
        page.fill("input[name=username]", "rad")
        page.fill("input[name=password]", "wrong password")
        page.click("button[type=submit]")
        assert "Wrong user name or password" in page.content()
        page.fill("input[name=username]", "rad")
        page.fill("input[name=password]", "reading-room-2")
        page.click("button[type=submit]")
        page.wait_for_selector("table#studies")
        rows = page.locator("table#studies tbody tr")
        assert [rows.nth(i).get_attribute("data-study") for i in range(2)] == [high, low]
        assert "high · 0.92" in rows.nth(0).inner_text()
        assert f"study {high}" in page.locator(".alert").inner_text()
        page.screenshot(path=str(ARTIFACTS / "portal-worklist.png"), full_page=True)
        page.click(f"a[href='/studies/{high}']")
        page.wait_for_selector("text=Timeline")
        timeline = page.locator("table").nth(1).inner_text()
        for event in ("received", "stable", "deidentified", "analyzed", "alerted"):
            assert event in timeline
        page.screenshot(path=str(ARTIFACTS / "portal-study.png"), full_page=True)
        browser.close()
