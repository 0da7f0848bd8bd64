"""The turnaround dashboard in headless Chromium: a manager logs in, sees the figures, the
interval table with its bottleneck, the charts drawn (canvas pixels), the stuck study; filters
by modality; imports a dirty RIS CSV through the page and reads its data-quality report; the
same file again changes nothing. No request leaves the server's origin (uPlot is vendored).
Screenshot in test-artifacts/tat-dashboard.png."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from radpipe.common.auth import AuthService
from radpipe.common.context import Context
from radpipe.tat import service

from .test_portal_browser import ARTIFACTS


def seed(ctx: Context) -> dict[str, str]:
    """Six signed CT/MR studies over two days and one MR study stuck in ``received``."""
    now = datetime.now(UTC)
    studies = {}
    for i in range(6):
        start = now - timedelta(hours=30 - 5 * i)
        minutes = [0, 1, 3, 8 + i, 10 + i, 40 + 10 * i]
        stages = ["received", "stable", "deidentified", "analyzed", "alerted", "signed"]
        events = [
            {"type": s, "at": start + timedelta(minutes=m), "version": 1, "detail": {}}
            for s, m in zip(stages, minutes, strict=True)
        ]
        events.insert(5, {"type": "alert.acknowledged", "at": start + timedelta(minutes=20 + i)})
        studies[f"done{i}"] = _insert(ctx, start, "CT" if i % 2 else "MR", "signed", events)
    stuck_at = now - timedelta(hours=2)
    studies["stuck"] = _insert(
        ctx, stuck_at, "MR", "received", [{"type": "received", "at": stuck_at, "version": 1}]
    )
    return studies


def _insert(ctx: Context, at: datetime, modality: str, state: str, events: list) -> str:
    study_id = secrets.token_hex(12)
    ctx.studies.studies.insert_one(
        {
            "_id": study_id,
            "state": state,
            "version": 1,
            "created_at": at,
            "updated_at": at,
            "modality": modality,
            "source": "ct-scanner-1",
            "instance_count": 1,
            "analysis": {"risk": {"category": "high", "score": 0.9}},
            "events": events,
        }
    )
    return study_id


DIRTY = (
    "Accession,Modality,Priority,Order Time,Exam Complete,Final Report\n"
    "ACC900,CT,STAT,2026-03-01 08:00,2026-03-01 09:00,\n"
    "ACC901,QQ,ROUTINE,2026-03-01 08:00,2026-03-01 07:00,\n"
)


def loaded(page: Any) -> None:
    # A selector, not a predicate: the page's CSP (script-src 'self') refuses eval.
    page.wait_for_selector("body[data-tat-loaded=yes]", state="attached")


def canvas_ink(page: Any, selector: str) -> int:
    """Pixels drawn (non-transparent) on the canvas under ``selector``."""
    return page.evaluate(
        """(sel) => { const c = document.querySelector(sel + ' canvas');
            const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
            let n = 0; for (let i = 3; i < d.length; i += 4) if (d[i] > 0) n++; return n; }""",
        selector,
    )


def test_manager_dashboard_figures_charts_filters_and_ris_import(
    ctx: Context, live_url: str, browser: Any, tmp_path: Path
) -> None:
    studies = seed(ctx)
    AuthService(ctx.documents).add_user("boss", "manager", "turnaround-9")
    page = browser.new_page(viewport={"width": 1400, "height": 1800})
    foreign: list[str] = []
    page.on("request", lambda r: None if r.url.startswith(live_url) else foreign.append(r.url))
    page.goto(live_url + "/login")
    page.fill("input[name=username]", "boss")
    page.fill("input[name=password]", "turnaround-9")
    page.click("button[type=submit]")
    page.wait_for_url(live_url + "/tat")  # a manager's home (portal HOME)
    page.click("text=Turnaround")  # and the navigation link leads there
    page.wait_for_url(live_url + "/tat")
    loaded(page)

    figures = page.inner_text("#tat-figures")
    assert "7\nStudies" in figures and "1\nStuck" in figures
    # No resident read in the seed: the reader-agreement KPI is shown, empty.
    assert "–\nReader agreement (resident vs attending)" in figures
    assert "–\nReader agreement (resident vs AI)" in figures
    bottleneck = page.inner_text("#tat-intervals tr.bottleneck")
    assert bottleneck.startswith("acknowledged→signed")  # 20-65 min, the longest p90
    assert page.locator("#tat-intervals tr[data-interval='received→signed']").count() == 1
    for chart in ("#chart-intervals", "#chart-arrivals", "#chart-daily"):
        assert canvas_ink(page, chart) > 500, chart
    stuck = page.inner_text("#tat-stuck")
    assert studies["stuck"] in stuck and "received" in stuck
    assert studies["done0"] not in stuck

    page.select_option("select[name=modality]", "CT")
    page.evaluate("document.body.dataset.tatLoaded = 'no'")
    page.click("#tat-filters button[type=submit]")
    loaded(page)
    assert "3\nStudies" in page.inner_text("#tat-figures")
    assert "modality=CT" in page.get_attribute("#export-csv", "href")

    csv_file = tmp_path / "ris-export.csv"
    csv_file.write_text(DIRTY)
    page.set_input_files("#ris-import input[type=file]", str(csv_file))
    page.click("#ris-import button[type=submit]")
    page.wait_for_selector("#ris-flagged")
    assert page.inner_text("#ris-msg") == "Imported: 1 clean, 1 flagged rows."
    flagged = page.inner_text("#ris-flagged")
    assert "unknown modality 'QQ'" in flagged
    assert "out of order: exam complete time before order time" in flagged
    assert "ACC901" not in flagged and "ACC90" not in page.content()  # pseudonyms only
    assert "2 rows, 1 clean, 1 flagged" in page.inner_text("#ris-summary")
    page.screenshot(path=str(ARTIFACTS / "tat-dashboard.png"), full_page=True)

    page.click("#ris-import button[type=submit]")
    page.wait_for_selector("#ris-msg:has-text('imported before')")
    imports = list(ctx.documents.collection(service.IMPORTS).find({}))
    assert len(imports) == 1
    assert foreign == []


def test_an_empty_period_renders_without_script_errors(
    ctx: Context, live_url: str, browser: Any
) -> None:
    AuthService(ctx.documents).add_user("boss", "manager", "turnaround-9")
    page = browser.new_page(viewport={"width": 1200, "height": 900})
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on(
        "response",
        lambda r: (
            errors.append(f"{r.status} {r.url}")
            if r.status >= 400 and not r.url.endswith("/favicon.ico")
            else None
        ),
    )
    page.goto(live_url + "/login")
    page.fill("input[name=username]", "boss")
    page.fill("input[name=password]", "turnaround-9")
    page.click("button[type=submit]")
    page.wait_for_url(live_url + "/tat")
    page.goto(live_url + "/tat")
    loaded(page)
    assert page.inner_text("#tat-intervals tbody") == "No study in this period."
    assert page.inner_text("#tat-stuck tbody") == "No study is stuck."
    assert page.inner_text("#ris-report") == "No RIS file imported yet."
    assert errors == []
