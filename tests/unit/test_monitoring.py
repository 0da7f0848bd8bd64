"""Model monitoring: the statistics with known values, the counters kept by the store as
decisions come and change, and drift or a PPV drop paging the admins exactly once."""

from __future__ import annotations

import json
import math
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydantic import AnyHttpUrl

from radpipe.common import drift, monitoring
from radpipe.common.alerts import alerts_of
from radpipe.common.context import Context
from radpipe.common.studies import now
from radpipe.inference.bundle import default_bundle_path
from radpipe.notify import paging, pipeline

from ..webhook import webhook_receiver

MODEL = {"name": "lung_nodule_demo", "version": "0.1.0", "sha256": "ab" * 32}
KEY = monitoring.model_key(MODEL)


# -- statistics ----------------------------------------------------------------------------


def test_psi_and_ks_have_their_textbook_values() -> None:
    expected, actual = [0.5, 0.5], [0.25, 0.75]
    # (0.25 - 0.5) ln(0.25 / 0.5) + (0.75 - 0.5) ln(0.75 / 0.5)
    assert drift.psi(expected, actual) == pytest.approx(
        0.25 * math.log(2) + 0.25 * math.log(1.5), abs=1e-9
    )
    assert drift.psi(expected, actual) == pytest.approx(0.27465, abs=1e-5)
    assert drift.psi([0.2, 0.3, 0.5], [0.2, 0.3, 0.5]) == 0.0
    assert drift.ks(expected, actual) == pytest.approx(0.25)
    assert drift.ks([1, 0, 0, 0], [0, 0, 0, 1]) == pytest.approx(1.0)
    assert drift.ks([0.1, 0.2, 0.7], [0.1, 0.2, 0.7]) == 0.0
    # An empty reference bin is floored at 1e-4 (then renormalised), not divided by.
    e = np.array([1.0, 1e-4]) / 1.0001
    floored = float(np.sum((0.5 - e) * np.log(0.5 / e)))
    assert drift.psi([1.0, 0.0], [0.5, 0.5]) == pytest.approx(floored) == pytest.approx(4.604, 1e-3)
    with pytest.raises(ValueError, match="same bins"):
        drift.psi([0.5, 0.5], [1.0])
    # Outside the training data: observed mass where the reference holds under 1 %.
    assert drift.outside_share([0.995, 0.005, 0.0], [0.5, 0.3, 0.2]) == pytest.approx(0.5)
    assert drift.outside_share([0.5, 0.5], [0.9, 0.1]) == 0.0


def test_ks_on_bins_matches_the_two_sample_statistic_on_binned_values() -> None:
    rng = np.random.default_rng(1)
    a, b = rng.normal(0.7, 0.1, 400), rng.normal(0.8, 0.1, 300)
    edges = drift.PIXEL_SPACING_EDGES
    binned = drift.ks(
        drift.proportions(drift.bin_counts(a, edges)), drift.proportions(drift.bin_counts(b, edges))
    )
    # The same statistic computed directly at the bin edges (the values the CDFs are taken at).
    inner = np.asarray(edges[1:-1])
    direct = max(abs((a < e).mean() - (b < e).mean()) for e in inner)
    assert binned == pytest.approx(direct, abs=1e-9)


def test_bins_clip_out_of_range_values_into_the_end_bins() -> None:
    counts = drift.bin_counts([-5.0, 0.35, 0.4, 99.0], [0.3, 0.4, 0.5])
    assert counts.tolist() == [2, 2]
    with pytest.raises(ValueError, match="empty"):
        drift.proportions([0, 0])


def test_ppv_and_acceptance_arithmetic() -> None:
    assert drift.ppv(accepted=3, edited=1, rejected=4) == pytest.approx(0.5)
    assert drift.ppv(0, 0, 0) is None
    assert drift.ppv(0, 0, 5) == 0.0
    assert drift.ratio(3, 8) == pytest.approx(0.375)
    assert drift.ratio(1, 0) is None


def test_input_stats_of_a_volume() -> None:
    array = np.full((4, 64, 64), -1024.0, dtype=np.float32)
    array[:, 16:48, 16:48] = 40.0  # a quarter of the voxels soft tissue
    stats = drift.input_stats(array, (2.5, 0.7, 0.8), None)
    assert stats["pixel_spacing_mm"] == pytest.approx(0.75)
    assert stats["slice_thickness_mm"] == 2.5  # no attribute: the slice spacing
    assert drift.input_stats(array, (2.5, 0.7, 0.8), 3.0)["slice_thickness_mm"] == 3.0
    hu = stats["hu"]
    assert len(hu) == len(drift.HU_EDGES) - 1
    assert hu[0] == pytest.approx(0.75)  # -1024 HU: under -1000, in the first bin
    assert hu[drift.HU_EDGES.index(0.0)] == pytest.approx(0.25)  # 40 HU: the 0..100 bin


def test_a_reference_is_checked_and_the_shipped_one_is_valid() -> None:
    with pytest.raises(drift.BadReference, match="features"):
        drift.check_reference({})
    with pytest.raises(drift.BadReference, match="increasing"):
        drift.check_reference({"features": {"hu": {"edges": [1, 0], "proportions": [1]}}})
    with pytest.raises(drift.BadReference, match="one per bin"):
        drift.check_reference({"features": {"hu": {"edges": [0, 1, 2], "proportions": [1]}}})
    with pytest.raises(drift.BadReference, match="unknown feature"):
        drift.check_reference({"features": {"age": {"edges": [0, 1], "proportions": [1]}}})
    shipped = monitoring.load_reference(default_bundle_path())
    assert shipped is not None
    assert set(shipped["features"]) == set(drift.FEATURES)
    assert shipped["features"]["hu"]["edges"] == drift.HU_EDGES


def test_a_bad_reference_leaves_the_result_and_records_without_it(
    ctx: Context, tmp_path: Path
) -> None:
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "reference_stats.json").write_text(json.dumps({"features": {}}))

    class Vol:
        array = np.zeros((2, 8, 8), dtype=np.float32)
        spacing = (2.0, 0.8, 0.8)

    monitoring.record_analysis(ctx.documents, "s1", 1, MODEL, Vol(), tmp_path)
    stats = monitoring.stats_of(ctx.documents, KEY)
    assert stats is not None and stats["studies"] == 1 and "reference" not in stats


def test_the_recorded_slice_thickness_is_the_one_the_volume_read(
    ctx: Context, tmp_path: Path
) -> None:
    class Vol:  # 5 mm slices every 2.5 mm (Slice Thickness as `series_to_volume` read it)
        array = np.zeros((2, 8, 8), dtype=np.float32)
        spacing = (2.5, 0.8, 0.8)
        slice_thickness = 5.0

    monitoring.record_analysis(ctx.documents, "s2", 1, MODEL, Vol(), tmp_path)
    record = ctx.documents.collection(monitoring.MODEL_INPUTS).find_one({})
    assert record is not None
    assert record["slice_thickness_mm"] == 5.0 and record["pixel_spacing_mm"] == 0.8


# -- counters in the store -----------------------------------------------------------------


def _decide(ctx: Context, study: str, n: int, kind: str, version: int = 1) -> None:
    decision = {"finding": n, "decision": kind, "at": now(), "model": MODEL}
    monitoring.record_decision(ctx.documents, study, version, decision)


def _figures(ctx: Context) -> dict[str, Any]:
    [figures] = monitoring.summaries(ctx.documents, ctx.settings)
    return figures


def test_decisions_count_once_and_a_changed_decision_moves_its_count(ctx: Context) -> None:
    _decide(ctx, "s1", 1, "reject")
    _decide(ctx, "s1", 1, "reject")  # the same decision again: counted once
    _decide(ctx, "s1", 1, "edit")  # changed: moves from reject to edit
    _decide(ctx, "s1", 2, "accept")
    _decide(ctx, "s2", 1, "accept")
    _decide(ctx, "s2", 2, "reject")
    figures = _figures(ctx)
    assert figures["decisions"] == {"accept": 2, "edit": 1, "reject": 1}
    assert figures["acceptance_rate"] == pytest.approx(2 / 4)
    assert figures["ppv"] == pytest.approx(3 / 4)
    assert figures["recent"]["ppv"] == pytest.approx(3 / 4)
    [today] = figures["recent"]["daily"]
    assert today["decided"] == 4 and today["ppv"] == pytest.approx(3 / 4)
    assert figures["false_positives_per_study"] is None  # nothing signed yet
    monitoring.record_signed(ctx.documents, "s1", 1, MODEL, findings=2, rejected=0)
    monitoring.record_signed(ctx.documents, "s2", 1, MODEL, findings=2, rejected=1)
    monitoring.record_signed(ctx.documents, "s2", 1, MODEL, findings=2, rejected=1)  # again
    monitoring.record_signed(ctx.documents, "s3", 1, MODEL, findings=0, rejected=0)  # clean
    figures = _figures(ctx)
    assert figures["signed_studies"] == 3
    assert figures["false_positives_per_study"] == pytest.approx(1 / 3)
    assert "s1" not in json.dumps(figures, default=str)  # aggregates only: no study id


def _stats(thickness: float, spacing: float = 0.7) -> dict[str, Any]:
    hu = [0.0] * (len(drift.HU_EDGES) - 1)
    hu[0], hu[10] = 0.6, 0.4
    return {"pixel_spacing_mm": spacing, "slice_thickness_mm": thickness, "hu": hu}


REFERENCE = {
    "features": drift.check_reference(
        {
            "features": {
                "slice_thickness_mm": {
                    "edges": drift.SLICE_THICKNESS_EDGES,
                    "proportions": [0, 0.5, 0.5, 0, 0, 0, 0, 0, 0, 0],
                },
                "pixel_spacing_mm": {
                    "edges": drift.PIXEL_SPACING_EDGES,
                    "proportions": [0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0],
                },
            }
        }
    )
}


def test_inputs_count_once_per_study_version_and_drift_is_measured(ctx: Context) -> None:
    ctx.settings.monitor_min_studies = 4
    for i in range(4):
        assert monitoring.record_inference(
            ctx.documents, f"s{i}", 1, MODEL, _stats(1.25), REFERENCE
        )
    assert not monitoring.record_inference(ctx.documents, "s0", 1, MODEL, _stats(1.25), REFERENCE)
    figures = _figures(ctx)
    assert figures["studies"] == 4 and figures["inputs"]["window"] == 4
    assert figures["inputs"]["drift"]["pixel_spacing_mm"] == {"psi": 0.0, "ks": 0.0, "outside": 0.0}
    thickness = figures["inputs"]["drift"]["slice_thickness_mm"]
    assert thickness["ks"] == pytest.approx(0.5) and thickness["psi"] > 4
    assert "hu" not in figures["inputs"]["drift"]  # the reference has no HU histogram
    # Every study in one bin of the training data: a narrower site, not a drift out of it.
    assert thickness["outside"] == 0.0 and not figures["conditions"]["drift"]["active"]
    ctx.settings.monitor_drift_outside = 0.0  # a site that wants PSI alone
    assert _figures(ctx)["conditions"]["drift"]["active"]


# -- paging --------------------------------------------------------------------------------


def test_drift_opens_exactly_one_admin_alert_and_pages_it(ctx: Context) -> None:
    ctx.settings.monitor_min_studies = 5
    ctx.settings.monitor_window = 5
    start = now()
    with webhook_receiver() as receiver:
        ctx.settings.alert_webhook_url = AnyHttpUrl(receiver.url)
        for i in range(4):  # 5 mm slices, none in training, but too few studies to judge
            monitoring.record_inference(ctx.documents, f"a{i}", 1, MODEL, _stats(5.0), REFERENCE)
        assert pipeline.check_models(ctx, start) == 0
        monitoring.record_inference(ctx.documents, "a4", 1, MODEL, _stats(5.0), REFERENCE)
        assert pipeline.check_models(ctx, start) == 1
        assert pipeline.check_models(ctx, start + timedelta(seconds=5)) == 0  # the same condition
        paging.sweep(ctx, start + timedelta(seconds=6))
        assert pipeline.check_models(ctx, start + timedelta(seconds=7)) == 0
        [alert] = alerts_of(ctx.documents).find({"kind": "pipeline"})
        assert alert["rule"] == "pipeline-model.drift" and alert["condition"] == "model.drift"
        assert alert["model"] == KEY and alert["study_id"] is None
        assert alert["_id"] == f"pipeline-model.drift-{KEY}-e1"
        [post] = receiver.posts
        assert "input drift" in post["summary"] and "slice_thickness_mm" in post["summary"]
        assert "100% outside the training data" in post["summary"]
        # The inputs come back to the training range: the condition clears, no new alert ...
        for i in range(5):  # 2 at 1.25 mm, 3 at 1.75 mm: PSI 0.04 against 50/50
            thickness = 1.25 if i < 2 else 1.75
            monitoring.record_inference(
                ctx.documents, f"b{i}", 1, MODEL, _stats(thickness), REFERENCE
            )
        assert pipeline.check_models(ctx, start + timedelta(seconds=8)) == 0
        assert not monitoring.stats_of(ctx.documents, KEY)["conditions"]["drift"]["active"]
        # ... and a new episode of drift is a new alert.
        for i in range(5):
            monitoring.record_inference(ctx.documents, f"c{i}", 1, MODEL, _stats(5.0), REFERENCE)
        assert pipeline.check_models(ctx, start + timedelta(seconds=9)) == 1
    ids = sorted(a["_id"] for a in alerts_of(ctx.documents).find({"kind": "pipeline"}))
    assert ids == [f"pipeline-model.drift-{KEY}-e1", f"pipeline-model.drift-{KEY}-e2"]


def test_a_ppv_drop_pages_once_and_clears_with_a_margin(ctx: Context) -> None:
    ctx.settings.monitor_min_decisions = 10
    ctx.settings.monitor_ppv_threshold = 0.5
    start = now()
    for n in range(9):
        _decide(ctx, f"p{n}", 1, "reject")
    assert pipeline.check_models(ctx, start) == 0  # 9 decisions: too few to judge
    _decide(ctx, "p9", 1, "reject")
    assert pipeline.check_models(ctx, start) == 1
    assert pipeline.check_models(ctx, start) == 0
    [alert] = alerts_of(ctx.documents).find({"kind": "pipeline"})
    assert alert["condition"] == "model.ppv" and "reader PPV 0.00" in alert["summary"]
    # Exactly at the threshold after the drop: still the same episode (5 points of margin).
    for n in range(10):
        _decide(ctx, f"p{n}", 1, "accept" if n < 5 else "reject")
    assert _figures(ctx)["recent"]["ppv"] == pytest.approx(0.5)
    assert pipeline.check_models(ctx, start) == 0
    assert monitoring.stats_of(ctx.documents, KEY)["conditions"]["ppv"]["active"]
    for n in range(10):
        _decide(ctx, f"p{n}", 1, "accept")
    assert pipeline.check_models(ctx, start) == 0
    assert not monitoring.stats_of(ctx.documents, KEY)["conditions"]["ppv"]["active"]


def test_a_failing_model_check_does_not_hold_up_the_sweep(
    ctx: Context, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: Any, **kw: Any) -> list[dict[str, Any]]:
        raise RuntimeError("model_stats unreadable")

    monkeypatch.setattr(pipeline.monitoring, "summaries", broken)
    pipeline._models_checked.clear()
    assert pipeline.check_pipeline(ctx, now()) == 0  # logged, not raised
    with pytest.raises(RuntimeError):
        pipeline.check_models(ctx, now())
    pipeline._models_checked.clear()
