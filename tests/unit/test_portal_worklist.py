"""The worklist over all studies: filters (modality, state, AI risk, received dates), paging, the
open-alert banner acknowledged from the page with the session's CSRF token."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

from fastapi.testclient import TestClient

from radpipe.common.auth import AuthService
from radpipe.common.context import Context
from radpipe.notify.service import notify_study

from ..dicom import ct_series
from .test_ingest_api import stow
from .test_stages import analyzed


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def ids(client: TestClient, token: str, **params: str) -> list[str]:
    answer = client.get("/api/studies", params=params, headers=bearer(token))
    assert answer.status_code == 200, answer.text
    return [s["id"] for s in answer.json()["studies"]]


def test_filters_and_paging(client: TestClient, ctx: Context, tokens) -> None:
    high, low = analyzed(ctx, 0.9), analyzed(ctx, 0.2)
    stow(client, tokens["modality"], ct_series(seed=3)[:2])
    rad = tokens["radiologist"]
    everything = ids(client, rad)
    assert everything[:2] == [high, low] and len(everything) == 3
    received = everything[2]
    assert ids(client, rad, risk="high") == [high]
    assert ids(client, rad, risk="low") == [low]
    assert ids(client, rad, risk="pending") == [received]
    assert ids(client, rad, modality="CT") == everything
    assert ids(client, rad, modality="MR") == []
    assert ids(client, rad, state="received") == [received]
    tomorrow = (datetime.now(UTC) + timedelta(days=1)).date().isoformat()
    assert ids(client, rad, since=tomorrow) == []
    assert ids(client, rad, until=tomorrow, risk="high") == [high]
    bad = client.get("/api/studies", params={"since": "last week"}, headers=bearer(rad))
    assert bad.status_code == 400 and "ISO 8601" in bad.json()["detail"]
    assert client.get("/api/studies?risk=huge", headers=bearer(rad)).status_code == 422
    page = client.get("/api/studies", params={"offset": 1, "limit": 1}, headers=bearer(rad)).json()
    assert page["total"] == 3 and [s["id"] for s in page["studies"]] == [low]
    # Residents: no risk filter (the risk is hidden until their read).
    refused = client.get(
        "/api/studies", params={"risk": "high"}, headers=bearer(tokens["resident"])
    )
    assert refused.status_code == 400

    html = client.get("/", params={"risk": "high"}, headers=bearer(rad)).text
    assert f'data-study="{high}"' in html and f'data-study="{low}"' not in html
    html = client.get("/", params={"limit": 1, "modality": "CT"}, headers=bearer(rad)).text
    assert "1–1 of 3" in html and 'id="next-page"' in html and 'id="prev-page"' not in html
    assert "/?modality=CT&amp;offset=1&limit=1" in html
    html = client.get("/", params={"limit": 1, "offset": 2}, headers=bearer(rad)).text
    assert "3–3 of 3" in html and 'id="prev-page"' in html and 'id="next-page"' not in html
    # Every list a person sees is audited with the studies it showed.
    listed = list(ctx.documents.collection("audit").find({"action": "studies.list"}))
    assert listed[-1]["actor"] == "test-radiologist" and listed[-1]["detail"]["ids"] == [received]


def test_alert_banner_acknowledged_from_the_page(client: TestClient, ctx: Context) -> None:
    high = analyzed(ctx, 0.95)
    notify_study(ctx, high)
    AuthService(ctx.documents).add_user("oc", "oncall", "pager-duty-1")
    client.post("/login", data={"username": "oc", "password": "pager-duty-1"})
    page = client.get("/")
    assert f'study <a href="/studies/{high}">' in page.text and 'class="ack"' in page.text
    [alert_id] = re.findall(r'<button type="button" class="ack" data-alert="([^"]+)"', page.text)
    token = re.search(r'name="csrf-token" content="([0-9a-f]+)"', page.text).group(1)  # type: ignore[union-attr]
    url = f"/api/alerts/{alert_id}/ack"
    assert client.post(url, json={"note": "seen"}).status_code == 403  # no CSRF token
    acked = client.post(url, json={"note": "seen"}, headers={"X-CSRF-Token": token})
    assert acked.status_code == 200 and acked.json()["state"] == "acknowledged"
    assert 'class="ack"' not in client.get("/").text


def test_source_filter_over_api_and_page(client: TestClient, ctx: Context, tokens) -> None:
    """The study keeps its sender from its first receipt; a later sender joins ``sources``
    without changing ``source``; the filter matches the first sender, in the worklist order."""
    ct = AuthService(ctx.documents).create_token("ct-scanner-2", "modality")
    series = ct_series(seed=3)  # new UIDs each call
    first = stow(client, tokens["modality"], series[:2])
    other = stow(client, ct, ct_series(seed=4)[:2])
    assert first.status_code == other.status_code == 200
    [from_test] = ids(client, tokens["radiologist"], source="test-modality")
    [from_ct] = ids(client, tokens["radiologist"], source="ct-scanner-2")
    assert from_test != from_ct
    # The same study again, from the second sender: it joins the list, the first stays.
    assert stow(client, ct, series[2:3]).status_code == 200
    study = ctx.studies.get(from_test)
    assert study["source"] == "test-modality"
    assert study["sources"] == ["test-modality", "ct-scanner-2"]
    assert ids(client, tokens["radiologist"], source="ct-scanner-2") == [from_ct]
    assert ids(client, tokens["radiologist"], source="nobody") == []
    assert ids(client, tokens["resident"], source="test-modality") == [from_test]
    shown = client.get(f"/api/studies/{from_test}", headers=bearer(tokens["radiologist"])).json()
    assert shown["source"] == "test-modality" and len(shown["sources"]) == 2

    page = client.get("/", params={"source": "ct-scanner-2"}, headers=bearer(tokens["radiologist"]))
    html = page.text
    assert f'data-study="{from_ct}"' in html and f'data-study="{from_test}"' not in html
    assert "(1 study, " in html  # singular
    assert "<option selected>ct-scanner-2</option>" in html
    assert "<option >test-modality</option>" in html  # every known sender is offered
    assert "(2 studies, " in client.get("/", headers=bearer(tokens["radiologist"])).text
    assert "(0 studies, " in client.get("/?source=x", headers=bearer(tokens["radiologist"])).text
