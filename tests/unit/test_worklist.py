"""The worklist: highest AI risk first, then longest waiting, across all studies; open alerts
newest first. Studies are written through the repository as the pipeline writes them."""

from __future__ import annotations

import random
import re
import time

from fastapi.testclient import TestClient

from radpipe.common.context import Context
from radpipe.common.studies import StudyState

STUDIES = 240


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _analysed(ctx: Context, study_id: str, score: float | None) -> None:
    repo = ctx.studies
    repo.record_instance(study_id, f"i-{study_id}", {"raw_key": "k"}, "CT")
    for state in (StudyState.STABLE, StudyState.DEIDENTIFIED):
        repo.transition(study_id, state)
    risk = {"score": score, "category": "high" if score and score > 0.5 else "low"}
    repo.transition(study_id, StudyState.ANALYZED, fields={"analysis": {"risk": risk}})


def _seed(ctx: Context) -> dict[str, float]:
    """Many studies, written oldest first, with random risks (some tied); a few pending."""
    rng = random.Random(10)
    scores: dict[str, float] = {}
    for n in range(STUDIES):
        study_id = f"s{n:04d}"
        if n % 12 == 5:
            ctx.studies.record_instance(study_id, f"i-{study_id}", {"raw_key": "k"}, "CT")
            continue
        scores[study_id] = round(rng.random(), 2)
        _analysed(ctx, study_id, scores[study_id])
    # The newest updates touch low-risk studies, as a busy pipeline does.
    for study_id in sorted(scores, key=scores.__getitem__)[:60]:
        ctx.studies.set_fields(study_id, {"touched": True})
    return scores


def _expected(ctx: Context, scores: dict[str, float]) -> list[str]:
    received = {d["_id"]: d["created_at"] for d in ctx.studies.studies.find({})}
    analysed = sorted(scores, key=lambda s: (-scores[s], received[s]))
    pending = sorted(set(received) - set(scores), key=received.__getitem__)
    return analysed + pending


def test_the_riskiest_studies_fill_the_first_pages_in_order(
    client: TestClient, ctx: Context, tokens: dict[str, str]
) -> None:
    scores = _seed(ctx)
    expected = _expected(ctx, scores)
    reader = bearer(tokens["radiologist"])
    first = client.get("/api/studies", headers=reader).json()
    assert first["total"] == STUDIES
    assert [s["id"] for s in first["studies"]] == expected[:50]
    second = client.get("/api/studies", params={"offset": 50, "limit": 50}, headers=reader)
    assert [s["id"] for s in second.json()["studies"]] == expected[50:100]
    last = client.get("/api/studies", params={"offset": 200, "limit": 100}, headers=reader)
    assert [s["id"] for s in last.json()["studies"]] == expected[200:]  # pending ones last


def test_state_filter_keeps_the_worklist_order(
    client: TestClient, ctx: Context, tokens: dict[str, str]
) -> None:
    scores = _seed(ctx)
    expected = _expected(ctx, scores)
    pending = client.get(
        "/api/studies", params={"state": "received", "limit": 500}, headers=bearer(tokens["oncall"])
    ).json()
    ids = [s["id"] for s in pending["studies"]]
    assert pending["total"] == len(ids) == STUDIES - len(scores)
    assert ids == [s for s in expected if s not in scores]


def test_worklist_page_lists_the_riskiest_first(
    client: TestClient, ctx: Context, tokens: dict[str, str]
) -> None:
    scores = _seed(ctx)
    expected = _expected(ctx, scores)
    # The page is paged (50 by default); 200 on one page, and page 2 of 50 follows page 1.
    page = client.get("/", params={"limit": 200}, headers=bearer(tokens["radiologist"])).text
    shown = re.findall(r'<td><a href="/studies/(s\d{4})">', page)
    assert shown[:200] == expected[:200]
    second = client.get("/", params={"offset": 50}, headers=bearer(tokens["radiologist"])).text
    assert re.findall(r'<td><a href="/studies/(s\d{4})">', second) == expected[50:100]


def test_open_alerts_newest_first(client: TestClient, ctx: Context, tokens: dict[str, str]) -> None:
    from radpipe.notify.service import acknowledge, list_alerts, notify_study
    from radpipe.portal.service import open_alerts

    ctx.settings.risk_threshold = 0.5
    for n, score in enumerate((0.9, 0.2, 0.8, 0.95)):
        _analysed(ctx, f"a{n}", score)
        notify_study(ctx, f"a{n}")
        time.sleep(0.003)  # creation times stored to the millisecond, as in MongoDB
    acknowledge(ctx, "a2-v1", "dr-x")
    assert [a["_id"] for a in open_alerts(ctx)] == ["a3-v1", "a0-v1"]
    assert [a["_id"] for a in list_alerts(ctx, open_only=True)] == ["a3-v1", "a0-v1"]
    assert [a["_id"] for a in list_alerts(ctx)] == ["a3-v1", "a2-v1", "a0-v1"]
    listed = client.get("/api/alerts", headers=bearer(tokens["oncall"])).json()
    assert [a["id"] for a in listed] == ["a3-v1", "a2-v1", "a0-v1"]
    opened = client.get("/api/alerts", params={"open": True}, headers=bearer(tokens["oncall"]))
    assert [a["id"] for a in opened.json()] == ["a3-v1", "a0-v1"]
