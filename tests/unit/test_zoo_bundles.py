"""MONAI Model Zoo bundles run unchanged (issue 15.2): tiny bundles in the zoo's layouts, built
here, through the adapter (``radpipe.inference.zoo``) and the result writers."""

from __future__ import annotations

import json
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
import torch

from radpipe.common.routing import declared_bundles
from radpipe.demo import make_phantom, phantom_to_datasets
from radpipe.inference.outputs import build_results
from radpipe.inference.service import Analysis, analyze
from radpipe.inference.volume import series_to_volume
from radpipe.inference.zoo import (
    MANIFEST,
    BundleError,
    ZooBundle,
    ZooFinding,
    load_model,
    verify_manifest,
    volume_to_metatensor,
    write_manifest,
)

from ..zoo_bundles import (
    ROUTING,
    classification_bundle,
    detection_bundle,
    sample_series,
    segmentation_bundle,
)

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def series() -> list[pydicom.Dataset]:
    return sample_series()


def uid_source(purpose: str) -> str:
    return pydicom.uid.generate_uid(entropy_srcs=[purpose])


def sources_of(series: list[pydicom.Dataset], analysis: Analysis) -> list[pydicom.Dataset]:
    by_uid = {str(ds.SOPInstanceUID): ds for ds in series}
    return [by_uid[u] for u in analysis.input_sop_uids]


def results(series: list[pydicom.Dataset], analysis: Analysis) -> dict[str, pydicom.Dataset]:
    assert analysis.volume is not None
    built = build_results(sources_of(series, analysis), analysis.volume, analysis, uid=uid_source)
    out = {}
    for obj in built.objects:
        buffer = pydicom.filebase.DicomBytesIO()
        pydicom.dcmwrite(buffer, obj.dataset, enforce_file_format=True)
        out.setdefault(obj.kind, pydicom.dcmread(pydicom.filebase.DicomBytesIO(buffer.getvalue())))
    return out


def test_the_in_memory_volume_is_what_loadimage_would_give(series: list[pydicom.Dataset]) -> None:
    volume = series_to_volume(series)
    image = volume_to_metatensor(volume)
    assert tuple(image.shape) == volume.array.shape[::-1]  # (x, y, z), no channel
    # voxel (i, j, k) = array (k, j, i); RAS = LPS with x and y negated
    for index in [(0, 0, 0), (5, 7, 3)]:
        ras = image.affine.numpy() @ np.array([*index, 1.0])
        lps = volume.index_to_patient((index[2], index[1], index[0]))
        assert np.allclose(ras[:3], [-lps[0], -lps[1], lps[2]])
    assert float(image[10, 20, 5]) == float(volume.array[5, 20, 10])


def test_a_segmentation_bundle_gives_its_labels_in_place(
    series: list[pydicom.Dataset], tmp_path: Path
) -> None:
    """The 1x1x1-convolution bundle thresholds HU through the bundle's own Orientationd,
    Spacingd, Invertd and argmax: the label map must agree with the thresholds on the input."""
    root = segmentation_bundle(tmp_path / "thr", network="threshold")
    bundle = load_model(root, CPU)
    assert isinstance(bundle, ZooBundle) and bundle.labels[2] == "dense tissue"
    analysis = analyze(series, bundle)
    volume = analysis.volume
    assert volume is not None and analysis.kind == "segmentation"
    hu = volume.array
    expected = np.where(hu >= 200, 2, np.where(hu >= -400, 1, 0))
    names = {f.label: f.name for f in analysis.findings}
    got = np.zeros_like(expected)
    for label, name in names.items():
        got[analysis.label_map == label] = {"lung": 1, "dense tissue": 2}[name]
    assert sorted(names.values()) == ["dense tissue", "lung"]
    assert (got == expected).mean() > 0.97
    block = got[2:8, 4:16, 44:60]
    assert (block == 2).mean() > 0.8  # the corner block stays in its corner
    dense = next(f for f in analysis.findings if f.name == "dense tissue")
    assert isinstance(dense, ZooFinding) and dense.kind == "segmentation"

    objects = results(series, analysis)
    assert set(objects) == {"seg", "sr", "key-image"}
    seg = hd.seg.Segmentation.from_dataset(objects["seg"])
    labels = [s.SegmentLabel for s in seg.SegmentSequence]
    assert labels == [f.name for f in analysis.findings]
    for item in seg.SegmentSequence:
        assert item.SegmentedPropertyTypeCodeSequence[0].CodingSchemeDesignator == "99RADPIPE"
        assert item.SegmentedPropertyCategoryCodeSequence[0].CodeValue == "91723000"
    sr = hd.sr.srread(pydicom.filebase.DicomBytesIO(_bytes(objects["sr"])))
    groups = sr.content.get_planar_roi_measurement_groups()
    assert [str(g.tracking_identifier) for g in groups] == labels
    for group, finding in zip(groups, analysis.findings, strict=True):
        [volume_mm3] = group.get_measurements(name=hd.sr.CodedConcept("118565006", "SCT", "Volume"))
        assert abs(volume_mm3.value - finding.volume_mm3) < 1.0
        assert group.get_measurements(name=hd.sr.CodedConcept("81827009", "SCT", "Diameter")) == []


def test_a_unet_segmentation_bundle_runs_unchanged(
    series: list[pydicom.Dataset], tmp_path: Path
) -> None:
    root = segmentation_bundle(tmp_path / "unet")
    bundle = load_model(root, CPU)
    analysis = analyze(series, bundle)
    assert analysis.label_map is not None and analysis.label_map.shape == (24, 64, 64)
    present = {f.name for f in analysis.findings}
    assert present and present <= {"lung", "dense tissue"}
    assert not (root / "eval").exists()  # its SaveImaged was dropped: nothing written


def test_a_detection_bundle_gives_boxes_as_findings_sr_and_seg(
    series: list[pydicom.Dataset], tmp_path: Path
) -> None:
    root = detection_bundle(tmp_path / "det")
    (root / "radpipe.json").write_text(
        json.dumps(
            {"routing": ROUTING, "max_findings": 3, "score_threshold": 0.5, "risk": "max_score"}
        )
    )
    bundle = load_model(root, CPU)
    assert isinstance(bundle, ZooBundle) and bundle.list_input and bundle.box_world == "LPS"
    analysis = analyze(series, bundle)
    volume = analysis.volume
    assert volume is not None and analysis.kind == "detection"
    assert 1 <= len(analysis.findings) <= 3
    assert all(f.probability >= 0.5 for f in analysis.findings)
    assert analysis.risk.score == max(f.probability for f in analysis.findings)
    for finding in analysis.findings:
        assert isinstance(finding, ZooFinding) and finding.box_mm is not None
        assert finding.name.startswith("nodule ")
        mask = analysis.label_map == finding.label
        if mask.sum() > 20:  # the ellipsoid lies around the box centre
            centre = np.array(volume.index_to_patient(tuple(np.mean(np.nonzero(mask), axis=1))))
            assert np.linalg.norm(centre - np.array(finding.center_patient_xyz)) < 5.0
    objects = results(series, analysis)
    assert "seg" in objects and "sr" in objects
    sr = hd.sr.srread(pydicom.filebase.DicomBytesIO(_bytes(objects["sr"])))
    groups = sr.content.get_planar_roi_measurement_groups()
    assert len(groups) == len(analysis.findings)
    [diameter] = groups[0].get_measurements(name=hd.sr.CodedConcept("81827009", "SCT", "Diameter"))
    assert abs(diameter.value - analysis.findings[0].diameter_mm) < 0.01


def test_a_classification_bundle_gives_class_scores_in_the_sr(
    series: list[pydicom.Dataset], tmp_path: Path
) -> None:
    root = classification_bundle(tmp_path / "cls")
    analysis = analyze(series, load_model(root, CPU))
    assert analysis.kind == "classification" and analysis.findings == []
    names = [e.name for e in analysis.evaluations]
    assert names == ["no nodule", "nodule"]
    assert abs(sum(e.probability for e in analysis.evaluations) - 1.0) < 1e-5
    assert sum(e.selected for e in analysis.evaluations) == 1
    assert analysis.to_dict()["classification"][1]["name"] == "nodule"
    objects = results(series, analysis)
    assert set(objects) == {"sr"}
    sr = hd.sr.srread(pydicom.filebase.DicomBytesIO(_bytes(objects["sr"])))
    [group] = sr.content.get_image_measurement_groups()
    values = {m.name.meaning: m.value for m in group.get_measurements()}
    for e in analysis.evaluations:
        assert abs(values[f"{e.name} probability"] - round(e.probability, 4)) < 1e-6
    chosen = next(e for e in analysis.evaluations if e.selected)
    assert group.finding_type.meaning == chosen.name


def test_a_changed_bundle_is_refused_until_re_added(tmp_path: Path) -> None:
    root = classification_bundle(tmp_path / "cls")
    files = write_manifest(root)
    assert set(files) == {"configs/metadata.json", "configs/inference.json", "models/model.pt"}
    assert verify_manifest(root) == []
    state = torch.load(root / "models" / "model.pt", weights_only=True)
    next(iter(state.values())).add_(1.0)
    torch.save(state, root / "models" / "model.pt")
    [problem] = verify_manifest(root) or []
    assert problem.startswith("models/model.pt changed")
    with pytest.raises(BundleError, match=r"radpipe models verify.*radpipe models add"):
        load_model(root, CPU)
    (root / MANIFEST).unlink()
    assert verify_manifest(root) is None  # no manifest recorded: nothing to hold it to


def test_a_bundle_that_downloads_weights_is_refused(tmp_path: Path) -> None:
    root = classification_bundle(tmp_path / "cls")
    config = json.loads((root / "configs" / "inference.json").read_text())
    config["network_def"] = "$torch.hub.load_state_dict_from_url('https://example.invalid/w.pt')"
    (root / "configs" / "inference.json").write_text(json.dumps(config))
    with pytest.raises(BundleError, match="never downloads at run time"):
        load_model(root, CPU)


def test_sidecar_routing_and_its_errors(tmp_path: Path) -> None:
    segmentation_bundle(tmp_path / "a", network="threshold")
    found = declared_bundles(tmp_path)
    [rule] = found["tiny_seg"][1]
    assert rule.modality == frozenset({"CT"}) and rule.min_instances == 3
    root = classification_bundle(tmp_path / "b", routing=False)
    assert declared_bundles(tmp_path)["tiny_cls"][1] == ()  # an admin's override routes it
    (root / "radpipe.json").write_text(json.dumps({"kind": "regression"}))
    with pytest.raises(BundleError, match="kind 'regression'"):
        load_model(root, CPU)
    (root / "radpipe.json").write_text(json.dumps({"colour": "red"}))
    with pytest.raises(BundleError, match="unknown key"):
        load_model(root, CPU)


def _bytes(ds: pydicom.Dataset) -> bytes:
    buffer = pydicom.filebase.DicomBytesIO()
    pydicom.dcmwrite(buffer, ds, enforce_file_format=True)
    return buffer.getvalue()


def test_models_add_list_verify_and_the_refusal(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from radpipe.cli import main

    source = detection_bundle(tmp_path / "src")
    env = {"RADPIPE_MODELS_DIR": str(tmp_path / "models"), "RADPIPE_DATA_DIR": str(tmp_path)}
    runner = CliRunner(env=env)
    added = runner.invoke(main, ["models", "add", str(source)])
    assert added.exit_code == 0, added.output
    target = tmp_path / "models" / "tiny_det"
    assert (target / MANIFEST).is_file() and (target / "scripts" / "tiny_fpn.py").is_file()
    assert "sha256" in added.output and "scripts/detection_inferer.py" in added.output
    again = runner.invoke(main, ["models", "add", str(source)])
    assert again.exit_code != 0 and "--replace" in again.output

    listed = runner.invoke(main, ["models", "list", "--json"])
    assert listed.exit_code == 0, listed.output
    by_name = {b["name"]: b for b in json.loads(listed.output)}
    det = by_name["tiny_det"]
    assert det["kind"] == "detection" and det["format"] == "monai-zoo"
    assert det["integrity"] == "ok" and det["routing"] == ROUTING
    assert len(det["files"]["models/model.pt"]) == 64
    assert by_name["lung_nodule_demo"]["format"] == "radpipe"
    text = runner.invoke(main, ["models", "list"]).output
    assert "tiny_det 0.1.0  kind=detection" in text and "routing: " in text
    # min_instances shown as what it counts: images (a multi-frame instance's frames)
    assert "routing: modality in ['CT'], >= 3 images (frames)" in text

    assert runner.invoke(main, ["models", "verify"]).exit_code == 0
    config = target / "configs" / "inference.json"
    config.write_text(config.read_text().replace("0.22", "0.5"))
    verified = runner.invoke(main, ["models", "verify"])
    assert verified.exit_code == 1
    assert "tiny_det: CHANGED: configs/inference.json changed" in verified.output
    with pytest.raises(BundleError, match="radpipe models verify"):
        load_model(target, CPU)
    assert runner.invoke(main, ["models", "add", str(source), "--replace"]).exit_code == 0
    assert runner.invoke(main, ["models", "verify"]).exit_code == 0


def test_models_add_refuses_a_folder_that_is_no_bundle(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from radpipe.cli import main

    (tmp_path / "empty" / "configs").mkdir(parents=True)
    env = {"RADPIPE_MODELS_DIR": str(tmp_path / "models"), "RADPIPE_DATA_DIR": str(tmp_path)}
    result = CliRunner(env=env).invoke(main, ["models", "add", str(tmp_path / "empty")])
    assert result.exit_code != 0 and "configs/metadata.json is missing" in result.output
    assert not (tmp_path / "models").exists()  # nothing stored


def test_the_demo_bundle_stays_in_radpipe_format() -> None:
    from radpipe.inference.bundle import Bundle, default_bundle_path
    from radpipe.inference.zoo import bundle_info, is_native

    assert is_native(default_bundle_path())
    assert isinstance(load_model(default_bundle_path(), CPU), Bundle)
    info = bundle_info(default_bundle_path())
    assert info["format"] == "radpipe" and info["routing"]  # its own radpipe_routing


def test_a_detection_box_lands_where_it_lies_in_the_patient(tmp_path: Path) -> None:
    """The bundle's own AffineBoxToWorldCoordinated and ConvertBoxModed, then Radpipe's LPS
    mapping: the box around the only voxels >= 300 HU (a block off-centre in x, y and z, bone
    clipped) must come back around them; a flipped axis would mirror it."""
    from ..zoo_bundles import stub_detection_bundle

    phantom = make_phantom(3, nodules=[12.0], shape=(24, 64, 64), spacing=(2.5, 3.0, 3.0))
    np.minimum(phantom.volume, 200, out=phantom.volume)
    phantom.volume[2:8, 4:16, 44:60] = 600.0
    series = phantom_to_datasets(phantom)

    bundle = load_model(stub_detection_bundle(tmp_path / "stub"), CPU)
    analysis = analyze(series, bundle)
    volume = analysis.volume
    assert volume is not None
    [finding] = analysis.findings
    bright = np.nonzero(volume.array >= 300.0)
    lo = np.array(volume.index_to_patient(tuple(float(a.min()) for a in bright)))
    hi = np.array(volume.index_to_patient(tuple(float(a.max()) for a in bright)))
    centre = (lo + hi) / 2.0
    assert np.linalg.norm(np.array(finding.center_patient_xyz) - centre) < 4.0
    assert isinstance(finding, ZooFinding) and finding.box_mm is not None
    extent = np.abs(hi - lo) + np.array([volume.spacing[2], volume.spacing[1], volume.spacing[0]])
    assert np.allclose(finding.box_mm, extent, atol=6.0)
    mask = analysis.label_map == finding.label
    inside = tuple(round(float(a.mean())) for a in bright)
    assert mask[inside]  # the SEG ellipsoid covers the bright region's centre
    assert (bright[0].min(), bright[1].min(), bright[2].min()) == (2, 4, 44)  # only the block


def test_the_worker_fails_the_study_with_the_reason_for_a_changed_bundle(tmp_path: Path) -> None:
    from types import SimpleNamespace

    from radpipe.common.errors import PipelineError
    from radpipe.inference.registry import Entry
    from radpipe.inference.stage import bundle_for

    root = classification_bundle(tmp_path / "cls")
    write_manifest(root)
    (root / "configs" / "inference.json").write_text(
        (root / "configs" / "inference.json").read_text().replace("SimpleInferer", "SimpleInferer ")
    )
    ctx = SimpleNamespace(settings=SimpleNamespace(inference_device="cpu"))
    with pytest.raises(PipelineError, match=r"inference.json changed.*radpipe models verify"):
        bundle_for(ctx, Entry("tiny_cls", root, ()))  # type: ignore[arg-type]


def test_a_bundle_with_a_yaml_config_runs_too(
    series: list[pydicom.Dataset], tmp_path: Path
) -> None:
    import yaml

    root = classification_bundle(tmp_path / "cls")
    config = root / "configs" / "inference.json"
    (root / "configs" / "inference.yaml").write_text(yaml.safe_dump(json.loads(config.read_text())))
    config.unlink()
    analysis = analyze(series, load_model(root, CPU))
    assert [e.name for e in analysis.evaluations] == ["no nodule", "nodule"]
    assert "configs/inference.yaml" in write_manifest(root)
