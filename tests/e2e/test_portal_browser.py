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


def test_study_page_shows_the_validated_input_and_pending_results_notices_in_chromium(
    ctx: Context, live_url: str
) -> None:
    """What a radiologist sees of two states the HTML tests check as text: a study outside the
    model's validated input (its alert silenced) and findings whose overlay is still being
    written."""
    from radpipe.notify.service import OUTSIDE_VALIDATED_INPUT, list_alerts

    chromium = require_tool("chromium", "apt-get install chromium")
    sync_playwright = pytest.importorskip("playwright.sync_api").sync_playwright
    study = analyzed(ctx, 0.9)
    analysis = ctx.studies.get(study)["analysis"]
    analysis["outputs_pending"] = True
    analysis["input_scope"] = {
        "within": False,
        "measured": {"slice_thickness_mm": 5.0},
        "validated": {"slice_thickness_mm": [0.6, 3.0]},
        "reasons": ["slice thickness 5 mm is outside the 0.6-3 mm this model was validated on"],
    }
    ctx.studies.set_fields(study, {"analysis": analysis})
    notify_study(ctx, study)
    assert list_alerts(ctx, study_id=study)[0]["silenced"] == OUTSIDE_VALIDATED_INPUT
    AuthService(ctx.documents).add_user("rad", "radiologist", "reading-room-2")
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_FLAGS)
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        page.goto(portal_url_login := live_url + "/login")
        assert page.url == portal_url_login
        page.fill("input[name=username]", "rad")
        page.fill("input[name=password]", "reading-room-2")
        page.click("button[type=submit]")
        page.wait_for_selector("table#studies")
        page.goto(f"{live_url}/studies/{study}")
        notice = page.locator("#outside-validated-input")
        notice.wait_for(state="visible")
        assert "Outside the model's validated input" in notice.inner_text()
        assert "slice thickness 5 mm is outside the 0.6-3 mm" in notice.inner_text()
        assert page.locator("#results-pending").is_visible()
        assert page.locator("#overlay-toggle").count() == 0
        page.screenshot(path=str(ARTIFACTS / "portal-study-outside-input.png"), full_page=True)
        browser.close()
