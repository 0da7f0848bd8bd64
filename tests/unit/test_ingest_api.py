from __future__ import annotations

from fastapi.testclient import TestClient

from radpipe.common.context import Context
from radpipe.common.identity import study_id_for
from radpipe.common.mime import encode_multipart

from ..dicom import ct_series, read
from ..dicomjson import every_dicom_json_response_is_checked  # noqa: F401


def stow(client: TestClient, token: str, payloads: list[bytes], path: str = "/dicom-web/studies"):
    body, content_type = encode_multipart(payloads)
    return client.post(
        path,
        content=body,
        headers={"Content-Type": content_type, "Authorization": f"Bearer {token}"},
    )


def raw_objects(ctx: Context) -> list[str]:
    return list(ctx.objects.list(ctx.buckets["raw"]))


def test_store_a_series_answers_200_with_retrieve_urls(
    client: TestClient, ctx: Context, tokens
) -> None:
    series = ct_series()
    response = stow(client, tokens["modality"], series)
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/dicom+json"
    body = response.json()
    stored = body["00081199"]["Value"]
    assert len(stored) == len(series) and "00081198" not in body
    first = read(series[0])
    assert stored[0]["00081155"]["Value"] == [first.SOPInstanceUID]
    url = stored[0]["00081190"]["Value"][0]
    assert url.startswith(str(ctx.settings.public_url).rstrip("/") + "/dicom-web/studies/")
    # Raw bytes kept exactly as received, and the stability check armed once for the study.
    assert len(raw_objects(ctx)) == len(series)
    stored_bytes = {ctx.objects.get(ctx.buckets["raw"], key) for key in raw_objects(ctx)}
    assert stored_bytes == set(series)
    study_id = study_id_for(ctx.pseudonym_key, str(first.StudyInstanceUID))
    assert ctx.tasks.sent == [("stable", study_id, ctx.settings.study_stable_seconds)]  # type: ignore[attr-defined]
    study = ctx.studies.get(study_id)
    assert study["state"] == "received" and study["instance_count"] == len(series)
    assert [e["type"] for e in study["events"]] == ["received"]


def test_restoring_is_idempotent(client: TestClient, ctx: Context, tokens) -> None:
    series = ct_series()[:2]
    assert stow(client, tokens["modality"], series).status_code == 200
    again = stow(client, tokens["modality"], series)
    assert again.status_code == 200
    assert len(again.json()["00081199"]["Value"]) == 2
    study_id = study_id_for(ctx.pseudonym_key, str(read(series[0]).StudyInstanceUID))
    assert ctx.studies.get(study_id)["instance_count"] == 2
    assert len(raw_objects(ctx)) == 2


def test_not_dicom_and_missing_uid_fail_and_nothing_is_stored(client, ctx, tokens) -> None:
    no_uid = read(ct_series()[0])
    del no_uid.SOPInstanceUID
    from ..dicom import to_bytes

    response = stow(client, tokens["modality"], [b"this is not DICOM", to_bytes(no_uid)])
    assert response.status_code == 409
    failed = response.json()["00081198"]["Value"]
    assert [item["00081197"]["Value"][0] for item in failed] == [0xC000, 0xA900]
    assert "not a DICOM Part 10 stream" in response.headers["warning"]
    assert "SOPInstanceUID is missing" in response.headers["warning"]
    assert raw_objects(ctx) == []
    assert ctx.studies.studies.count_documents({}) == 0


def test_only_unparseable_parts_answer_400(client, ctx, tokens) -> None:
    response = stow(client, tokens["modality"], [b"garbage", b"more garbage"])
    assert response.status_code == 400
    assert raw_objects(ctx) == []


def test_mixed_batch_answers_202(client, ctx, tokens) -> None:
    response = stow(client, tokens["modality"], [ct_series()[0], b"garbage"])
    assert response.status_code == 202
    body = response.json()
    assert len(body["00081199"]["Value"]) == 1 and len(body["00081198"]["Value"]) == 1
    assert len(raw_objects(ctx)) == 1


def test_instance_from_another_study_is_failed_others_stored(client, ctx, tokens) -> None:
    mine, other = ct_series()[:1], ct_series(seed=8)[:1]
    study_uid = read(mine[0]).StudyInstanceUID
    response = stow(client, tokens["modality"], mine + other, f"/dicom-web/studies/{study_uid}")
    assert response.status_code == 202
    failed = response.json()["00081198"]["Value"]
    assert failed[0]["00081155"]["Value"] == [read(other[0]).SOPInstanceUID]
    assert failed[0]["00081197"]["Value"] == [0xA900]
    assert len(raw_objects(ctx)) == 1


def test_wrong_media_type_and_missing_boundary(client, ctx, tokens) -> None:
    auth = {"Authorization": f"Bearer {tokens['modality']}"}
    response = client.post(
        "/dicom-web/studies", content=b"{}", headers={**auth, "Content-Type": "application/json"}
    )
    assert response.status_code == 415
    response = client.post(
        "/dicom-web/studies",
        content=b"x",
        headers={**auth, "Content-Type": 'multipart/related; type="application/dicom"'},
    )
    assert response.status_code == 400 and "boundary" in response.json()["detail"]
    assert raw_objects(ctx) == []


def test_oversize_request_is_413_and_nothing_stored(ctx, tokens) -> None:
    from radpipe.app import build_app

    ctx.settings.max_request_bytes = 1000
    with TestClient(build_app(ctx, ["ingest"])) as small:
        response = stow(small, tokens["modality"], ct_series()[:1])
    assert response.status_code == 413
    assert "RADPIPE_MAX_REQUEST_BYTES" in response.json()["detail"]
    assert raw_objects(ctx) == []


def test_store_needs_a_modality_token(client, ctx, tokens) -> None:
    series = ct_series()[:1]
    body, content_type = encode_multipart(series)
    anonymous = client.post(
        "/dicom-web/studies", content=body, headers={"Content-Type": content_type}
    )
    assert anonymous.status_code == 401
    assert "radpipe token create" in anonymous.json()["detail"]
    assert stow(client, tokens["radiologist"], series).status_code == 403
    assert stow(client, "rp_not-a-real-token", series).status_code == 401
    assert raw_objects(ctx) == []


def test_streamed_request_over_the_instance_limit_is_413_and_nothing_half_stored(
    ctx: Context, tokens
) -> None:
    from radpipe.app import build_app

    series = ct_series()
    small, large = series[0], series[1] + b"\x00" * 4096
    ctx.settings.max_instance_bytes = len(small) + 100
    body, content_type = encode_multipart([small, large])

    def chunks():  # no Content-Length: sent chunked, like dicomweb-client above 1 MB
        for start in range(0, len(body), 8192):
            yield body[start : start + 8192]

    with TestClient(build_app(ctx, ["ingest"])) as app:
        response = app.post(
            "/dicom-web/studies",
            content=chunks(),
            headers={"Content-Type": content_type, "Authorization": f"Bearer {tokens['modality']}"},
        )
    assert response.status_code == 413
    assert "RADPIPE_MAX_INSTANCE_BYTES" in response.json()["detail"]
    assert raw_objects(ctx) == []  # the first, complete part was removed again
    assert ctx.studies.studies.count_documents({}) == 0
    assert ctx.tasks.sent == []  # type: ignore[attr-defined]


def test_truncated_body_stores_complete_parts_and_fails_the_cut_one(
    client: TestClient, ctx: Context, tokens
) -> None:
    series = ct_series()[:2]
    body, content_type = encode_multipart(series)
    cut = body[: len(body) - len(series[1]) // 2]
    response = client.post(
        "/dicom-web/studies",
        content=cut,
        headers={"Content-Type": content_type, "Authorization": f"Bearer {tokens['modality']}"},
    )
    assert response.status_code == 202
    answer = response.json()
    assert len(answer["00081199"]["Value"]) == 1
    assert answer["00081198"]["Value"][0]["00081197"]["Value"] == [0xC000]
    assert "cut off" in response.headers["warning"]
    assert len(raw_objects(ctx)) == 1


def _post_parts(client: TestClient, token: str, parts: list[tuple[str, bytes]]):
    boundary = "radpipe-test-boundary"
    body = b"".join(
        f"--{boundary}\r\nContent-Type: {media}\r\n\r\n".encode() + data + b"\r\n"
        for media, data in parts
    )
    return client.post(
        "/dicom-web/studies",
        content=body + f"--{boundary}--\r\n".encode(),
        headers={
            "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
            "Authorization": f"Bearer {token}",
        },
    )


def test_non_storage_sop_class_fails_0122_and_nothing_is_stored(client, ctx, tokens) -> None:
    from ..dicom import to_bytes

    ds = read(ct_series()[0])
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.3.1.2.3.3"  # MPPS
    response = stow(client, tokens["modality"], [to_bytes(ds)])
    assert response.status_code == 409
    failed = response.json()["00081198"]["Value"][0]
    assert failed["00081197"]["Value"] == [0x0122]
    assert failed["00081150"]["Value"] == ["1.2.840.10008.3.1.2.3.3"]
    assert "not a storage SOP class" in response.headers["warning"]
    assert raw_objects(ctx) == [] and ctx.studies.studies.count_documents({}) == 0


def test_private_storage_class_is_accepted(client, ctx, tokens) -> None:
    from ..dicom import to_bytes

    ds = read(ct_series()[0])
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.3.6.1.4.1.9590.100.1.2.1"
    assert stow(client, tokens["modality"], [to_bytes(ds)]).status_code == 200
    assert len(raw_objects(ctx)) == 1


def test_transfer_syntax_mismatch_and_non_syntax_fail_c122(client, ctx, tokens) -> None:
    first, second = ct_series()[:2]
    syntax = str(read(second).file_meta.TransferSyntaxUID).encode()
    assert syntax == b"1.2.840.10008.1.2.1"
    # pydicom refuses to write this, a broken sender does not: a SOP class where the syntax goes.
    odd = second.replace(syntax + b"\x00", b"1.2.840.10008.1.20.1", 1)
    response = _post_parts(
        client,
        tokens["modality"],
        [
            ("application/dicom; transfer-syntax=1.2.840.10008.1.2.4.50", first),
            ("application/dicom", odd),
        ],
    )
    assert response.status_code == 409
    failed = response.json()["00081198"]["Value"]
    assert [item["00081197"]["Value"] for item in failed] == [[0xC122], [0xC122]]
    assert "transfer-syntax=1.2.840.10008.1.2.4.50" in response.headers["warning"]
    assert raw_objects(ctx) == []


def test_matching_transfer_syntax_parameter_is_accepted(client, ctx, tokens) -> None:
    first = ct_series()[0]
    syntax = read(first).file_meta.TransferSyntaxUID
    response = _post_parts(
        client, tokens["modality"], [(f"application/dicom; transfer-syntax={syntax}", first)]
    )
    assert response.status_code == 200


def test_object_store_failure_answers_a700_and_records_nothing(client, ctx, tokens) -> None:
    series = ct_series()[:2]
    study_id = study_id_for(ctx.pseudonym_key, str(read(series[0]).StudyInstanceUID))
    # A real OSError from the folder store: a file stands where the study's folder must go.
    bucket = ctx.settings.data_dir / "objects" / ctx.buckets["raw"]
    bucket.mkdir(parents=True, exist_ok=True)
    (bucket / study_id).write_bytes(b"not a folder")
    response = stow(client, tokens["modality"], series)
    assert response.status_code == 409
    failed = response.json()["00081198"]["Value"]
    assert [item["00081197"]["Value"] for item in failed] == [[0xA700], [0xA700]]
    assert "free space" in response.headers["warning"]
    assert ctx.studies.studies.count_documents({}) == 0
    assert ctx.tasks.sent == []  # type: ignore[attr-defined]


def test_unexpected_error_fails_one_part_0110_others_stored(
    client, ctx, tokens, monkeypatch
) -> None:
    from radpipe.ingest import service

    series = ct_series()[:2]
    broken = read(series[1]).SOPInstanceUID
    real = service.is_storage_sop_class

    def flaky(uid: str) -> bool:  # a bug we cannot cause with real input
        if flaky.calls == 1:
            raise RuntimeError(f"boom {broken}")
        flaky.calls += 1
        return real(uid)

    flaky.calls = 0  # type: ignore[attr-defined]
    monkeypatch.setattr(service, "is_storage_sop_class", flaky)
    response = stow(client, tokens["modality"], series)
    assert response.status_code == 202
    body = response.json()
    assert body["00081198"]["Value"][0]["00081197"]["Value"] == [0x0110]
    assert "RuntimeError" in response.headers["warning"] and broken not in response.text
    assert len(raw_objects(ctx)) == 1


def test_resent_instance_keeps_the_first_copy(client, ctx, tokens) -> None:
    from ..dicom import to_bytes

    original = ct_series()[0]
    assert stow(client, tokens["modality"], [original]).status_code == 200
    changed = read(original)
    changed.SeriesDescription = "CHANGED ON RESEND"
    again = stow(client, tokens["modality"], [to_bytes(changed)])
    assert again.status_code == 200 and len(again.json()["00081199"]["Value"]) == 1
    [key] = raw_objects(ctx)
    assert ctx.objects.get(ctx.buckets["raw"], key) == original


def test_a_request_still_receiving_moves_only_received_studies_it_has_parts_of(
    ctx: Context,
) -> None:
    from radpipe.ingest.multipart import Part
    from radpipe.ingest.service import StowSession

    series = ct_series()
    study_id = study_id_for(ctx.pseudonym_key, str(read(series[0]).StudyInstanceUID))
    earlier = StowSession(ctx, None)
    earlier.add(Part.from_bytes("application/dicom", series[0]))
    earlier.commit()
    armed = ctx.studies.get(study_id)["last_instance_at"]
    session = StowSession(ctx, None)
    assert not session.receiving_due()  # no part yet: no study to keep open
    session.add(Part.from_bytes("application/dicom", series[1]))
    assert session.receiving_due()  # a study new to the request
    session.still_receiving()
    moved = ctx.studies.get(study_id)["last_instance_at"]
    assert moved > armed
    assert not session.receiving_due()  # again a quarter of the quiet time later
    session._kept_open_at -= ctx.settings.study_stable_seconds / 4
    assert session.receiving_due()
    # Not recorded before the end: the count is the earlier request's, and a stable study
    # keeps its last instance time (the commit re-opens it).
    assert ctx.studies.get(study_id)["instance_count"] == 1
    ctx.studies.transition(study_id, "stable")  # type: ignore[arg-type]
    session.still_receiving()
    assert ctx.studies.get(study_id)["last_instance_at"] == moved
    # A study first sent by this request is not created before its parts are recorded.
    other = ct_series(seed=9)
    other_id = study_id_for(ctx.pseudonym_key, str(read(other[0]).StudyInstanceUID))
    session.add(Part.from_bytes("application/dicom", other[0]))
    session.still_receiving()
    assert ctx.studies.find(other_id) is None
