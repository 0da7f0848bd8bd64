"""The Content-Security-Policy (services/common/headers.py) in headless Chromium: the portal's
pages and the OHIF viewer served at /ohif work under their policies with no violation, and a
page of Radpipe refuses to be framed."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import pytest
from PIL import Image

from radpipe.common.auth import AuthService
from radpipe.common.context import Context

from ..servers import IN_CI, require_tool
from ..unit.test_stages import stable_study
from .test_ohif import DIST
from .test_portal_browser import ARTIFACTS, CHROMIUM_FLAGS

#: Records every CSP violation the page reports (the securitypolicyviolation DOM event).
WATCH = """
window.__csp = [];
document.addEventListener('securitypolicyviolation', (e) => {
  window.__csp.push(e.violatedDirective + ' ' + e.blockedURI);
});
"""


def _violations(page: Any, console: list[str]) -> list[str]:
    recorded: list[str] = page.evaluate("window.__csp || []")
    return recorded + [line for line in console if "Content Security Policy" in line]


def test_portal_and_ohif_run_under_their_policies_without_violations(
    ctx: Context, live_url: str
) -> None:
    chromium = require_tool("chromium", "apt-get install chromium")
    sync_playwright = pytest.importorskip("playwright.sync_api").sync_playwright
    if not (DIST / "index.html").exists():
        message = "the OHIF viewer is not unpacked: run `make ohif` (npm pack @ohif/app)"
        if IN_CI:
            pytest.fail(message + " (CI=true: a missing tool is a failure)")
        pytest.skip(message)
    from radpipe.deid.service import deidentify_study

    from ..dicom import ct_series

    ctx.settings.ohif_dir = DIST
    study_id = stable_study(ctx, ct_series(seed=62))
    deidentify_study(ctx, study_id)
    study_uid = ctx.studies.get(study_id)["deid"]["study_uid"]
    AuthService(ctx.documents).add_user("rad", "radiologist", "csp-check-1")
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=chromium, args=[*CHROMIUM_FLAGS, "--use-gl=swiftshader"]
        )
        context = browser.new_context(viewport={"width": 1280, "height": 800})
        context.add_init_script(WATCH)
        page = context.new_page()
        console: list[str] = []
        page.on("console", lambda message: console.append(message.text))
        page.goto(live_url + "/login")
        page.fill("input[name=username]", "rad")
        page.fill("input[name=password]", "csp-check-1")
        page.click("button[type=submit]")
        page.wait_for_url(live_url + "/")
        assert _violations(page, console) == []
        page.goto(f"{live_url}/studies/{study_id}", wait_until="networkidle")
        assert _violations(page, console) == []

        page.goto(f"{live_url}/ohif/viewer?StudyInstanceUIDs={study_uid}")
        page.wait_for_selector("canvas", timeout=60_000)
        page.wait_for_timeout(8_000)  # cornerstone fetches, decodes (wasm, workers), draws
        shot = page.locator("canvas").first.screenshot()
        page.screenshot(path=str(ARTIFACTS / "csp-ohif-viewer.png"))
        assert _violations(page, console) == []

        # A page of Radpipe framed by another origin is refused (frame-ancestors 'none').
        framing = context.new_page()
        framing.set_content(f'<iframe id="f" src="{live_url}/login"></iframe>')
        framing.wait_for_timeout(1_500)
        frame = framing.frame_locator("#f")
        assert frame.locator("input[name=username]").count() == 0
        browser.close()
    pixels = np.asarray(Image.open(io.BytesIO(shot)).convert("L"))
    assert pixels.std() > 5, "OHIF's viewport stayed blank under its policy"
