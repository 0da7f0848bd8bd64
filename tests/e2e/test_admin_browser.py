"""The admin screens in headless Chromium: an admin adds a routing rule to a bundle (and the
inference router follows it), a silence, an on-call rotation and an override, all through the
page's forms with the session's CSRF token; each change is audited. Screenshots in
test-artifacts/."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from radpipe.common.auth import AuthService
from radpipe.common.context import Context
from radpipe.common.routing import ROUTING_RULES
from radpipe.inference.registry import discover, route
from radpipe.notify.rules import on_call
from radpipe.notify.service import config_of

from .test_portal_browser import ARTIFACTS


def expect(locator: Any) -> Any:
    """Playwright's retrying assertions (the pages' CSP forbids evaluating strings)."""
    return pytest.importorskip("playwright.sync_api").expect(locator)


def admin_page(browser: Any, url: str, ctx: Context) -> Any:
    AuthService(ctx.documents).add_user("root", "admin", "admin-screens-1")
    page = browser.new_page(viewport={"width": 1400, "height": 1200})
    page.goto(url + "/login")
    page.fill("input[name=username]", "root")
    page.fill("input[name=password]", "admin-screens-1")
    page.click("button[type=submit]")
    page.wait_for_load_state()
    page.goto(url + "/admin")  # the admin's page (the worklist is clinical)
    page.wait_for_selector("#routing")
    return page


def local(moment: datetime) -> str:
    """A ``datetime-local`` input's value (the forms read it as UTC)."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M")


def test_admin_adds_a_routing_rule_and_a_silence(ctx: Context, live_url: str, browser: Any) -> None:
    page = admin_page(browser, live_url, ctx)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))

    # Routing: an MR chest rule added to the demo bundle, through the form.
    mr_chest = {"modality": "MR", "body_part": "CHEST", "sop_class_uid": "1.2", "keys": ["k"]}
    with pytest.raises(Exception, match="no bundle's routing rules match"):
        route(discover(None, ctx.documents), [mr_chest])
    page.select_option("#routing-form select[name=bundle]", "lung_nodule_demo")
    page.select_option("#routing-form select[name=mode]", "add")
    page.fill("#routing-form input[name=modality]", "MR")
    page.fill("#routing-form input[name=body_part]", "chest")
    page.fill("#routing-form input[name=reason]", "MR chest trial")
    with page.expect_navigation():
        page.click("#routing-form button[type=submit]")
    row = page.locator("#routing tr[data-bundle='lung_nodule_demo']")
    assert "modality in ['MR'], body_part in ['CHEST'] [admin]" in row.inner_text()
    assert "add by root · MR chest trial" in row.inner_text()
    stored = ctx.documents.collection(ROUTING_RULES).find_one({"_id": "lung_nodule_demo"})
    assert stored["rules"] == [{"modality": ["MR"], "body_part": ["chest"]}]
    entry, _, rule = route(discover(None, ctx.documents), [mr_chest])
    assert entry.name == "lung_nodule_demo" and rule.origin == "admin"

    # A bad rule is refused with the reason shown, and nothing changes.
    page.fill("#routing-form input[name=series_description]", "(unclosed")
    page.click("#routing-form button[type=submit]")
    expect(page.locator("#routing-msg")).to_contain_text("not a regular expression")
    assert ctx.documents.collection(ROUTING_RULES).find_one({"_id": "lung_nodule_demo"}) == stored

    # A silence for a scanner in service, in force now.
    now = datetime.now(UTC)
    page.fill("#silence-form input[name=name]", "ct-2-service")
    page.fill("#silence-form input[name=source]", "CT_ROOM_2")
    page.fill("#silence-form input[name=starts_at]", local(now - timedelta(minutes=5)))
    page.fill("#silence-form input[name=ends_at]", local(now + timedelta(hours=2)))
    page.fill("#silence-form input[name=reason]", "scanner service: test images")
    page.click("#silence-form button[type=submit]")
    silence = page.locator("#silences tr[data-silence='ct-2-service']")
    silence.wait_for()
    assert "sender CT_ROOM_2" in silence.inner_text() and "in force" in silence.inner_text()
    [stored_silence] = config_of(ctx).silences
    assert stored_silence.reason == "scanner service: test images"
    assert stored_silence.source == "CT_ROOM_2"

    # An on-call rotation, then an override: who is on call follows.
    page.fill("#schedule-form input[name=name]", "chest")
    page.fill("#schedule-form input[name=people]", "ana, ben")
    page.fill("#schedule-form input[name=starts_at]", local(now - timedelta(hours=1)))
    page.click("#schedule-form button[type=submit]")
    schedule = page.locator("#schedules .schedule[data-schedule='chest']")
    schedule.wait_for()
    assert "on call now: ana" in schedule.inner_text()
    override = schedule.locator("form.override-form")
    override.locator("input[name=person]").fill("cy")
    override.locator("input[name=starts_at]").fill(local(now - timedelta(minutes=1)))
    override.locator("input[name=ends_at]").fill(local(now + timedelta(hours=4)))
    override.locator("button[type=submit]").click()
    expect(schedule.locator("h4")).to_contain_text("on call now: cy")
    assert on_call(config_of(ctx), "chest", datetime.now(UTC)) == "cy"
    page.screenshot(path=str(ARTIFACTS / "admin-routing-silence-schedule.png"), full_page=True)

    # Removing the silence from its row.
    silence.locator("button.remove-silence").click()
    expect(silence).to_have_count(0)
    assert config_of(ctx).silences == []

    actions = [a["action"] for a in ctx.documents.collection("audit").find({"actor": "root"})]
    for action in (
        "routing.override",
        "alert.silence.add",
        "alert.schedule.set",
        "alert.schedule.override",
        "alert.silence.remove",
    ):
        assert action in actions, actions
    assert errors == []
