"""The reading room in headless Chromium, on a phantom analysed by the real demo bundle: a
radiologist from login through the worklist into the viewer (keyboard scroll, a window preset
and the overlay's opacity checked on the canvas pixels), a finding's mask painted with the mouse
and saved (the overlay's pixels changed), a refused then an accepted sign-off after rejecting
the finding; a resident who sees no AI, in the page or the API, until the read (a mask drawn
by keyboard only), then the comparison; a role denial answered 403 and audited; "Open in OHIF"
on the session with the SEG overlay and the TID 1500 measurement shown. Screenshots in
test-artifacts/."""

from __future__ import annotations

import time
from typing import Any

import pytest
from fastapi.testclient import TestClient

from radpipe.common.auth import AuthService
from radpipe.common.context import Context
from radpipe.demo import make_phantom, phantom_to_datasets
from radpipe.notify.service import notify_study

from ..integration.test_inference_results import run_pipeline
from .test_portal_browser import ARTIFACTS

CANVAS = 512


@pytest.fixture
def alerted(ctx: Context, client: TestClient, tokens) -> str:
    phantom = make_phantom(101, nodules=[12.0], shape=(40, 160, 160), spacing=(2.0, 1.2, 1.2))
    study_id = run_pipeline(ctx, client, tokens["modality"], phantom_to_datasets(phantom))
    notify_study(ctx, study_id)
    return study_id


def login(browser: Any, url: str, name: str, password: str, home: str = "/") -> Any:
    page = browser.new_page(viewport={"width": 1400, "height": 950})
    page.goto(url + "/login")
    page.fill("input[name=username]", name)
    page.fill("input[name=password]", password)
    page.click("button[type=submit]")
    page.wait_for_url(url + home)
    return page


def until(page: Any, expression: str, timeout: float = 30.0) -> None:
    """Poll ``expression`` in the page until it is true. (``wait_for_function`` compiles its
    predicate with ``new Function``, which the portal's CSP refuses: no 'unsafe-eval'.)"""
    deadline = time.monotonic() + timeout
    while not page.evaluate(expression):
        assert time.monotonic() < deadline, f"timed out waiting for {expression}"
        page.wait_for_timeout(50)


def drawn(page: Any, value: str) -> None:
    until(page, f"document.getElementById('view').dataset.drawn === {value!r}")


def shows_slice(page: Any, text: str) -> None:
    until(page, f"document.getElementById('slice-indicator').textContent === {text!r}")


def pixel(page: Any, y: float, x: float, size: int = 160) -> list[int]:
    """The canvas RGBA at image pixel (y, x) of a ``size``-square slice at zoom 1."""
    fit = CANVAS / size
    cx, cy = int((x + 0.5) * fit), int((y + 0.5) * fit)
    return page.evaluate(
        f"Array.from(document.getElementById('view').getContext('2d')"
        f".getImageData({cx}, {cy}, 1, 1).data)"
    )


def mean_grey(page: Any) -> float:
    return page.evaluate(
        """(() => { const d = document.getElementById('view').getContext('2d')
            .getImageData(0, 0, 512, 512).data; let s = 0;
            for (let i = 0; i < d.length; i += 4) s += d[i + 1]; return s / (d.length / 4); })()"""
    )


def test_radiologist_reads_reviews_and_signs(
    ctx: Context, live_url: str, browser: Any, alerted: str
) -> None:
    study = ctx.studies.get(alerted)
    findings = study["analysis"]["findings"]
    slices = len(dict.fromkeys(u.split("#")[0] for u in study["analysis"]["input_sop_uids"]))
    AuthService(ctx.documents).add_user("rad", "radiologist", "reading-room-2")
    page = login(browser, live_url, "rad", "reading-room-2")

    rows = page.locator("table#studies tbody tr")
    assert rows.nth(0).get_attribute("data-study") == alerted
    page.screenshot(path=str(ARTIFACTS / "reading-room-worklist.png"), full_page=True)
    page.click(f"a[href='/studies/{alerted}']")
    page.wait_for_selector("#view")

    # Keyboard only: the canvas has the focus; arrows scroll, 1-4 choose the window.
    middle = slices // 2
    drawn(page, f"{middle}|2|0.5")
    assert page.evaluate("document.activeElement.id") == "view"
    page.keyboard.press("ArrowDown")
    shows_slice(page, f"Slice {middle + 2} / {slices}")
    page.keyboard.press("ArrowUp")
    page.keyboard.press("ArrowUp")
    assert page.inner_text("#slice-indicator") == f"Slice {middle} / {slices}"
    page.mouse.move(200, 400)
    page.locator("#view").hover()
    page.mouse.wheel(0, 120)
    shows_slice(page, f"Slice {middle + 1} / {slices}")

    # The finding's slice, from the finding list; lung window first, then soft tissue (key 1).
    z, y, x = findings[0]["center_voxel_zyx"]
    k = round(z)
    page.click(f"button[data-goto='{k}']")
    drawn(page, f"{k}|2|0.5")
    lung = mean_grey(page)
    page.keyboard.press("1")
    drawn(page, f"{k}|1|0.5")
    soft = mean_grey(page)
    assert "soft tissue" in page.inner_text("#preset-indicator")
    assert abs(lung - soft) > 5, (lung, soft)  # the window changed the grey levels

    # The overlay's opacity, by keyboard on the slider: the nodule turns red at 100 %.
    page.focus("#overlay-opacity")
    page.keyboard.press("Home")
    drawn(page, f"{k}|1|0")
    clear = pixel(page, y, x)
    page.keyboard.press("End")
    drawn(page, f"{k}|1|1")
    red = pixel(page, y, x)
    page.screenshot(path=str(ARTIFACTS / "reading-room-viewer-overlay.png"), full_page=True)
    assert red[0] > 200 and red[1] < 90 and red[2] < 90, red
    assert abs(clear[0] - clear[1]) < 20, clear  # grey without the overlay
    page.click("#overlay-toggle")
    drawn(page, f"{k}|1|0")
    assert pixel(page, y, x)[:3] == clear[:3]

    # Zoom and pan by keyboard.
    page.focus("#view")
    page.keyboard.press("+")
    assert page.inner_text("#zoom-indicator") == "125 %"
    page.keyboard.press("0")

    # Sign-off refused while the finding is undecided, then the finding rejected, then signed.
    page.click("#sign")
    page.wait_for_selector("#sign-msg.error")
    assert "undecided" in page.inner_text("#sign-msg")
    page.screenshot(path=str(ARTIFACTS / "reading-room-sign-refused.png"), full_page=True)

    # The finding's mask edited with the mouse: a brush stroke beside the nodule, saved; the
    # overlay, drawn again from the server, is red where the brush went (canvas pixels).
    spot_y, spot_x = y, x + 22
    page.click("#overlay-toggle")
    drawn(page, f"{k}|1|1")
    before = pixel(page, spot_y, spot_x)
    assert not (before[0] > 200 and before[1] < 90), before
    page.click("button.mask-edit[data-finding='1']")
    until(page, "document.getElementById('view').dataset.editing === '1'")
    assert page.locator("#mask-tools").is_visible()
    box = page.locator("#view").bounding_box()
    fit = CANVAS / 160
    page.mouse.move(box["x"] + (spot_x + 0.5) * fit, box["y"] + (spot_y - 4 + 0.5) * fit)
    page.mouse.down()
    for dy in range(-3, 5):
        page.mouse.move(box["x"] + (spot_x + 0.5) * fit, box["y"] + (spot_y + dy + 0.5) * fit)
    page.mouse.up()
    voxels = int(page.get_attribute("#view", "data-mask-voxels") or 0)
    page.screenshot(path=str(ARTIFACTS / "reading-room-mask-painting.png"), full_page=True)
    # The tools by keyboard on the canvas: e the eraser, b the brush again.
    page.keyboard.press("e")
    assert page.get_attribute("#view", "data-tool") == "eraser"
    page.keyboard.press("b")
    page.click("#mask-save")
    page.wait_for_selector("#mask-msg.ok")
    until(page, "document.getElementById('view').dataset.overlayGen === '1'")
    drawn(page, f"{k}|1|1")
    after = pixel(page, spot_y, spot_x)
    assert after[0] > 200 and after[1] < 90 and after[2] < 90, after
    page.screenshot(path=str(ARTIFACTS / "reading-room-mask-saved.png"), full_page=True)
    edit = ctx.studies.get(alerted)["review"]["decisions"]["1"]
    assert edit["decision"] == "edit" and edit["mask"]["voxels"] == voxels > 0
    assert page.get_attribute("tr[data-finding='1']", "data-decision") == "edit"
    assert page.inner_text("#sign-msg") == ""  # the earlier refusal no longer stands
    # Then every finding rejected (the last decision counts) and the study signed.
    for n in range(1, len(findings) + 1):
        form = page.locator(f"form.decision[data-finding='{n}']")
        form.locator("input[name=reason]").fill("vessel, not a nodule")
        form.locator("button[value=reject]").click()
        page.wait_for_selector(f"tr[data-finding='{n}'][data-decision='reject']")
    assert page.locator("form.decision[data-finding='1'] .msg").inner_text() == "rejected"
    page.click("#sign")
    page.wait_for_selector("#signed-by")
    assert page.inner_text("#study-state") == "signed"
    page.screenshot(path=str(ARTIFACTS / "reading-room-signed.png"), full_page=True)
    signed = ctx.studies.get(alerted)
    assert signed["state"] == "signed" and signed["signed"]["rejected"] == list(
        range(1, len(findings) + 1)
    )
    decision = next(
        e
        for e in signed["events"]
        if e["type"] == "finding.decision" and e["detail"]["decision"] == "reject"
    )
    assert decision["detail"]["reason"] == "vessel, not a nodule"


def test_resident_reads_first_then_sees_the_comparison(
    ctx: Context, live_url: str, browser: Any, alerted: str
) -> None:
    study = ctx.studies.get(alerted)
    finding = study["analysis"]["findings"][0]
    AuthService(ctx.documents).add_user("res", "resident", "first-read-1")
    page = login(browser, live_url, "res", "first-read-1")
    assert page.locator(".alert").count() == 0  # no alert banner before the read
    assert "high" not in page.inner_text("table#studies")
    page.click(f"a[href='/studies/{alerted}']")
    page.wait_for_selector("#read-form")
    assert page.locator("#findings").count() == 0 and page.locator("#overlay-toggle").count() == 0
    html = page.content()
    assert "AI risk" not in html and f"{finding['diameter_mm']:.1f}" not in html
    api = page.request.get(f"{live_url}/api/studies/{alerted}").json()
    assert api["ai_hidden"] is True and api["findings"] == [] and api["risk"] is None
    assert page.request.get(f"{live_url}/api/alerts").json() == []
    page.screenshot(path=str(ARTIFACTS / "reading-room-resident-before-read.png"), full_page=True)

    # A role denial from the page: a resident may not decide a finding (403, audited).
    token = page.get_attribute("meta[name=csrf-token]", "content")
    denied = page.request.post(
        f"{live_url}/api/studies/{alerted}/findings/1/decision",
        data={"decision": "accept"},
        headers={"X-CSRF-Token": token},
    )
    assert denied.status == 403
    forged = page.request.post(
        f"{live_url}/api/studies/{alerted}/reads", data={"finding_present": True}
    )
    assert forged.status == 403 and "CSRF" in forged.json()["detail"]  # no token, no read
    audit = list(ctx.documents.collection("audit").find({"action": "access.denied"}))
    assert [(a["actor"], a["target"]) for a in audit] == [
        ("res", f"POST /api/studies/{alerted}/findings/1/decision"),
        ("res", f"POST /api/studies/{alerted}/reads"),  # the refused CSRF check too
    ]

    # The read, by keyboard to the finding's slice and a click on the nodule.
    z, y, x = finding["center_voxel_zyx"]
    k = round(z)
    page.evaluate(f"window.radpipeViewer.go({k})")
    drawn(page, f"{k}|2|0")
    box = page.locator("#view").bounding_box()
    fit = CANVAS / 160
    page.mouse.click(box["x"] + (x + 0.5) * fit, box["y"] + (y + 0.5) * fit)
    assert page.input_value("#read-slice") == str(k + 1)  # shown from 1
    page.fill("#read-diameter", f"{finding['diameter_mm']:.1f}")

    # The mask drawn by keyboard only: the button by Enter, dabs by space at the cursor (it
    # starts on the clicked centre; i/j/k/l move it), the slice keys still scroll.
    page.focus("#read-draw")
    page.keyboard.press("Enter")
    until(page, "document.getElementById('view').dataset.editing === 'read'")
    assert page.evaluate("document.activeElement.id") == "view"
    page.keyboard.press("ArrowDown")
    shows_slice(page, f"Slice {k + 2} / {len(study['analysis']['input_sop_uids'])}")
    page.keyboard.press("ArrowUp")
    drawn(page, f"{k}|2|0")
    for key in ("]", "]", " ", "k", "k", " "):
        page.keyboard.press(key)
    assert int(page.get_attribute("#view", "data-mask-voxels") or 0) > 20
    page.screenshot(path=str(ARTIFACTS / "reading-room-resident-drawn-mask.png"), full_page=True)
    page.click("#read-form button[type=submit]")
    page.wait_for_selector("#comparison")
    comparison = page.inner_text("#comparison")
    assert "presence agrees" in comparison and "category high/high" in comparison
    assert "Dice" in comparison and "(mask vs mask)" in comparison and "drawn mask" in comparison
    [read] = list(ctx.documents.collection("reads").find({"study_id": alerted}))
    assert read["mask"]["voxels"] > 20
    assert page.locator("#findings").count() == 1 and page.locator("#overlay-toggle").count() == 1
    assert page.request.get(f"{live_url}/api/studies/{alerted}").json()["ai_hidden"] is False
    assert len(page.request.get(f"{live_url}/api/alerts").json()) == 1
    page.screenshot(path=str(ARTIFACTS / "reading-room-resident-comparison.png"), full_page=True)


def test_open_in_ohif_from_the_portal_with_the_session_seg_and_sr(
    ctx: Context, live_url: str, browser: Any, alerted: str
) -> None:
    import io

    import numpy as np
    from PIL import Image

    from .test_ohif import DIST

    if not (DIST / "index.html").exists():
        pytest.skip("the OHIF viewer is not unpacked: run `make ohif`")
    ctx.settings.ohif_dir = DIST
    AuthService(ctx.documents).add_user("rad", "radiologist", "reading-room-2")
    page = login(browser, live_url, "rad", "reading-room-2")
    page.goto(f"{live_url}/studies/{alerted}")
    href = page.get_attribute("#open-ohif", "href")
    study_uid = ctx.studies.get(alerted)["deid"]["study_uid"]
    assert href == f"/ohif/viewer?StudyInstanceUIDs={study_uid}"
    config = page.request.get(f"{live_url}/ohif/app-config.js")
    assert config.status == 200 and f"{live_url}/dicom-web" in config.text()
    assert config.headers["cache-control"] == "no-store"
    answers: list[tuple[int, str]] = []
    page.on("response", lambda r: answers.append((r.status, r.url)))
    page.goto(live_url + href, wait_until="domcontentloaded")
    page.wait_for_selector("canvas", timeout=60_000)
    page.wait_for_timeout(2_000)
    for tour in ("Skip all", "Confirm and hide"):  # OHIF's first-visit tour and notice
        if page.locator(f"text={tour}").count():
            page.locator(f"text={tour}").first.click()
    page.locator("text=CT CHEST PHANTOM").first.dblclick()  # the CT into the viewport
    page.wait_for_timeout(6_000)  # cornerstone fetches and draws the first frame
    viewport = page.locator(".cornerstone-viewport-element canvas, canvas.cornerstone-canvas")
    shot = (viewport.first if viewport.count() else page.locator("canvas").first).screenshot()
    page.screenshot(path=str(ARTIFACTS / "reading-room-ohif.png"))
    failed = [(status, url) for status, url in answers if status >= 400]
    assert failed == [], failed  # every bundle, font and DICOMweb answer, on the session
    assert any("/dicom-web/studies/" in url and "/metadata" in url for _, url in answers)
    pixels = np.asarray(Image.open(io.BytesIO(shot)).convert("L"))
    assert pixels.std() > 5, "OHIF's viewport stayed blank: no image through the session"

    # The AI SEG over the CT: its colour on the viewport's canvas.
    page.locator("text=AI nodule segmentation").first.dblclick()
    page.wait_for_timeout(3_000)
    for confirm in ("Yes", "Load", "Hydrate"):
        if page.locator(f"button:has-text('{confirm}')").count():
            page.locator(f"button:has-text('{confirm}')").first.click()
    page.wait_for_timeout(5_000)
    page.screenshot(path=str(ARTIFACTS / "reading-room-ohif-seg.png"))

    def red_pixels(png: bytes) -> int:
        rgb = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)
        return int(((rgb[..., 0] - rgb[..., 1] > 60) & (rgb[..., 0] - rgb[..., 2] > 60)).sum())

    canvas = page.locator("canvas").first
    assert red_pixels(shot) == 0  # the CT alone is grey
    # OHIF opens the SEG at the first image the segment is on, an edge of the nodule that may
    # hold a voxel or two: scroll (the mouse wheel steps one image) a few images each way and
    # take the most red seen, the nodule's own cross-sections among them.
    seen = [red_pixels(canvas.screenshot())]
    box = canvas.bounding_box()
    assert box is not None
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    for step in (120,) * 4 + (-120,) * 8:
        page.mouse.wheel(0, step)
        page.wait_for_timeout(400)
        seen.append(red_pixels(canvas.screenshot()))
    assert max(seen) > 50, f"the SEG overlay's colour is not on the canvas: {seen}"

    # The TID 1500 report: its measurement listed.
    page.locator("text=AI nodule report").first.dblclick()
    page.wait_for_timeout(5_000)
    page.screenshot(path=str(ARTIFACTS / "reading-room-ohif-sr.png"))
    diameter = ctx.studies.get(alerted)["analysis"]["findings"][0]["diameter_mm"]
    assert f"Diameter: {diameter:.2f} mm" in page.inner_text("body")
    # Without a session the viewer is not served.
    anonymous = browser.new_page()
    anonymous.goto(live_url + href)
    assert anonymous.url == live_url + "/login"


def test_admin_screens_in_chromium(ctx: Context, live_url: str, browser: Any) -> None:
    AuthService(ctx.documents).add_user("root", "admin", "a long admin password")
    page = login(browser, live_url, "root", "a long admin password", home="/admin")
    form = page.locator("#add-user")
    form.locator("input[name=name]").fill("newres")
    form.locator("select[name=role]").select_option("resident")
    form.locator("input[name=password]").fill("resident-password-1")
    form.locator("button[type=submit]").click()
    page.wait_for_selector("tr[data-user='newres']")
    page.select_option("select.role[data-user='newres']", "radiologist")
    until(
        page,
        "fetch('/api/admin/users').then(r => r.json()).then(u => u[1].role === 'radiologist')",
    )
    tokens = page.locator("#add-token")
    tokens.locator("input[name=name]").fill("ct-scanner-3")
    tokens.locator("select[name=role]").select_option("modality")
    tokens.locator("button[type=submit]").click()
    page.wait_for_selector("#new-token:has-text('rp_')")
    until(page, "document.getElementById('alert-config').value.includes('{')")
    config = page.input_value("#alert-config")
    assert '"rules"' in config or '"deadlines"' in config
    page.screenshot(path=str(ARTIFACTS / "reading-room-admin.png"), full_page=True)
    page.click("#save-alert-config")
    page.wait_for_selector("#alert-config-msg.ok")
    assert [
        u["role"] for u in AuthService(ctx.documents).list_users() if u["name"] == "newres"
    ] == ["radiologist"]
    assert any(t["name"] == "ct-scanner-3" for t in AuthService(ctx.documents).list_tokens())
