"""The RIS CSV import's own body limit (common/bodylimit.limit_route): an upload over it is
refused with 413 and the import's advice before FastAPI parses, spools or authenticates the
multipart form, declared or chunked; nothing is imported."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from radpipe.common.bodylimit import ROUTE_LIMITS, RouteLimit
from radpipe.tat import api as tat_api
from radpipe.tat import ris

LIMIT = 64 * 1024  # patched in place of the real 65 MiB, which a test should not send


@pytest.fixture
def small_limit(monkeypatch: pytest.MonkeyPatch) -> RouteLimit:
    real = ROUTE_LIMITS["/api/tat/import"]
    assert real.limit == tat_api.IMPORT_BODY_BYTES == ris.MAX_BYTES + 1024**2
    assert "split the export" in real.detail
    small = RouteLimit(LIMIT, real.detail)
    monkeypatch.setitem(ROUTE_LIMITS, "/api/tat/import", small)
    return small


def _multipart(size: int) -> tuple[bytes, str]:
    boundary = "radpipe-test-boundary"
    row = b"A1,2026-01-01 00:00:00\n"
    csv = b"Accession Number,Order Time\n" + row * (size // len(row) + 1)
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="ris.csv"\r\n'
            "Content-Type: text/csv\r\n\r\n"
        ).encode()
        + csv
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return body, f"multipart/form-data; boundary={boundary}"


def _chunks(body: bytes, size: int = 4096) -> Iterator[bytes]:
    for start in range(0, len(body), size):
        yield body[start : start + size]


def test_an_import_over_its_limit_is_refused_before_the_form_is_read(
    client: TestClient, tokens: dict[str, str], small_limit: RouteLimit
) -> None:
    manager = {"Authorization": f"Bearer {tokens['manager']}"}
    body, content_type = _multipart(LIMIT + 1000)
    assert len(body) > LIMIT
    declared = client.post(
        "/api/tat/import", content=body, headers={**manager, "Content-Type": content_type}
    )
    assert declared.status_code == 413
    assert declared.json() == {"error": "PayloadTooLarge", "detail": small_limit.detail}
    chunked = client.post(
        "/api/tat/import", content=_chunks(body), headers={**manager, "Content-Type": content_type}
    )
    assert chunked.status_code == 413 and chunked.json()["detail"] == small_limit.detail
    # Anonymous: refused for its size before authentication could even be asked.
    anonymous = client.post("/api/tat/import", content=body, headers={"Content-Type": content_type})
    assert anonymous.status_code == 413
    assert client.get("/api/tat/imports/latest", headers=manager).json() is None


def test_an_import_within_its_limit_reaches_the_route(
    client: TestClient, tokens: dict[str, str], small_limit: RouteLimit
) -> None:
    manager = {"Authorization": f"Bearer {tokens['manager']}"}
    body, content_type = _multipart(LIMIT // 2)
    answer = client.post(
        "/api/tat/import", content=_chunks(body), headers={**manager, "Content-Type": content_type}
    )
    # The route ran and read the file (no exam columns: its own 400, naming the fix).
    assert answer.status_code in (200, 201, 400), answer.text
    assert answer.status_code != 413
