"""An enhanced (multi-frame) CT of a nodule phantom through ingest, de-identification and the
inference stage with the real demo bundle: SEG, SR, key image and KOS are stored, indexed and
served over DICOMweb, each naming the source's frames by Referenced Frame Number."""

from __future__ import annotations

import highdicom as hd
import pydicom
from fastapi.testclient import TestClient
from pydicom.uid import generate_uid

from radpipe.common.context import Context
from radpipe.common.routing import ROUTING_RULES, set_override
from radpipe.common.studies import now
from radpipe.demo import make_phantom, phantom_to_datasets

from .test_inference_results import bearer, retrieve, run_pipeline

LEGACY_ENHANCED_CT = "1.2.840.10008.5.1.4.1.1.2.2"
ENHANCED_CT = "1.2.840.10008.5.1.4.1.1.2.1"


def enhanced_ct() -> pydicom.Dataset:
    """A 40-frame Legacy Converted Enhanced CT of a phantom with a 12 mm nodule."""
    phantom = make_phantom(103, nodules=[12.0], shape=(40, 192, 192), spacing=(2.0, 1.5, 1.5))
    slices = phantom_to_datasets(phantom)
    enhanced = hd.legacy.LegacyConvertedEnhancedCTImage(
        legacy_datasets=slices,
        series_instance_uid=generate_uid(),
        series_number=1,
        sop_instance_uid=generate_uid(),
        instance_number=1,
    )
    return pydicom.dcmread(pydicom.filebase.DicomBytesIO(_bytes(enhanced)))


def _bytes(ds: pydicom.Dataset) -> bytes:
    buffer = pydicom.filebase.DicomBytesIO()
    pydicom.dcmwrite(buffer, ds, enforce_file_format=True)
    return buffer.getvalue()


def test_a_multi_frame_study_gets_seg_sr_key_image_and_kos_naming_its_frames(
    ctx: Context, client: TestClient, tokens: dict[str, str]
) -> None:
    # The demo bundle's own rules name the CT and Enhanced CT classes only; an admin routes the
    # one Legacy Converted Enhanced CT instance to it.
    set_override(
        ctx.documents,
        "lung_nodule_demo",
        "add",
        [{"modality": ["CT"], "sop_class": [LEGACY_ENHANCED_CT], "min_instances": 1}],
        "multi-frame CT",
        "admin",
        now(),
    )
    study_id = run_pipeline(ctx, client, tokens["modality"], [enhanced_ct()])
    study = ctx.studies.get(study_id)
    assert study["state"] == "analyzed"
    analysis = study["analysis"]
    assert analysis["findings"], "the demo bundle finds the 12 mm nodule"
    assert all("#" in reference for reference in analysis["input_sop_uids"])
    kinds = sorted(o["kind"] for o in analysis["outputs"])
    assert kinds == ["key-image", "kos", "png", "seg", "sr"]

    token = tokens["radiologist"]
    uid = study["deid"]["study_uid"]
    series = client.get(f"/dicom-web/studies/{uid}/series", headers=bearer(token)).json()
    by_modality = {s["00080060"]["Value"][0]: s["0020000E"]["Value"][0] for s in series}
    assert sorted(by_modality) == ["CT", "KO", "OT", "SEG", "SR"]

    def only_instance(modality: str) -> pydicom.Dataset:
        base = f"/dicom-web/studies/{uid}/series/{by_modality[modality]}"
        [item] = client.get(f"{base}/instances", headers=bearer(token)).json()
        return retrieve(client, token, f"{base}/instances/{item['00080018']['Value'][0]}")

    source = only_instance("CT")
    frames = int(source.NumberOfFrames)
    centre = analysis["findings"][0]["center_sop_instance_uid"]
    centre_frame = int(centre.split("#")[1])

    seg = only_instance("SEG")
    referenced = set()
    for item in seg.PerFrameFunctionalGroupsSequence:
        (src,) = item.DerivationImageSequence[0].SourceImageSequence
        assert src.ReferencedSOPInstanceUID == source.SOPInstanceUID
        referenced.add(int(src.ReferencedFrameNumber))
    assert centre_frame in referenced and referenced <= set(range(1, frames + 1))

    sr = only_instance("SR")
    regions = [
        item.ContentSequence[0].ReferencedSOPSequence[0]
        for item in _walk(sr.ContentSequence)
        if item.get("ValueType") == "SCOORD"
    ]
    assert [(r.ReferencedSOPInstanceUID, r.ReferencedFrameNumber) for r in regions] == [
        (source.SOPInstanceUID, centre_frame)
    ]

    (sc_reference,) = only_instance("OT").SourceImageSequence
    assert sc_reference.ReferencedFrameNumber == centre_frame

    kos = only_instance("KO")
    images = [i.ReferencedSOPSequence[0] for i in kos.ContentSequence if i.ValueType == "IMAGE"]
    assert [(i.ReferencedSOPInstanceUID, i.ReferencedFrameNumber) for i in images] == [
        (source.SOPInstanceUID, centre_frame)
    ]


def test_one_enhanced_ct_instance_is_routed_by_its_frames_without_an_override(
    ctx: Context, client: TestClient, tokens: dict[str, str]
) -> None:
    # The demo bundle asks for >= 3 images of the CT or Enhanced CT class: one instance of 40
    # frames is 40 images (routing counts NumberOfFrames), so no admin override is needed.
    source = enhanced_ct()
    source.SOPClassUID = source.file_meta.MediaStorageSOPClassUID = ENHANCED_CT
    study_id = run_pipeline(ctx, client, tokens["modality"], [source])
    assert ctx.documents.collection(ROUTING_RULES).find_one({}) is None
    study = ctx.studies.get(study_id)
    [series] = study["deid"]["series"]
    assert len(series["keys"]) == 1 and series["frames"] == int(source.NumberOfFrames) == 40
    assert study["state"] == "analyzed", study.get("error")
    model = study["analysis"]["model"]
    assert model["name"] == "lung_nodule_demo"
    assert ">= 3 images (frames)" in model["rule"] and "[admin]" not in model["rule"]
    assert all("#" in reference for reference in study["analysis"]["input_sop_uids"])


def _walk(items: pydicom.Sequence) -> list[pydicom.Dataset]:
    found = []
    for item in items:
        found.append(item)
        found.extend(_walk(item.get("ContentSequence", [])))
    return found
