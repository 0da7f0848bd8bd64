"""The inference stage's own results (DICOM SEG, TID 1500 SR, key images) exported to Orthanc,
a real PACS, by STOW-RS and by C-STORE: re-identified, with the original study dates and the
original UIDs of what they reference, and their own creation dates left as stamped."""

from __future__ import annotations

import io

import httpx
import pytest
from fastapi.testclient import TestClient
from pydantic import AnyHttpUrl

from radpipe.common.context import Context
from radpipe.common.dicomio import read_part10
from radpipe.demo import make_phantom, phantom_to_datasets
from radpipe.ingest.export import export_study

from ..dicom import PHI
from .test_inference_results import run_pipeline
from .test_orthanc import Orthanc, orthanc  # noqa: F401 - the Orthanc fixture


@pytest.mark.parametrize("door", ["stow", "dimse"])
def test_seg_sr_and_key_images_reach_the_pacs_reidentified(
    orthanc: Orthanc,  # noqa: F811 - the fixture imported above
    ctx: Context,
    client: TestClient,
    tokens: dict[str, str],
    door: str,
) -> None:
    phantom = make_phantom(101, nodules=[12.0], shape=(60, 256, 256), spacing=(2.0, 1.2, 1.2))
    sources = phantom_to_datasets(
        phantom, patient_name=PHI["patient_name"], patient_id=PHI["patient_id"]
    )
    study_id = run_pipeline(ctx, client, tokens["modality"], sources)
    outputs = ctx.studies.get(study_id)["analysis"]["outputs"]
    dicom_outputs = [o for o in outputs if o["kind"] != "png"]
    assert {o["kind"] for o in dicom_outputs} == {"seg", "sr", "key-image"}
    if door == "stow":
        ctx.settings.export_stow_url = AnyHttpUrl(f"{orthanc.url}/dicom-web")
    else:
        ctx.settings.export_dimse = f"ORTHANC@127.0.0.1:{orthanc.dicom_port}"
    export_study(ctx, study_id)
    instances = httpx.get(f"{orthanc.url}/instances?expand").json()
    assert len(instances) == len(dicom_outputs)
    source = sources[0]
    # What Radpipe stamped on its results (their own creation "now"), read back from the
    # results store: compared with that, not with the clock, nothing fails around midnight.
    stamped = {
        str(ds.SOPInstanceUID): str(ds.get("ContentDate", ""))
        for ds in (
            read_part10(io.BytesIO(ctx.objects.get(ctx.buckets["results"], o["key"])))
            for o in dicom_outputs
        )
    }
    for instance in instances:
        tags = httpx.get(f"{orthanc.url}/instances/{instance['ID']}/tags?short").json()
        assert tags["0010,0020"] == PHI["patient_id"]  # Patient ID
        assert tags["0020,000d"] == source.StudyInstanceUID
        assert tags["0008,0020"] == source.StudyDate  # restored from the shifted timeline
        assert tags["0008,0030"] == source.StudyTime
        assert tags["0012,0062"] == "NO"  # Patient Identity Removed
        if "0008,0023" in tags:  # Content Date: stamped by Radpipe, not moved
            assert tags["0008,0023"] == stamped[tags["0008,0018"]]
        if tags["0008,0016"] == "1.2.840.10008.5.1.4.1.1.66.4":  # the SEG
            assert tags["0020,0052"] == source.FrameOfReferenceUID
            referenced = tags["0008,1115"][0]  # Referenced Series Sequence
            assert referenced["0020,000e"] == source.SeriesInstanceUID
            originals = {str(ds.SOPInstanceUID) for ds in sources}
            for item in referenced["0008,114a"]:  # Referenced Instance Sequence
                assert item["0008,1155"] in originals
    study = ctx.studies.get(study_id)
    assert sorted(study["exported"]) == sorted(o["key"] for o in dicom_outputs)
