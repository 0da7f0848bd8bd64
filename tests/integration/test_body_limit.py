"""JSON bodies over RADPIPE_MAX_JSON_BYTES over real HTTP (the app under uvicorn): a mask edit
too large, declared or chunked, is answered 413 naming the limit and the setting before it is
read, and nothing is stored; a normal edit still works; STOW-RS keeps its own limits."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
from fastapi.testclient import TestClient

from radpipe.common.context import Context

from ..dicom import ct_series
from ..unit.test_ingest_api import stow
from .test_inference_results import bearer
from .test_portal_review import analysed, box, stored_masks  # noqa: F401 - a fixture

LIMIT = 200_000


def many_runs(geometry: dict, slices: range) -> dict:
    """A valid mask of single pixels one apart: 12,800 runs a 160 × 160 slice, ~100 KB each."""
    size = geometry["shape"][1] * geometry["shape"][2]
    runs = [v for start in range(0, size, 2) for v in (start, 1)]
    return {**box(geometry, range(0), range(0), range(0)), "slices": {str(k): runs for k in slices}}


def pieces(body: bytes, size: int = 16_384) -> Iterator[bytes]:
    for start in range(0, len(body), size):
        yield body[start : start + size]


def test_a_too_large_mask_edit_is_refused_unread_and_a_normal_one_stored(
    ctx: Context,
    client: TestClient,
    tokens: dict[str, str],
    analysed: str,  # noqa: F811 - the fixture imported above
    live_url: str,
) -> None:
    import json

    study_id, rad = analysed, tokens["radiologist"]
    ctx.settings.max_json_bytes = LIMIT  # read per request: no rebuild
    url = f"{live_url}/api/studies/{study_id}/findings/1/decision"
    headers = {**bearer(rad), "Content-Type": "application/json"}
    geometry = httpx.get(f"{live_url}/api/studies/{study_id}/geometry", headers=bearer(rad)).json()
    big = json.dumps({"decision": "edit", "mask": many_runs(geometry, range(18, 21))}).encode()
    assert LIMIT < len(big) < 2 * LIMIT

    says = f"request body exceeds RADPIPE_MAX_JSON_BYTES ({LIMIT} bytes)"
    declared = httpx.post(url, content=big, headers=headers, timeout=60)
    assert declared.status_code == 413, declared.text
    assert declared.json()["error"] == "PayloadTooLarge"
    assert (
        declared.json()["detail"].startswith(says)
        and "raise RADPIPE_MAX_JSON_BYTES" in (declared.json()["detail"])
    )
    assert declared.headers["cache-control"] == "no-store"  # inside the app's own middleware
    chunked = httpx.post(url, content=pieces(big), headers=headers, timeout=60)
    assert chunked.status_code == 413 and chunked.json()["detail"].startswith(says)

    # Nothing reached the route: no decision, no mask, no event.
    study = ctx.studies.get(study_id)
    assert not (study.get("review") or {}).get("decisions")
    assert [e for e in study["events"] if e["type"] == "finding.decision"] == []
    assert stored_masks(ctx, study_id) == []

    # Under the limit, the same route takes the edit, declared or chunked.
    good = json.dumps(
        {"decision": "edit", "mask": box(geometry, range(18, 21), range(70, 80), range(70, 80))}
    ).encode()
    edited = httpx.post(url, content=pieces(good, 100), headers=headers, timeout=60)
    assert edited.status_code == 200, edited.text
    assert edited.json()["mask"]["voxels"] == 300
    [key] = stored_masks(ctx, study_id)
    assert key == edited.json()["mask"]["key"]

    # STOW-RS is not held to it: a study many times the limit is stored.
    series = ct_series(seed=11)
    assert sum(map(len, series)) > LIMIT
    assert stow(client, tokens["modality"], series).status_code == 200
