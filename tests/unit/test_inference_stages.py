"""Inference stages on small arrays, with stand-in networks instead of the trained bundle."""

from __future__ import annotations

import copy
import functools
import hashlib
import itertools
import json
import math
import random
from collections import deque
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch
from pydicom.dataelem import RawDataElement
from pydicom.tag import Tag

from radpipe.common.settings import Settings
from radpipe.demo import make_phantom, phantom_to_datasets
from radpipe.inference.bundle import Bundle, load_bundle, select_device
from radpipe.inference.service import (
    Finding,
    Volume,
    VolumeError,
    analyze,
    assess_risk,
    bundle_grid,
    label_components,
    post_process,
    pre_process,
    predict,
    segment_findings,
    series_to_volume,
)


class Threshold(torch.nn.Module):
    """Logit +10 where the windowed image exceeds 0.5 (about -300 HU), -10 elsewhere."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x > 0.5).float() * 20 - 10


def fake_bundle(network: torch.nn.Module | None = None, **overrides: object) -> Bundle:
    values: dict[str, object] = {
        "name": "test",
        "version": "0",
        "sha256": "",
        "path": Path("."),
        "network": network or Threshold(),
        "spacing": (1.5, 1.5, 1.5),
        "roi_size": (32, 32, 32),
        "intensity_range": (-1000.0, 400.0),
        "threshold": 0.5,
        "device": torch.device("cpu"),
        "min_volume_mm3": 14.0,
    }
    values.update(overrides)
    return Bundle(**values)  # type: ignore[arg-type]


Series = tuple[np.ndarray, list[pydicom.Dataset]]


@pytest.fixture(autouse=True)
def _restore_torch_threads() -> Iterator[None]:
    threads = torch.get_num_threads()  # predict(threads=...) changes a process-wide setting
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def series() -> Series:
    p = make_phantom(3, nodules=[], shape=(8, 64, 64), spacing=(2.5, 1.0, 1.0))
    return p.volume, phantom_to_datasets(p)


# --------------------------------------------------------------------------- series_to_volume


def _enhanced(datasets: list[pydicom.Dataset]) -> pydicom.Dataset:
    """The single-frame series as one Enhanced CT instance (frames in reverse order)."""
    frames = list(reversed(datasets))
    ds = copy.deepcopy(frames[0])
    for keyword in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing"):
        delattr(ds, keyword)
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2.1"
    ds.NumberOfFrames = len(frames)
    shared = pydicom.Dataset()
    orientation, measures, rescale = pydicom.Dataset(), pydicom.Dataset(), pydicom.Dataset()
    orientation.ImageOrientationPatient = frames[0].ImageOrientationPatient
    measures.PixelSpacing = frames[0].PixelSpacing
    measures.SliceThickness = frames[0].get("SliceThickness", 2.5)
    rescale.RescaleSlope, rescale.RescaleIntercept = 1, frames[0].RescaleIntercept
    rescale.RescaleType = "HU"
    shared.PlaneOrientationSequence = pydicom.Sequence([orientation])
    shared.PixelMeasuresSequence = pydicom.Sequence([measures])
    shared.PixelValueTransformationSequence = pydicom.Sequence([rescale])
    ds.SharedFunctionalGroupsSequence = pydicom.Sequence([shared])
    per_frame = []
    for frame in frames:
        item, plane = pydicom.Dataset(), pydicom.Dataset()
        plane.ImagePositionPatient = frame.ImagePositionPatient
        item.PlanePositionSequence = pydicom.Sequence([plane])
        per_frame.append(item)
    ds.PerFrameFunctionalGroupsSequence = pydicom.Sequence(per_frame)
    ds.PixelData = b"".join(frame.PixelData for frame in frames)
    return ds


def test_multi_frame_instance_gives_the_same_volume(series: Series) -> None:
    single = series_to_volume(series[1])
    enhanced = _enhanced(series[1])
    multi = series_to_volume([enhanced])
    np.testing.assert_array_equal(multi.array, single.array)
    assert multi.spacing == pytest.approx(single.spacing)
    assert multi.origin == pytest.approx(single.origin)
    uid = enhanced.SOPInstanceUID
    n = len(series[1])
    assert multi.sop_instance_uids == [f"{uid}#{n - k}" for k in range(n)]


def test_slice_thickness_is_read_from_the_images_and_the_pixel_measures(series: Series) -> None:
    datasets = _copy(series[1])
    for ds in datasets:
        ds.SliceThickness = "5.0"  # an overlapping reconstruction: 5 mm slices every 2.5 mm
    single = series_to_volume(datasets)
    assert single.spacing[0] == pytest.approx(2.5)
    assert single.slice_thickness == pytest.approx(5.0) and single.thickness_mm == 5.0
    multi = series_to_volume([_enhanced(datasets)])
    assert multi.slice_thickness == pytest.approx(5.0)


@pytest.mark.parametrize("value", [None, "", "0", "-1", "abc"])
def test_a_missing_or_unusable_slice_thickness_falls_back_to_the_spacing(
    series: Series, value: str | None
) -> None:
    datasets = _copy(series[1])
    for ds in datasets:
        if value is None:
            del ds.SliceThickness
        else:  # as read from a file: the value is converted on first access
            ds[0x00180050] = RawDataElement(
                Tag(0x00180050), "DS", len(value), value.encode(), 0, True, True
            )
    volume = series_to_volume(datasets)
    assert volume.slice_thickness is None
    assert volume.thickness_mm == pytest.approx(2.5)


@pytest.mark.parametrize("syntax", ["1.2.840.10008.1.2.5", "1.2.840.10008.1.2.4.90"])
def test_compressed_series_decode_to_the_same_volume(series: Series, syntax: str) -> None:
    compressed = []
    for ds in series[1]:
        copy_ = copy.deepcopy(ds)
        copy_.compress(syntax)
        compressed.append(copy_)
    assert all(c.file_meta.TransferSyntaxUID == syntax for c in compressed)
    np.testing.assert_array_equal(
        series_to_volume(compressed).array, series_to_volume(series[1]).array
    )


def test_shuffled_slices_are_sorted_along_the_normal(series: Series) -> None:
    volume, datasets = series
    shuffled = list(datasets)
    random.Random(1).shuffle(shuffled)
    v = series_to_volume(shuffled)
    assert v.array.dtype == np.float32
    assert np.array_equal(v.array, volume.astype(np.float32))
    assert v.spacing == pytest.approx((2.5, 1.0, 1.0))
    assert v.sop_instance_uids == [ds.SOPInstanceUID for ds in datasets]
    assert v.origin == pytest.approx([float(x) for x in datasets[0].ImagePositionPatient])


def test_feet_first_order_sorts_by_projection_on_the_normal(series: Series) -> None:
    _, datasets = series
    flipped = _copy(datasets)
    for ds in flipped:  # rows along -x: the normal is -z, so the highest z comes first
        ds.ImageOrientationPatient = [-1, 0, 0, 0, 1, 0]
    v = series_to_volume(flipped)
    assert v.sop_instance_uids == [ds.SOPInstanceUID for ds in reversed(datasets)]
    assert v.axes[0] == pytest.approx((0.0, 0.0, -1.0))


def test_rescale_slope_and_intercept_are_applied(series: Series) -> None:
    volume, datasets = series
    changed = _copy(datasets)
    for ds in changed:
        ds.RescaleSlope, ds.RescaleIntercept = 2, -2048
    v = series_to_volume(changed)
    assert np.array_equal(v.array, (volume.astype(np.float32) + 1024) * 2 - 2048)


def test_index_to_patient_uses_positions_and_spacing(series: Series) -> None:
    _, datasets = series
    v = series_to_volume(datasets)
    x0, y0, z0 = (float(c) for c in datasets[0].ImagePositionPatient)
    assert v.index_to_patient((2.0, 10.0, 20.0)) == pytest.approx((x0 + 20.0, y0 + 10.0, z0 + 5.0))


def _copy(datasets: list[pydicom.Dataset]) -> list[pydicom.Dataset]:
    return copy.deepcopy(datasets)


def test_fewer_than_three_slices_is_refused(series: Series) -> None:
    with pytest.raises(VolumeError, match="at least 3"):
        series_to_volume(series[1][:2])


def test_mixed_orientations_are_refused(series: Series) -> None:
    ds = _copy(series[1])
    ds[3].ImageOrientationPatient = [1, 0, 0, 0, 0, -1]
    with pytest.raises(VolumeError, match="mixed orientations"):
        series_to_volume(ds)


def test_a_missing_slice_is_refused(series: Series) -> None:
    ds = _copy(series[1])
    del ds[4]
    with pytest.raises(VolumeError, match="missing"):
        series_to_volume(ds)


def test_duplicate_positions_are_refused(series: Series) -> None:
    ds = _copy(series[1])
    ds[2].ImagePositionPatient = ds[1].ImagePositionPatient
    with pytest.raises(VolumeError):
        series_to_volume(ds)


def test_different_matrix_sizes_are_refused(series: Series) -> None:
    ds = _copy(series[1])
    ds[5].Rows, ds[5].Columns = 32, 32
    ds[5].PixelData = np.zeros((32, 32), np.uint16).tobytes()
    with pytest.raises(VolumeError, match="matrix sizes"):
        series_to_volume(ds)


def test_missing_image_position_is_refused_by_name(series: Series) -> None:
    ds = _copy(series[1])
    del ds[0].ImagePositionPatient
    with pytest.raises(VolumeError, match="ImagePositionPatient"):
        series_to_volume(ds)


def test_slices_of_two_series_are_refused(series: Series) -> None:
    ds = _copy(series[1])
    ds[0].SeriesInstanceUID = "1.2.3"
    with pytest.raises(VolumeError, match="more than one series"):
        series_to_volume(ds)


# --------------------------------------------------------------------------- pre/predict


def test_pre_process_resamples_to_bundle_spacing_and_windows() -> None:
    array = np.linspace(-2000, 2000, 20 * 64 * 64, dtype=np.float32).reshape(20, 64, 64)
    v = Volume(array, (2.5, 0.7, 0.7), [])
    x = pre_process(v, fake_bundle())
    assert type(x) is torch.Tensor
    assert x.dtype == torch.float32
    assert tuple(x.shape) == (1, 33, 30, 30)
    assert float(x.min()) == 0.0 and float(x.max()) == 1.0
    assert bundle_grid((20, 64, 64), (2.5, 0.7, 0.7), (1.5, 1.5, 1.5))[1] == pytest.approx(
        (50 / 33, 44.8 / 30, 44.8 / 30)
    )


def test_predict_returns_probabilities_on_the_bundle_grid() -> None:
    x = torch.zeros(1, 40, 36, 30)
    x[0, 10:20, 10:20, 10:20] = 1.0
    prob = predict(x, fake_bundle(), threads=1)
    assert prob.shape == (40, 36, 30) and prob.dtype == np.float32
    assert prob[15, 15, 15] > 0.99 and prob[30, 30, 25] < 0.01
    assert torch.get_num_threads() == 1


# --------------------------------------------------------------------------- post-processing


def _bfs_labels(mask: np.ndarray) -> tuple[np.ndarray, int]:
    seen = np.zeros(mask.shape, np.int32)
    count = 0
    for start in zip(*np.nonzero(mask), strict=True):
        if seen[start]:
            continue
        count += 1
        seen[start] = count
        queue = deque([start])
        while queue:
            z, y, x = queue.popleft()
            for dz in (-1, 0, 1):
                for dy in (-1, 0, 1):
                    for dx in (-1, 0, 1):
                        p = (z + dz, y + dy, x + dx)
                        inside = all(0 <= p[i] < mask.shape[i] for i in range(3))
                        if inside and mask[p] and not seen[p]:
                            seen[p] = count
                            queue.append(p)
    return seen, count


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_label_components_matches_a_breadth_first_search(seed: int) -> None:
    mask = np.random.default_rng(seed).random((10, 14, 16)) < 0.12
    labels, n = label_components(mask)
    expected, count = _bfs_labels(mask)
    assert n == count > 5
    assert set(np.unique(labels[mask])) == set(range(1, n + 1))
    assert (labels[~mask] == 0).all()
    # the same partition: each of our labels pairs with exactly one reference label
    assert len(set(zip(labels[mask], expected[mask], strict=True))) == n


def test_label_components_separates_touching_only_by_gap() -> None:
    mask = np.zeros((5, 5, 9), bool)
    mask[2, 2, 0:4] = True
    mask[3, 3, 4] = True  # diagonal neighbour of (2, 2, 3): 26-connected
    mask[2, 2, 6:9] = True  # one voxel gap: separate
    labels, n = label_components(mask)
    assert n == 2
    assert labels[2, 2, 0] == labels[3, 3, 4] != labels[2, 2, 8]


def _sphere_prob(
    volume: Volume, bundle: Bundle, center_mm: tuple[float, float, float], diameter: float
) -> np.ndarray:
    shape, _ = bundle_grid(volume.array.shape, volume.spacing, bundle.spacing)
    axes = np.meshgrid(
        *[
            ((np.arange(m) + 0.5) * n / m - 0.5) * s
            for m, n, s in zip(shape, volume.array.shape, volume.spacing, strict=True)
        ],
        indexing="ij",
    )
    dist = np.sqrt(sum((a - c) ** 2 for a, c in zip(axes, center_mm, strict=True)))
    return np.where(dist <= diameter / 2, 0.9, 0.02).astype(np.float32)


@pytest.mark.parametrize("diameter", [5.0, 8.0, 12.0, 20.0, 30.0])
def test_post_process_measures_a_known_sphere(diameter: float) -> None:
    volume = Volume(
        np.zeros((40, 120, 120), np.float32),
        (2.5, 0.7, 0.7),
        [f"1.2.{i}" for i in range(40)],
        origin=(-40.0, -40.0, 100.0),
    )
    bundle = fake_bundle()
    center = (51.3, 40.1, 43.7)  # mm in volume coordinates (z, y, x)
    prob = _sphere_prob(volume, bundle, center, diameter)
    prob[1, 1, 1] = 0.95  # a single voxel: below min_volume_mm3, dropped
    findings = post_process(prob, volume, bundle)
    assert len(findings) == 1
    f = findings[0]
    assert abs(f.diameter_mm - diameter) <= 1.0
    assert f.volume_mm3 == pytest.approx(math.pi / 6 * diameter**3, rel=0.35)
    expected_index = [c / s for c, s in zip(center, volume.spacing, strict=True)]
    assert f.center_voxel_zyx == pytest.approx(expected_index, abs=1.0)
    assert f.center_patient_xyz == pytest.approx((-40 + 43.7, -40 + 40.1, 100 + 51.3), abs=1.0)
    assert f.probability == pytest.approx(0.9)
    assert f.center_sop_instance_uid == f"1.2.{round(f.center_voxel_zyx[0])}"


def test_segment_findings_orders_by_size_and_labels_match() -> None:
    volume = Volume(np.zeros((40, 100, 100), np.float32), (2.0, 1.0, 1.0), [])
    bundle = fake_bundle()
    prob = np.maximum(
        _sphere_prob(volume, bundle, (30.0, 30.0, 30.0), 6.0),
        _sphere_prob(volume, bundle, (50.0, 65.0, 65.0), 14.0),
    )
    findings, labels = segment_findings(prob, volume, bundle)
    assert [f.label for f in findings] == [1, 2]
    assert findings[0].diameter_mm > findings[1].diameter_mm
    assert (labels == 1).sum() * np.prod(
        bundle_grid((40, 100, 100), (2.0, 1.0, 1.0), (1.5,) * 3)[1]
    ) == (pytest.approx(findings[0].volume_mm3))


def test_post_process_drops_components_denser_than_max_mean_hu() -> None:
    volume = Volume(np.full((40, 100, 100), -850.0, np.float32), (2.0, 1.0, 1.0), [])
    prob = _sphere_prob(volume, fake_bundle(), (40.0, 50.0, 50.0), 10.0)
    volume.array[15:26, 40:61, 40:61] = 700.0  # the candidate sits in bone
    kept = post_process(prob, volume, fake_bundle(max_mean_hu=None))
    assert len(kept) == 1 and kept[0].mean_hu == pytest.approx(700.0)
    assert post_process(prob, volume, fake_bundle(max_mean_hu=300.0)) == []


def test_post_process_of_an_empty_map_finds_nothing() -> None:
    volume = Volume(np.zeros((10, 20, 20), np.float32), (1.5, 1.5, 1.5), [])
    assert post_process(np.zeros((10, 20, 20), np.float32), volume, fake_bundle()) == []


# --------------------------------------------------------------------------- risk


def _finding(diameter: float) -> Finding:
    return Finding(1, diameter, math.pi / 6 * diameter**3, (0, 0, 0), (0, 0, 0), 0.9)


def test_risk_without_findings_is_none() -> None:
    risk = assess_risk([])
    assert (risk.score, risk.category) == (0.0, "none")


@pytest.mark.parametrize(
    ("diameter", "category", "alert"),
    [(4.0, "low", False), (6.0, "moderate", False), (7.99, "moderate", False),
     (8.0, "high", True), (12.1, "high", True), (30.0, "high", True)],
)  # fmt: skip
def test_risk_category_and_alert_line(diameter: float, category: str, alert: bool) -> None:
    risk = assess_risk([_finding(3.0), _finding(diameter)])
    assert risk.category == category
    assert (risk.score >= 0.5) is alert
    assert 0.0 <= risk.score <= 1.0
    assert f"{diameter:.1f} mm" in risk.rule


def test_risk_rule_text_and_exact_threshold() -> None:
    risk = assess_risk([_finding(12.1)])
    assert risk.rule == "largest nodule 12.1 mm >= 8 mm (Lung-RADS 4A-like)"
    assert assess_risk([_finding(8.0)]).score == 0.5
    assert assess_risk([_finding(8.0 - 1e-12)]).score < 0.5
    assert risk.thresholds == {"high_mm": 8.0, "moderate_mm": 6.0}


def test_risk_score_is_monotonic_in_the_largest_diameter() -> None:
    scores = [assess_risk([_finding(d)]).score for d in np.linspace(3, 30, 200)]
    assert all(b >= a for a, b in itertools.pairwise(scores))
    assert scores[-1] > 0.99


def test_risk_thresholds_can_be_changed_and_are_validated() -> None:
    assert assess_risk([_finding(5.0)], high_mm=4.0, moderate_mm=3.0).category == "high"
    with pytest.raises(ValueError, match="moderate_mm < high_mm"):
        assess_risk([], high_mm=6.0, moderate_mm=8.0)


# --------------------------------------------------------------------------- pipeline, bundle


def test_analyze_runs_every_stage_and_serializes() -> None:
    p = make_phantom(2, nodules=[], shape=(12, 64, 64), spacing=(2.5, 4.0, 4.0))
    datasets = phantom_to_datasets(p)
    shuffled = list(reversed(datasets))
    analysis = analyze(shuffled, fake_bundle(), threads=1)
    # the stand-in network calls all soft tissue a nodule: one finding per body region
    assert analysis.findings and analysis.risk.category == "high"
    assert list(analysis.timings) == [
        "series_to_volume",
        "pre_process",
        "predict",
        "post_process",
        "assess_risk",
        "total",
    ]
    assert analysis.input_sop_uids == [ds.SOPInstanceUID for ds in datasets]
    assert analysis.label_map is not None and analysis.label_map.shape == p.volume.shape
    assert set(np.unique(analysis.label_map)) == set(range(len(analysis.findings) + 1))
    doc = json.loads(json.dumps(analysis.to_dict()))
    assert doc["findings"][0]["label"] == 1 and doc["model"]["name"] == "test"


def _write_tiny_bundle(root: Path) -> torch.nn.Module:
    (root / "configs").mkdir(parents=True)
    (root / "models").mkdir()
    net_def = {"_target_": "torch.nn.Conv3d", "in_channels": 1, "out_channels": 1, "kernel_size": 1}
    config = {
        "network_def": net_def,
        "spacing": [2.0, 2.0, 2.0],
        "roi_size": [32, 32, 32],
        "intensity_range": [-1000, 400],
        "threshold": 0.6,
        "min_volume_mm3": 20,
        "max_mean_hu": 250,
    }
    (root / "configs" / "inference.json").write_text(json.dumps(config))
    (root / "configs" / "metadata.json").write_text(
        json.dumps({"name": "tiny", "version": "1.2.3"})
    )
    net = torch.nn.Conv3d(1, 1, 1)
    torch.save(net.state_dict(), root / "models" / "model.pt")
    return net


def test_load_bundle_reads_configs_and_weights(tmp_path: Path) -> None:
    net = _write_tiny_bundle(tmp_path)
    bundle = load_bundle(tmp_path, "cpu")
    assert (bundle.name, bundle.version) == ("tiny", "1.2.3")
    assert (bundle.spacing, bundle.roi_size, bundle.threshold) == ((2.0,) * 3, (32,) * 3, 0.6)
    assert bundle.intensity_range == (-1000.0, 400.0) and bundle.min_volume_mm3 == 20.0
    assert bundle.max_mean_hu == 250.0
    assert not bundle.network.training
    assert torch.equal(bundle.network.state_dict()["weight"], net.state_dict()["weight"])
    assert bundle.sha256 == hashlib.sha256((tmp_path / "models/model.pt").read_bytes()).hexdigest()
    assert json.loads(json.dumps(bundle.to_dict()))["device"] == "cpu"


def test_incomplete_bundle_names_the_missing_file(tmp_path: Path) -> None:
    _write_tiny_bundle(tmp_path)
    (tmp_path / "models" / "model.pt").unlink()
    with pytest.raises(ValueError, match=r"models/model\.pt is missing"):
        load_bundle(tmp_path)


def test_select_device() -> None:
    assert select_device("cpu") == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert select_device().type == expected
    with pytest.raises(ValueError, match="unknown device"):
        select_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match=r"cuda\.is_available"):
            select_device("cuda")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device: GPU path not run")
def test_gpu_prediction_with_mixed_precision_matches_cpu(series: Series) -> None:
    volume = series_to_volume(series[1])
    cpu = fake_bundle(min_volume_mm3=0.0)
    gpu = fake_bundle(device=torch.device("cuda"), min_volume_mm3=0.0)
    gpu.network.to("cuda")
    tensor = pre_process(volume, cpu)
    on_cpu, on_gpu = predict(tensor, cpu), predict(tensor, gpu)
    assert on_gpu.dtype == np.float32 and on_gpu.shape == on_cpu.shape
    assert ((on_gpu > 0.5) == (on_cpu > 0.5)).mean() > 0.999


def test_inference_worker_takes_the_queue_of_its_device(monkeypatch: pytest.MonkeyPatch) -> None:
    from click.testing import CliRunner

    from radpipe import cli

    monkeypatch.setenv("RADPIPE_SECRET_KEY", "2cc0338b988445249047bad0d5491053d9f13f35")
    from radpipe.inference import tasks  # builds its Celery app from the settings

    seen: list[list[str]] = []
    monkeypatch.setattr(tasks.celery, "worker_main", lambda argv: seen.append(argv))
    result = CliRunner().invoke(cli.main, ["worker", "inference"])
    assert result.exit_code == 0, result.output
    queue = seen[0][seen[0].index("--queues") + 1]
    assert queue == ("inference-gpu" if torch.cuda.is_available() else "inference-cpu")
    CliRunner().invoke(cli.main, ["worker", "inference", "--queue", "inference-gpu"])
    assert seen[1][seen[1].index("--queues") + 1] == "inference-gpu"
    # Set, RADPIPE_INFERENCE_QUEUE is what deid sends to, so it is what the worker reads.
    monkeypatch.setenv("RADPIPE_INFERENCE_QUEUE", "inference-gpu")
    CliRunner().invoke(cli.main, ["worker", "inference"])
    assert seen[2][seen[2].index("--queues") + 1] == "inference-gpu"


@pytest.mark.parametrize(
    ("cuda", "device", "queue"),
    [
        (True, "auto", "inference-gpu"),
        (False, "auto", "inference-cpu"),
        (True, "cpu", "inference-cpu"),  # a GPU host told to infer on its CPU
    ],
)
def test_deid_hands_studies_to_the_queue_the_inference_worker_of_its_host_reads(
    monkeypatch: pytest.MonkeyPatch, cuda: bool, device: str, queue: str
) -> None:
    """With RADPIPE_INFERENCE_QUEUE unset, a GPU workstation's deid stage once sent every
    study to inference-cpu while its inference worker read inference-gpu: nothing was ever
    analysed. Both now follow the host's device, asked without starting CUDA: a prefork
    worker's parent that called torch.cuda.is_available() left its forked children unable to
    use the GPU. (These machines have no GPU, so torch is told it has one here;
    tests/e2e/test_gpu_workers.py checks both on a real one.)"""
    from click.testing import CliRunner

    from radpipe import cli
    from radpipe.common import queues

    monkeypatch.setenv("RADPIPE_SECRET_KEY", "2cc0338b988445249047bad0d5491053d9f13f35")
    monkeypatch.delenv("RADPIPE_INFERENCE_QUEUE", raising=False)
    monkeypatch.setenv("RADPIPE_INFERENCE_DEVICE", device)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: int(cuda))

    def poisons_fork() -> bool:
        raise AssertionError("is_available() starts CUDA before the prefork pool forks")

    monkeypatch.setattr(torch.cuda, "is_available", poisons_fork)
    queues._device_queue.cache_clear()
    monkeypatch.setattr(queues, "_device_queue", functools.cache(queues._device_queue.__wrapped__))
    from radpipe.inference import tasks

    consumed: list[list[str]] = []
    monkeypatch.setattr(tasks.celery, "worker_main", lambda argv: consumed.append(argv))
    result = CliRunner().invoke(cli.main, ["worker", "inference"])
    assert result.exit_code == 0, result.output
    settings = Settings()
    celery = queues.make_celery(settings)
    sent: list[dict[str, object]] = []
    monkeypatch.setattr(celery, "send_task", lambda name, **options: sent.append(options))
    queues.CeleryDispatcher(celery, settings).send("inference", "study-a")
    assert sent[0]["queue"] == consumed[0][consumed[0].index("--queues") + 1] == queue


def test_an_inference_worker_told_to_use_a_gpu_it_lacks_stops_with_the_fix(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from click.testing import CliRunner

    from radpipe import cli
    from radpipe.inference import tasks

    monkeypatch.setenv("RADPIPE_SECRET_KEY", "2cc0338b988445249047bad0d5491053d9f13f35")
    monkeypatch.setenv("RADPIPE_INFERENCE_DEVICE", "cuda")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    started: list[list[str]] = []
    monkeypatch.setattr(tasks.celery, "worker_main", lambda argv: started.append(argv))
    result = CliRunner().invoke(cli.main, ["worker", "inference"])
    assert result.exit_code == 1 and not started
    assert "RADPIPE_INFERENCE_DEVICE=cuda, but torch sees no CUDA device" in result.output
    assert "auto or cpu" in result.output


def test_each_stage_lives_in_its_own_module_and_the_service_runs_them() -> None:
    """Volume, model, findings and risk are modules of their own; ``service`` re-exports them
    (the inference API's one door) and keeps only the pipeline."""
    from radpipe.inference import findings, model, risk, service, volume

    seams = {
        volume: ["Volume", "VolumeError", "series_to_volume"],
        model: ["bundle_grid", "pre_process", "predict"],
        findings: ["Finding", "label_components", "post_process", "segment_findings"],
        risk: ["Risk", "assess_risk"],
    }
    for module, names in seams.items():
        for name in names:
            assert getattr(service, name) is getattr(module, name)
            assert getattr(module, name).__module__ == module.__name__
    assert service.analyze.__module__ == service.__name__


def test_device_batch_fills_a_gpu_and_keeps_the_bundle_batch_on_cpu() -> None:
    from radpipe.inference.model import GPU_BYTES_PER_VOXEL, MAX_DEVICE_BATCH, device_batch

    assert device_batch(fake_bundle(sw_batch_size=3)) == 3  # CPU: the bundle's own choice
    gpu = fake_bundle(device=torch.device("cuda"), roi_size=(96, 96, 96))
    window = GPU_BYTES_PER_VOXEL * 96**3
    # Half of the free memory, in whole windows, at most MAX_DEVICE_BATCH, at least 1.
    assert device_batch(gpu, free_bytes=10 * window) == 5
    assert device_batch(gpu, free_bytes=140 * 2**30) == MAX_DEVICE_BATCH
    assert device_batch(gpu, free_bytes=window) == 1
    assert device_batch(replace(gpu, sw_batch_size=4), free_bytes=window) == 4
