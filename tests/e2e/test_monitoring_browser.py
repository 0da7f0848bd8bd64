"""The model monitoring page in headless Chromium: an admin opens **Models** from the header,
sees the empty state, then a model version's figures, its paging conditions, the drift table
and the three input charts drawn against the training data; no script error, no failed request
and nothing fetched from another origin (uPlot is vendored). Screenshot in
test-artifacts/model-monitoring.png."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from radpipe.common import drift, monitoring
from radpipe.common.auth import AuthService
from radpipe.common.context import Context
from radpipe.common.studies import now
from radpipe.inference.bundle import default_bundle_path

from .test_portal_browser import ARTIFACTS
from .test_tat_browser import canvas_ink

MODEL = {"name": "lung_nodule_demo", "version": "0.1.0", "sha256": "cd" * 32}


def seed(ctx: Context) -> str:
    """Six studies at 5 mm slices (training: 1-3 mm), ten decisions, four signed studies
    with one false positive among them."""
    reference = monitoring.load_reference(default_bundle_path())
    rng = np.random.default_rng(3)
    for i in range(6):
        array = rng.normal(-600, 300, (20, 64, 64)).astype("float32")
        stats = drift.input_stats(array, (5.0, 0.7, 0.7), 5.0)
        monitoring.record_inference(ctx.documents, f"s{i}", 1, MODEL, stats, reference)
    for n, kind in enumerate(["accept"] * 4 + ["edit"] * 2 + ["reject"] * 4, start=1):
        decision = {"finding": n, "decision": kind, "at": now(), "model": MODEL}
        monitoring.record_decision(ctx.documents, "s0", 1, decision)
    for i in range(4):
        monitoring.record_signed(ctx.documents, f"s{i}", 1, MODEL, 2, rejected=int(i == 0))
    return monitoring.model_key(MODEL)


def loaded(page: Any) -> None:
    page.wait_for_selector("body[data-monitoring-loaded=yes]", state="attached")


def test_admin_sees_figures_conditions_and_input_charts(
    ctx: Context,
    live_url: str,
    browser: Any,
) -> None:
    ctx.settings.monitor_min_studies = 5
    AuthService(ctx.documents).add_user("root", "admin", "monitoring-42")
    page = browser.new_page(viewport={"width": 1400, "height": 1600})
    errors: list[str] = []
    foreign: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on(
        "response",
        lambda r: (
            errors.append(f"{r.status} {r.url}")
            if r.status >= 400 and not r.url.endswith("/favicon.ico")
            else None
        ),
    )
    page.on("request", lambda r: None if r.url.startswith(live_url) else foreign.append(r.url))
    page.goto(live_url + "/login")
    page.fill("input[name=username]", "root")
    page.fill("input[name=password]", "monitoring-42")
    page.click("button[type=submit]")
    page.wait_for_url(live_url + "/admin")
    page.click("header >> text=Models")
    page.wait_for_url(live_url + "/monitoring")
    loaded(page)
    assert page.inner_text("#no-models") == "No model has analysed a study yet."

    key = seed(ctx)
    page.reload()
    loaded(page)
    card = f".model[data-model='{key}']"
    text = page.inner_text(card)
    assert "lung_nodule_demo 0.1.0" in text and "sha256 cdcdcdcdcdcd" in text
    assert "6\nStudies analysed" in text and "10\nFindings decided" in text
    assert "40 %\nAcceptance rate" in text and "60 %\nPPV" in text
    assert "0.25\nFalse positives / study" in text and "4\nSigned studies" in text
    assert page.inner_text(f"{card} [data-condition=drift]") == "Input drift: paging"
    assert page.inner_text(f"{card} [data-condition=ppv]") == "Reader PPV: ok"
    thickness = page.inner_text(f"{card} tr[data-feature=slice_thickness_mm]")
    assert float(thickness.split("\t")[1]) > 1.0  # all at 5 mm, none such in training
    for name in (*drift.FEATURES, "ppv"):
        assert canvas_ink(page, f"{card} [data-chart={name}]") > 300, name
    assert "s0" not in page.inner_text("main")  # no study named
    page.screenshot(path=str(ARTIFACTS / "model-monitoring.png"), full_page=True)
    assert errors == [] and foreign == []


@pytest.mark.parametrize("role", ["radiologist", "oncall"])
def test_clinical_roles_get_no_models_link(
    ctx: Context,
    live_url: str,
    browser: Any,
    role: str,
) -> None:
    AuthService(ctx.documents).add_user("doc", role, "clinical-pass-7")
    page = browser.new_page()
    page.goto(live_url + "/login")
    page.fill("input[name=username]", "doc")
    page.fill("input[name=password]", "clinical-pass-7")
    page.click("button[type=submit]")
    page.wait_for_url(live_url + "/")
    assert page.locator("header >> text=Models").count() == 0
    assert page.goto(live_url + "/monitoring").status == 403
