"""Turnaround analytics over real stores: the planted-PHI corpus and a live-acquired study go
through STOW-RS, stability and de-identification; a RIS CSV naming them by their accession
numbers in clear is imported; the report, the CSV and the Parquet star schema are checked for
their figures, read back with DuckDB, and scanned for every planted value. Runs on SQLite with
SeaweedFS (S3), on the earlier embedded engine with a folder, and on MongoDB where one is given.
"""

from __future__ import annotations

import io
import json
import secrets
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from fastapi.testclient import TestClient

from radpipe.app import build_app
from radpipe.common import blinding
from radpipe.common.alerts import ensure_alert_indexes
from radpipe.common.auth import AuthService
from radpipe.common.context import Context
from radpipe.common.objectstore import FolderObjectStore, S3ObjectStore, bucket_names
from radpipe.common.ports import ObjectStore
from radpipe.common.settings import Settings
from radpipe.common.studies import StudyState
from radpipe.deid.service import deidentify_study
from radpipe.deid.stability import check_stable
from radpipe.tat import service

from ..conftest import RecordingDispatcher
from ..dicom import PHI, ct_series
from ..phi import Corpus, generate_corpus, scan_bytes
from ..servers import S3Server, document_store
from ..unit.test_ingest_api import stow

SECRET = "5e1f0c9b7a3d2e4f6a8b0c1d3e5f7a9b"


@dataclass
class Site:
    ctx: Context
    client: TestClient
    tokens: dict[str, str]
    corpus: Corpus
    live_study: str
    corpus_studies: list[str]

    def get(self, path: str, role: str = "manager", **params: str):
        return self.client.get(
            path, params=params, headers={"Authorization": f"Bearer {self.tokens[role]}"}
        )

    def planted(self) -> dict[str, set[str]]:
        return {**self.corpus.planted, "fixture": set(PHI.values())}


@pytest.fixture(params=["sqlite+s3", "litemongo+folder", "mongodb+folder"])
def site(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Site]:
    engine, objects_kind = request.param.split("+")
    settings = Settings(
        data_dir=tmp_path / "data",
        secret_key=SECRET,  # type: ignore[arg-type]
        bucket_prefix="t" + secrets.token_hex(4),
        study_stable_seconds=0,
    )
    documents = document_store(engine, tmp_path, "the TAT API")
    objects: ObjectStore
    if objects_kind == "s3":
        s3: S3Server = request.getfixturevalue("s3")
        objects = S3ObjectStore(s3.endpoint, s3.access_key, s3.secret_key)
    else:
        objects = FolderObjectStore(tmp_path / "objects")
    ctx = Context(settings, objects, documents, RecordingDispatcher(), bucket_names(settings))
    for bucket in ctx.buckets.values():
        objects.ensure_bucket(bucket)
    ctx.studies.ensure_indexes()
    ensure_alert_indexes(documents)
    blinding.ensure_indexes(documents)
    auth = AuthService(documents)
    tokens = {
        r: auth.create_token(f"test-{r}", r)
        for r in ("modality", "manager", "admin", "radiologist")
    }
    with TestClient(build_app(ctx, ["ingest", "portal", "notify"])) as client:
        corpus = generate_corpus(tmp_path / "corpus", patients=2, studies_per_patient=1)
        by_study: dict[str, list[bytes]] = {}
        for planted in corpus.files:
            by_study.setdefault(planted.study, []).append(planted.path.read_bytes())
        corpus_studies = []
        for payloads in by_study.values():
            assert stow(client, tokens["modality"], payloads).status_code == 200
            corpus_studies.append(_newest(ctx, corpus_studies))
        # A study acquired ten minutes ago (site zone UTC): its acquired->received interval.
        acquired = datetime.now(UTC) - timedelta(minutes=10)
        live = ct_series(
            study_date=acquired.strftime("%Y%m%d"), study_time=acquired.strftime("%H%M%S")
        )
        assert stow(client, tokens["modality"], live).status_code == 200
        live_study = _newest(ctx, corpus_studies)
        for study_id in [*corpus_studies, live_study]:
            check_stable(ctx, study_id)
            deidentify_study(ctx, study_id)
            assert ctx.studies.get(study_id)["state"] == StudyState.DEIDENTIFIED
        _finish(ctx, live_study, risk="high", alerted=True)
        _finish(ctx, corpus_studies[0], risk="low", alerted=False)
        yield Site(ctx, client, tokens, corpus, live_study, corpus_studies)
    documents.close()


def _newest(ctx: Context, known: list[str]) -> str:
    """The one study stored since ``known`` (ids are keyed: read them, never recompute)."""
    (study_id,) = {d["_id"] for d in ctx.studies.studies.find({})} - set(known)
    return str(study_id)


def _finish(ctx: Context, study_id: str, risk: str, alerted: bool) -> None:
    analysis = {"risk": {"category": risk, "score": 0.9 if risk == "high" else 0.1}}
    assert ctx.studies.transition(study_id, StudyState.ANALYZED, fields={"analysis": analysis})
    if alerted:
        assert ctx.studies.transition(study_id, StudyState.ALERTED)
        ctx.studies.add_event(study_id, "alert.acknowledged", {})
    assert ctx.studies.transition(study_id, StudyState.SIGNED)


def ris_csv(site: Site) -> bytes:
    """A RIS export naming the studies by their accession numbers, in clear."""
    now = datetime.now(UTC)
    stamp = lambda d: (now - d).strftime("%Y-%m-%d %H:%M:%S")  # noqa: E731
    accessions = [st.accession for p in site.corpus.patients.values() for st in p.studies]
    lines = ["Accession Number,Modality,Priority,Order Time,Exam Complete,Final Report,Age"]
    for accession in [*accessions, PHI["accession"]]:
        priority = "STAT" if accession == PHI["accession"] else "ROUTINE"
        lines.append(
            f"{accession},CT,{priority},{stamp(timedelta(hours=3))},{stamp(timedelta(hours=2))},,54"
        )
    lines.append(f"{accessions[0]},CT,ROUTINE,{stamp(timedelta(hours=3))},,,54")  # duplicate
    return ("\n".join(lines) + "\n").encode()


def test_roles_import_report_exports_and_no_phi(site: Site, tmp_path: Path) -> None:
    ctx, client = site.ctx, site.client
    assert site.get("/api/tat", role="radiologist").status_code == 403
    assert client.get("/api/tat").status_code == 401
    data = ris_csv(site)
    refused = client.post(
        "/api/tat/import",
        files={"file": ("ris.csv", data, "text/csv")},
        headers={"Authorization": f"Bearer {site.tokens['radiologist']}"},
    )
    assert refused.status_code == 403
    bad = client.post(
        "/api/tat/import",
        files={"file": ("ris.csv", b"name,when\nx,y\n", "text/csv")},
        headers={"Authorization": f"Bearer {site.tokens['manager']}"},
    )
    assert bad.status_code == 400 and "no column for accession" in bad.json()["detail"]
    assert site.get("/api/tat/imports/latest").json() is None  # nothing stored by either

    imported = client.post(
        "/api/tat/import",
        files={"file": ("ris.csv", data, "text/csv")},
        headers={"Authorization": f"Bearer {site.tokens['admin']}"},
    )
    assert imported.status_code == 201, imported.text
    report = imported.json()
    studies = len(site.corpus_studies) + 1
    assert (report["rows"], report["clean"], report["flagged"], report["matched"]) == (
        studies + 1,
        studies,
        1,
        studies,
    )
    assert report["flagged_rows"][0]["reasons"] == [
        "missing exam complete time",
        "duplicate accession (first on line 2)",
    ]
    again = client.post(
        "/api/tat/import",
        files={"file": ("ris.csv", data, "text/csv")},
        headers={"Authorization": f"Bearer {site.tokens['manager']}"},
    )
    assert again.status_code == 200 and again.json()["already_imported"] is True
    assert again.json()["id"] == report["id"]
    raw = ctx.objects.get(service.ris_bucket(ctx), f"{report['id']}.csv")
    assert raw == data  # the file as received, in its own bucket

    answer = site.get("/api/tat")
    assert answer.status_code == 200 and answer.headers["cache-control"] == "no-store"
    tat = answer.json()
    assert tat["studies"] == studies
    assert tat["intervals"]["ordered→exam_complete"]["count"] == studies
    assert tat["intervals"]["ordered→exam_complete"]["p50"] == pytest.approx(3600, abs=1)
    lag = tat["intervals"]["acquired→received"]
    assert lag["count"] == 1 and 590 <= lag["p50"] <= 700  # the corpus's old dates left out
    assert tat["end_to_end"]["AI flag→acknowledged"]["count"] == 1
    assert tat["end_to_end"]["order→signed"]["count"] == 2
    assert tat["cuts"]["priority"]["STAT"]["studies"] == 1
    assert tat["cuts"]["risk"]["high"]["studies"] == 1
    assert tat["last_import"]["id"] == report["id"]
    assert sum(tat["arrivals_by_hour"]) == studies
    assert tat["stale"] is False  # computed from the facts the import just refreshed
    agreement = tat["kpis"]["reader_agreement"]
    assert set(agreement) == {"resident_reads", "residents", "ai", "attending"}
    assert set(agreement["ai"]) == {"pairs", "agreement", "kappa"}
    again = site.get("/api/tat").json()  # nothing changed: the same report, from the memo
    assert again["computed_at"] == tat["computed_at"] and again["stale"] is False
    stat = site.get("/api/tat", priority="STAT").json()
    assert stat["studies"] == 1
    assert site.get("/api/tat", modality="MR").json()["studies"] == 0
    assert site.get("/api/tat", **{"from": "2020-01-01", "to": "2020-01-02"}).json()["studies"] == 0
    assert site.get("/api/tat", **{"from": "soon"}).status_code == 400

    exports = {}
    for path in ("/api/tat.csv", "/api/tat.parquet", "/api/tat/star.zip"):
        response = site.get(path)
        assert response.status_code == 200 and response.headers["cache-control"] == "no-store"
        exports[path] = response.content
    rows = exports["/api/tat.csv"].decode().splitlines()
    assert len(rows) == studies + 1 and rows[0].split(",")[-1] == "final_report_s"
    star = tmp_path / "star"
    with zipfile.ZipFile(io.BytesIO(exports["/api/tat/star.zip"])) as bundle:
        bundle.extractall(star)
    assert sorted(p.name for p in star.iterdir()) == sorted(
        f"{t}.parquet"
        for t in (
            "fact_study_event",
            "fact_study_interval",
            "dim_modality",
            "dim_source",
            "dim_priority",
            "dim_time",
        )
    )
    facts = pq.read_table(io.BytesIO(exports["/api/tat.parquet"]))
    assert facts.column_names[:4] == ["study_key", "stage", "stage_order", "seconds_since_first"]
    assert set(facts.column("study_key").to_pylist()) == {*site.corpus_studies, site.live_study}
    duckdb = pytest.importorskip("duckdb")
    per_modality = duckdb.sql(
        f"SELECT m.modality, count(DISTINCT f.study_key) FROM '{star}/fact_study_event.parquet' f "
        f"JOIN '{star}/dim_modality.parquet' m USING (modality_key) GROUP BY 1"
    ).fetchall()
    assert per_modality == [("CT", studies)]
    hours = duckdb.sql(
        f"SELECT count(*) FROM '{star}/fact_study_event.parquet' f "
        f"JOIN '{star}/dim_time.parquet' t USING (time_key) WHERE f.stage = 'received'"
    ).fetchall()
    assert hours == [(studies,)]

    # No planted value anywhere: answers, exports, the stored RIS rows, reports and flags.
    stored = b"".join(
        json.dumps(list(ctx.documents.collection(name).find({})), default=str).encode()
        for name in (service.RIS_ROWS, service.RIS_FLAGGED, service.IMPORTS)
    )
    parquet_text = b"".join(
        json.dumps(pq.read_table(p).to_pylist(), default=str).encode() for p in star.iterdir()
    )
    for name, blob in {
        "report": answer.content,
        "import": imported.content,
        "latest": site.get("/api/tat/imports/latest").content,
        "page": site.get("/tat").content,
        "stored": stored,
        "parquet": parquet_text,
        **exports,
    }.items():
        assert scan_bytes(blob, site.planted()) == [], name
    assert PHI["accession"].encode() in data  # the scan would have seen it


def test_the_dashboard_page_and_its_assets_are_for_managers(site: Site) -> None:
    page = site.get("/tat")
    assert page.status_code == 200 and 'src="/tat/assets/uPlot.iife.min.js"' in page.text
    assert "Turnaround" in page.text
    assert '<a href="/">Worklist</a>' not in page.text  # managers have no worklist (DESIGN 1)
    for name in ("tat.js", "uPlot.iife.min.js", "uPlot.min.css"):
        asset = site.get(f"/tat/assets/{name}")
        assert asset.status_code == 200 and len(asset.content) > 1000
    assert site.get("/tat/assets/../api.py").status_code == 404
    assert site.get("/tat", role="radiologist").status_code == 403
