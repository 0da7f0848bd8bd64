"""Result export to a PACS: original dates restored at any depth, STOW-RS partial success
(202) retried instance by instance, and C-STORE runs of more than 128 objects.

The destinations are real network peers on loopback: a STOW-RS origin server that answers
from a script, and a pynetdicom Storage SCP.
"""

from __future__ import annotations

import copy
import io
import json
import threading
from collections.abc import Callable, Iterator
from datetime import date, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydantic import AnyHttpUrl
from pydicom.dataset import FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE, AllStoragePresentationContexts, evt

from radpipe.common.context import Context
from radpipe.common.dateshift import shift
from radpipe.common.dicomio import read_part10, write_part10
from radpipe.common.errors import TransientError
from radpipe.common.identity import PatientKeys
from radpipe.deid.profile import BUILT_IN
from radpipe.deid.service import deidentify_study
from radpipe.deid.stability import check_stable
from radpipe.ingest.export import export_study, reidentify

from ..dicom import PHI, ct_series, read, to_bytes
from ..servers import free_port
from ..unit.test_stages import after_quiet_time, ingest

SR = "1.2.840.10008.5.1.4.1.1.88.33"
#: The export day, fixed: nothing here depends on the clock (or fails around midnight).
TODAY = date(2026, 1, 20)


def original_result(sop_class: str = SR) -> pydicom.Dataset:
    """A result object as the PACS should receive it: real dates, at every depth."""
    ds = pydicom.Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, generate_uid()
    ds.SeriesInstanceUID, ds.Modality = generate_uid(), "SR"
    ds.StudyDate, ds.StudyTime = "20240102", "101500"
    ds.ContentDate, ds.ContentTime = "20240103", "083000.250"
    ds.AcquisitionDateTime = "20240102101500.123456+0100"
    ds.StartAcquisitionDateTime, ds.EndAcquisitionDateTime = "202401", "2024"  # short DT
    ds.CalibrationDate = ["20231231", "20240229"]  # multi-valued, across a leap day
    request = pydicom.Dataset()
    request.ScheduledProcedureStepStartDate = "20240101"
    ds.RequestAttributesSequence = Sequence([request])
    leaf = pydicom.Dataset()
    leaf.ValueType, leaf.Date, leaf.DateTime, leaf.Time = "DATE", "20230815", "20230815", "120000"
    branch = pydicom.Dataset()
    branch.ValueType, branch.ContentSequence = "CONTAINER", Sequence([leaf])
    ds.ContentSequence = Sequence([branch])
    ds.LongitudinalTemporalInformationModified = "MODIFIED"
    return ds


def in_shifted_timeline(ds: pydicom.Dataset, offset: timedelta) -> pydicom.Dataset:
    """``ds`` with every DA and DT moved by the patient's keyed offset, as de-identified."""
    shifted = copy.deepcopy(ds)

    def walk(item: pydicom.Dataset) -> None:
        for element in item:
            if element.VR == "SQ":
                for child in element.value:
                    walk(child)
            elif element.VR in ("DA", "DT"):
                values = element.value if element.VM > 1 else [element.value]
                moved = [shift(element.VR, str(v), offset) for v in values]
                element.value = moved if element.VM > 1 else moved[0]

    walk(shifted)
    shifted.StudyInstanceUID, shifted.PatientID = generate_uid(), "RP-pseudonym"
    return shifted


def dates(ds: pydicom.Dataset) -> list[tuple[str, str, Any]]:
    return [(e.keyword, e.VR, str(e.value)) for e in ds.iterall() if e.VR in ("DA", "DT", "TM")]


@pytest.fixture
def study(ctx: Context) -> tuple[str, timedelta]:
    """A received study whose vault entry holds the original identity; and its date offset."""
    series = ct_series(seed=61)[:1]
    study_id = ingest(ctx, series)
    ctx.vault.put(
        study_id,
        {
            "patient_id": PHI["patient_id"],
            "patient_name": PHI["patient_name"],
            "accession_number": PHI["accession"],
            "study_instance_uid": str(read(series[0]).StudyInstanceUID),
            "uids": {},
        },
    )
    return study_id, PatientKeys.derive(ctx.settings.secret, PHI["patient_id"]).date_offset


def add_results(ctx: Context, study_id: str, results: list[pydicom.Dataset]) -> list[str]:
    keys = []
    for number, ds in enumerate(results):
        key = f"{study_id}/result-{number:03d}.dcm"
        ctx.objects.put(ctx.buckets["results"], key, write_part10(ds))
        keys.append(key)
    return keys


def test_reidentify_restores_every_date_and_leaves_times(ctx: Context) -> None:
    original = original_result()
    offset = PatientKeys.derive(ctx.settings.secret, PHI["patient_id"]).date_offset
    assert offset < timedelta(0)
    shifted = in_shifted_timeline(original, offset)
    assert dates(shifted) != dates(original)
    identity = {"patient_id": PHI["patient_id"], "study_instance_uid": "1.2.3"}  # old entry
    restored = reidentify(shifted, identity, ctx.settings.secret, TODAY)
    assert dates(restored) == dates(original)  # short DT values ("202401", "2024") too
    assert restored.PatientID == PHI["patient_id"] and restored.StudyInstanceUID == "1.2.3"
    assert restored.PatientIdentityRemoved == "NO"
    assert restored.LongitudinalTemporalInformationModified == "UNMODIFIED"


def test_reidentify_prefers_the_offset_the_vault_recorded_and_maps_referenced_uids(
    ctx: Context,
) -> None:
    original = original_result()
    original.FrameOfReferenceUID = "1.2.3.100"
    reference = pydicom.Dataset()
    reference.ReferencedSOPClassUID, reference.ReferencedSOPInstanceUID = SR, "1.2.3.101"
    series = pydicom.Dataset()
    series.SeriesInstanceUID = "1.2.3.102"
    series.ReferencedInstanceSequence = Sequence([reference])
    original.ContentSequence[0].ReferencedSeriesSequence = Sequence([series])  # two deep
    shifted = in_shifted_timeline(original, timedelta(days=-400))
    shifted.FrameOfReferenceUID = "2.25.100"
    nested = shifted.ContentSequence[0].ReferencedSeriesSequence[0]
    nested.SeriesInstanceUID = "2.25.102"
    nested.ReferencedInstanceSequence[0].ReferencedSOPInstanceUID = "2.25.101"
    identity = {
        "patient_id": PHI["patient_id"],
        "study_instance_uid": "1.2.3",
        "date_offset_days": -400,  # what was applied, whatever the key derives today
        "uid_map": {
            "2.25.100": "1.2.3.100",
            "2.25.101": "1.2.3.101",
            "2.25.102": "1.2.3.102",
            str(shifted.SOPInstanceUID): "1.2.3.999",  # never the object's own UID
        },
    }
    restored = reidentify(shifted, identity, ctx.settings.secret, TODAY)
    assert dates(restored) == dates(original)
    assert restored.FrameOfReferenceUID == "1.2.3.100"
    again = restored.ContentSequence[0].ReferencedSeriesSequence[0]
    assert again.SeriesInstanceUID == "1.2.3.102"
    assert again.ReferencedInstanceSequence[0].ReferencedSOPInstanceUID == "1.2.3.101"
    assert restored.SOPInstanceUID == original.SOPInstanceUID


def test_dates_radpipe_stamped_on_a_result_are_not_moved_into_the_future(ctx: Context) -> None:
    # Result writers copy the study's (shifted) dates but stamp their own creation "now".
    original = original_result()
    shifted = in_shifted_timeline(original, timedelta(days=-365))
    today = TODAY.strftime("%Y%m%d")
    shifted.InstanceCreationDate = shifted.ContentDate = today
    equipment = pydicom.Dataset()
    equipment.ContributionDateTime = today + "093000"
    shifted.ContributingEquipmentSequence = Sequence([equipment])
    identity = {"study_instance_uid": "1.2.3", "date_offset_days": -365}
    restored = reidentify(shifted, identity, ctx.settings.secret, TODAY)
    assert restored.StudyDate == original.StudyDate
    assert restored.ContentSequence[0].ContentSequence[0].Date == "20230815"
    assert restored.InstanceCreationDate == restored.ContentDate == today
    assert restored.ContributingEquipmentSequence[0].ContributionDateTime == today + "093000"


class _Stow(BaseHTTPRequestHandler):
    """A STOW-RS origin server whose answers come from ``server.script``, one per request."""

    server: Any

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        boundary = self.headers["Content-Type"].split("boundary=")[1].strip('"').encode()
        uids = []
        for chunk in body.split(b"--" + boundary)[1:-1]:
            data = chunk.split(b"\r\n\r\n", 1)[1][:-2]
            ds = pydicom.dcmread(io.BytesIO(data))
            uids.append(str(ds.SOPInstanceUID))
            self.server.received.append(ds)
        status, answer = self.server.script.pop(0)(uids)
        payload = json.dumps(answer).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/dicom+json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args: object) -> None:
        return None


@pytest.fixture
def stow_server() -> Iterator[ThreadingHTTPServer]:
    server = ThreadingHTTPServer(("127.0.0.1", free_port()), _Stow)
    server.script, server.received = [], []  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()


def _items(uids: list[str], reason: int | None = None) -> dict[str, Any]:
    items = []
    for uid in uids:
        item: dict[str, Any] = {
            "00081150": {"vr": "UI", "Value": [SR]},
            "00081155": {"vr": "UI", "Value": [uid]},
        }
        if reason is not None:
            item["00081197"] = {"vr": "US", "Value": [reason]}
        items.append(item)
    return {"vr": "SQ", "Value": items}


def test_stow_202_counts_the_stored_and_resends_only_the_failed(
    ctx: Context, study: tuple[str, timedelta], stow_server: ThreadingHTTPServer
) -> None:
    study_id, offset = study
    originals = [original_result() for _ in range(3)]
    keys = add_results(ctx, study_id, [in_shifted_timeline(ds, offset) for ds in originals])
    first_uids = [str(ds.SOPInstanceUID) for ds in originals]

    def partial(uids: list[str]) -> tuple[int, dict[str, Any]]:
        assert uids == first_uids
        return 202, {"00081199": _items(uids[:2]), "00081198": _items(uids[2:], 0xA700)}

    def rest(uids: list[str]) -> tuple[int, dict[str, Any]]:
        return 200, {"00081199": _items(uids)}

    stow_server.script += [partial, rest]  # type: ignore[attr-defined]
    ctx.settings.export_stow_url = AnyHttpUrl(f"http://127.0.0.1:{stow_server.server_port}")
    with pytest.raises(TransientError, match=r"1 of 3 .*HTTP 202: 1 of 3 not stored.*A700"):
        export_study(ctx, study_id, TODAY)
    assert sorted(ctx.studies.get(study_id)["exported"]) == keys[:2]
    export_study(ctx, study_id, TODAY)  # the retry sends the failed instance only
    received = stow_server.received  # type: ignore[attr-defined]
    assert [str(ds.SOPInstanceUID) for ds in received] == first_uids + first_uids[2:]
    export_study(ctx, study_id, TODAY)  # nothing left: no request at all
    assert len(received) == 4 and stow_server.script == []  # type: ignore[attr-defined]
    study_doc = ctx.studies.get(study_id)
    assert sorted(study_doc["exported"]) == keys
    exported = [e["detail"] for e in study_doc["events"] if e["type"] == "exported"]
    assert exported == [{"objects": 2}, {"objects": 1}]
    # The PACS got the original dates back, not the shifted ones.
    for sent, original in zip(received, originals + originals[2:], strict=True):
        assert dates(sent) == dates(original)
        assert sent.PatientID == PHI["patient_id"]


def test_stow_202_without_a_readable_answer_resends_everything(
    ctx: Context, study: tuple[str, timedelta], stow_server: ThreadingHTTPServer
) -> None:
    study_id, offset = study
    add_results(ctx, study_id, [in_shifted_timeline(original_result(), offset)])
    stow_server.script += [lambda uids: (202, [])]  # type: ignore[attr-defined]
    ctx.settings.export_stow_url = AnyHttpUrl(f"http://127.0.0.1:{stow_server.server_port}")
    with pytest.raises(TransientError, match="without a readable Store Instances Response"):
        export_study(ctx, study_id, TODAY)
    assert ctx.studies.get(study_id).get("exported") is None


class _StorageSCP:
    """A pynetdicom Storage SCP that accepts the given SOP classes and records what it got."""

    def __init__(self, sop_classes: list[str]) -> None:
        self.port = free_port()
        self.associations = 0
        self.received: dict[str, pydicom.Dataset] = {}
        ae = AE(ae_title="PACS")
        for sop_class in sop_classes:
            ae.add_supported_context(sop_class, ExplicitVRLittleEndian)
        handlers: list[tuple[Any, Callable[..., Any]]] = [
            (evt.EVT_C_STORE, self._store),
            (evt.EVT_ACCEPTED, self._accepted),
        ]
        self.server = ae.start_server(("127.0.0.1", self.port), block=False, evt_handlers=handlers)

    def _accepted(self, event: Any) -> None:
        self.associations += 1

    def _store(self, event: Any) -> int:
        ds = event.dataset
        self.received[str(ds.SOPInstanceUID)] = ds
        return 0x0000


def test_c_store_export_above_128_objects_and_contexts(
    ctx: Context, study: tuple[str, timedelta]
) -> None:
    study_id, offset = study
    # 131 distinct SOP classes (more than one association can propose) and 200 objects.
    classes = [
        str(c.abstract_syntax) for c in AllStoragePresentationContexts if c.abstract_syntax != SR
    ]
    classes = classes[:130]
    originals = [original_result(c) for c in classes] + [original_result() for _ in range(70)]
    keys = add_results(ctx, study_id, [in_shifted_timeline(ds, offset) for ds in originals])
    ctx.objects.put(ctx.buckets["results"], f"{study_id}/v1/overlay.png", b"\x89PNG not DICOM")
    scp = _StorageSCP([*classes, SR])
    try:
        ctx.settings.export_dimse = f"PACS@127.0.0.1:{scp.port}"
        export_study(ctx, study_id, TODAY)
        export_study(ctx, study_id, TODAY)  # a retry sends nothing twice
    finally:
        scp.server.shutdown()
    assert set(scp.received) == {str(ds.SOPInstanceUID) for ds in originals}
    assert scp.associations == 2  # 131 presentation contexts: 128 + 3
    for original in originals[:3] + originals[-3:]:
        got = scp.received[str(original.SOPInstanceUID)]
        assert dates(got) == dates(original)
    study_doc = ctx.studies.get(study_id)
    assert sorted(study_doc["exported"]) == keys
    assert [e["detail"] for e in study_doc["events"] if e["type"] == "exported"] == [
        {"objects": 200}
    ]


def test_c_store_objects_the_peer_refuses_stay_pending(
    ctx: Context, study: tuple[str, timedelta]
) -> None:
    study_id, offset = study
    supported, unsupported = original_result(), original_result("1.2.826.0.1.3680043.8.498.7.999")
    keys = add_results(
        ctx, study_id, [in_shifted_timeline(ds, offset) for ds in (supported, unsupported)]
    )
    scp = _StorageSCP([SR])  # the peer rejects the second object's presentation context
    try:
        ctx.settings.export_dimse = f"PACS@127.0.0.1:{scp.port}"
        with pytest.raises(TransientError, match="1 of 2 result objects not exported"):
            export_study(ctx, study_id, TODAY)
    finally:
        scp.server.shutdown()
    assert list(scp.received) == [str(supported.SOPInstanceUID)]
    assert ctx.studies.get(study_id)["exported"] == keys[:1]


#: What a PACS matches a returned result on (issue 9 item 5), besides the referenced UIDs.
MATCHED = (
    "PatientID",
    "IssuerOfPatientID",
    "PatientName",
    "PatientBirthDate",
    "PatientSex",
    "AccessionNumber",
    "StudyID",
    "StudyInstanceUID",
    "StudyDate",
)


def _result_from(deid: pydicom.Dataset) -> pydicom.Dataset:
    """A result object as inference writes one: the de-identified patient and study
    attributes copied, the source series and instance referenced, its own new UIDs."""
    result = original_result()
    for keyword in (*MATCHED, "StudyTime", "AcquisitionDateTime", "FrameOfReferenceUID"):
        if keyword in deid:
            result[keyword] = copy.deepcopy(deid[keyword])
    reference = pydicom.Dataset()
    reference.ReferencedSOPClassUID = deid.SOPClassUID
    reference.ReferencedSOPInstanceUID = deid.SOPInstanceUID
    series = pydicom.Dataset()
    series.SeriesInstanceUID = deid.SeriesInstanceUID
    series.ReferencedInstanceSequence = Sequence([reference])
    result.ReferencedSeriesSequence = Sequence([series])
    return result


@pytest.mark.parametrize("profile", sorted(BUILT_IN))
def test_round_trip_gives_the_pacs_back_what_it_matches_on(
    ctx: Context, tmp_path: Path, profile: str
) -> None:
    """original -> de-identified -> result -> re-identified equals the original on the
    attributes a PACS matches on, for each built-in profile; the vault's offset is the one
    applied (none where the profile keeps or removes dates)."""
    options = sorted(BUILT_IN[profile])
    (tmp_path / "profiles.toml").write_text(f"[default]\noptions = {json.dumps(options)}\n")
    ctx.settings.deid_profile = tmp_path / "profiles.toml"
    sources = [read(data) for data in ct_series(seed=62)[:2]]
    for ds in sources:
        ds.IssuerOfPatientID, ds.StudyID = "SAINT RADPIPE MRN", "S7731"
        ds.AcquisitionDateTime = "202401"  # a short DT, shifted and shifted back at its precision
    study_id = ingest(ctx, [to_bytes(ds) for ds in sources])
    check_stable(ctx, study_id, clock=after_quiet_time(ctx))
    deidentify_study(ctx, study_id)
    [series] = ctx.studies.get(study_id)["deid"]["series"]
    key = series["keys"][0]
    deid = read_part10(io.BytesIO(ctx.objects.get(ctx.buckets["deid"], key)))
    identity = ctx.vault.get(study_id)
    source_sop = identity["uid_map"][str(deid.SOPInstanceUID)]
    original = next(ds for ds in sources if ds.SOPInstanceUID == source_sop)
    keys = PatientKeys.derive(ctx.date_key, PHI["patient_id"], "SAINT RADPIPE MRN")
    applied = keys.date_offset.days if profile == "default" else 0
    assert identity["date_offset_days"] == applied
    if profile == "full_dates":
        assert deid.StudyDate == original.StudyDate  # kept, so nothing may move it back
    if profile == "default":
        assert deid.AcquisitionDateTime not in ("", "202401") and len(deid.AcquisitionDateTime) == 6
    assert deid.PatientID != original.PatientID

    restored = reidentify(_result_from(deid), identity, ctx.settings.secret, TODAY)
    assert {k: str(restored.get(k, "")) for k in MATCHED} == {
        k: str(original.get(k, "")) for k in MATCHED
    }
    [referenced] = restored.ReferencedSeriesSequence
    assert referenced.SeriesInstanceUID == original.SeriesInstanceUID
    instance = referenced.ReferencedInstanceSequence[0]
    assert instance.ReferencedSOPInstanceUID == original.SOPInstanceUID
    assert restored.FrameOfReferenceUID == original.FrameOfReferenceUID
    if profile != "basic":  # Basic removes it (a dummy where Type 1): nothing to give back
        assert restored.AcquisitionDateTime == "202401"


def test_an_old_vault_entry_is_restored_with_the_offset_of_its_day(ctx: Context) -> None:
    """Entries written before the offset was recorded were keyed on the Patient ID alone."""
    legacy = PatientKeys.derive(ctx.settings.secret, PHI["patient_id"]).date_offset
    original = original_result()
    shifted = in_shifted_timeline(original, legacy)
    identity = {"patient_id": PHI["patient_id"], "study_instance_uid": "1.2.3", "uids": {}}
    restored = reidentify(shifted, identity, ctx.settings.secret, TODAY)
    assert dates(restored) == dates(original)
