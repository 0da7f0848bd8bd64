"""The document store at scale: the earlier embedded engine (litemongo) against the new one
(JSON over SQLite with expression indexes), side by side on the same documents.

For each engine and size, one child process writes studies and their alerts through the
project's own store (``Collection.insert_one``) into a fresh data dir, with a progress bar.
The documents are shaped like the pipeline's: de-identified series holding 30-160 instance
keys, an analysis with findings, model provenance and timings, 4-9 events; states, risks and
alerts distributed as in a running department (most studies signed, about 12% alerted, the
alerts of signed studies acknowledged). A second child process then serves the portal and
notify routes of the real app in-process (FastAPI's ``TestClient`` over ``build_app``: the
same routes and store code ``radpipe up`` serves, without uvicorn and sockets, which is far
simpler and leaves the store's cost as the difference) and times sequential requests:

* ``GET /api/studies`` (the worklist page: 50 studies and the total),
* ``GET /api/studies?state=alerted``,
* ``GET /api/alerts?open=true`` and ``GET /api/alerts``,
* ``GET /api/studies/{id}`` for random ids,
* ``GET /`` (the HTML worklist: 200 studies and the open alerts),
* QIDO-RS: OHIF's study list (``limit=101``), studies by patient name wildcard and by a date
  range, the series of one study, and all series of a modality (``limit=101``).

The DICOM index is written through ``dicomindex.add_to_index`` (the entries and the study and
series summaries) with two entries per series: the store's study and series searches read the
summaries, whose cost does not depend on the instance count. The QIDO code before the store
answered it read every entry into Python and matched there: "QIDO studies, pre-store code"
times that path (OHIF's study list, rendering left out) on the same store.

Reports p50/p95/max per request and size, the measuring process's peak RSS, and the ratios
old/new. An endpoint stops early after ``--budget`` seconds (the old engine at 10,000 studies
takes seconds per request).

    .venv/bin/python bench/store.py [--sizes 1000,10000] [--requests 30] [--engines old,new]
    .venv/bin/python bench/store.py --sizes 100000 --engines new     # hospital scale
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]

ENGINES = ("old", "new")
STATES = [  # (state, share) of a department's studies at any moment
    ("signed", 0.70),
    ("alerted", 0.12),
    ("analyzed", 0.10),
    ("received", 0.03),
    ("stable", 0.01),
    ("deidentified", 0.02),
    ("failed", 0.02),
]
REQUESTS = [
    ("worklist", "/api/studies"),
    ("state=alerted", "/api/studies?state=alerted"),
    ("open alerts", "/api/alerts?open=true"),
    ("alerts", "/api/alerts"),
    ("study by id", None),
    ("worklist page", "/"),
    (
        "QIDO studies (OHIF list)",
        "/dicom-web/studies?limit=101&offset=0&fuzzymatching=false"
        "&includefield=00081030%2C00080060",
    ),
    ("QIDO studies PatientName=wildcard", "/dicom-web/studies?PatientName={patient}*&limit=101"),
    ("QIDO studies StudyDate=range", "/dicom-web/studies?StudyDate={dates}&limit=101"),
    ("QIDO series of a study", "/dicom-web/studies/{study_uid}/series"),
    ("QIDO series Modality=CT", "/dicom-web/series?Modality=CT&limit=101"),
]
NAMES = [name for name, _ in REQUESTS] + ["QIDO studies, pre-store code"]


# -- data -------------------------------------------------------------------------------------


def _uid(rng: random.Random) -> str:
    return "2.25." + str(rng.getrandbits(120))


def study_document(n: int, rng: random.Random, start: datetime) -> tuple[dict[str, Any], Any]:
    """One study as the pipeline leaves it, and its alert (or ``None``)."""
    state = rng.choices([s for s, _ in STATES], [w for _, w in STATES])[0]
    at = start + timedelta(seconds=n * 90 + rng.random() * 60)
    study_id = f"{rng.getrandbits(128):032x}"
    count = rng.randint(30, 160)
    events = [{"type": "received", "at": at, "version": 1, "detail": {}}]
    doc: dict[str, Any] = {
        "_id": study_id,
        "created_at": at,
        "state": state,
        "version": 1,
        "modality": "CT",
        "instance_count": count,
        "last_instance_at": at + timedelta(seconds=20),
    }
    analysed = state in ("analyzed", "alerted", "signed")
    if state != "received":
        events.append({"type": "stable", "at": at + timedelta(seconds=40), "version": 1})
    if state not in ("received", "stable"):
        keys = [f"{study_id}/{_uid(rng)}.dcm" for _ in range(count)]
        doc["deid"] = {
            "study_uid": _uid(rng),
            "series": [{"series_uid": _uid(rng), "modality": "CT", "keys": keys}],
        }
        events.append({"type": "deidentified", "at": at + timedelta(seconds=70), "version": 1})
    alert = None
    if analysed:
        score = round(rng.betavariate(2, 5), 4) if state != "alerted" else rng.uniform(0.5, 1)
        findings = [
            {
                "label": 1,
                "diameter_mm": round(rng.uniform(3, 30), 2),
                "volume_mm3": round(rng.uniform(20, 9000), 1),
                "center_voxel_zyx": [round(rng.uniform(0, 300), 2) for _ in range(3)],
                "center_patient_xyz": [round(rng.uniform(-200, 200), 2) for _ in range(3)],
                "probability": round(rng.random(), 4),
                "center_sop_instance_uid": _uid(rng),
                "mean_hu": round(rng.uniform(-600, 80), 1),
            }
            for _ in range(rng.randint(0, 4))
        ]
        category = "high" if score >= 0.5 else "low"
        doc["analysis"] = {
            "findings": findings,
            "risk": {"score": score, "category": category, "rule": "largest nodule diameter"},
            "timings": {k: round(rng.uniform(0.01, 5), 4) for k in ("load", "predict", "write")},
            "model": {"name": "lung_nodule_demo", "version": "1.2.0", "sha256": "ab" * 32},
            "series_uid": _uid(rng),
            "risk_threshold": 0.5,
            "outputs": {"seg": f"{study_id}/seg.dcm", "sr": f"{study_id}/sr.dcm"},
        }
        events.append({"type": "analyzed", "at": at + timedelta(minutes=3), "version": 1})
        if score >= 0.5:
            alert = {
                "_id": f"{study_id}-v1",
                "study_id": study_id,
                "version": 1,
                "risk": {"score": score, "category": category, "rule": "largest"},
                "summary": f"{len(findings)} finding(s)",
                "created_at": at + timedelta(minutes=3, seconds=5),
                "delivered_at": at + timedelta(minutes=3, seconds=6),
                "channel": "webhook",
                "kind": "clinical",
                "urgency": 2,
                "state": "open",
                "open": True,
                "next_page_at": at + timedelta(minutes=18),
                "acknowledged_at": None,
                "acknowledged_by": None,
                "history": [{"type": "opened", "at": at + timedelta(minutes=3, seconds=5)}],
            }
            events.append({"type": "alerted", "at": alert["created_at"], "version": 1})
            doc["alert"] = {"id": alert["_id"], "channel": "webhook"}
            if state == "signed":
                alert.update(state="closed", open=False, next_page_at=None)
                alert["acknowledged_at"] = at + timedelta(minutes=20)
                alert["acknowledged_by"] = "dr-bench"
        if state == "signed":
            events.append({"type": "signed", "at": at + timedelta(hours=2), "version": 1})
    if state == "failed":
        doc["failure"] = {"stage": "inference", "reason": "bench", "attempts": 3, "at": at}
        events.append({"type": "failed", "at": at + timedelta(minutes=2), "version": 1})
    doc["events"] = [{"detail": {}, **e} for e in events]
    doc["updated_at"] = doc["events"][-1]["at"]
    return doc, alert


def index_entries(doc: dict[str, Any], n: int, rng: random.Random) -> list[dict[str, Any]]:
    """The DICOM index entries of a de-identified study (two per series; SEG and SR series of
    the AI result for analysed studies), as deid and inference index them."""
    deid = doc.get("deid")
    if not deid:
        return []
    at = doc["created_at"]
    study = {
        "StudyInstanceUID": deid["study_uid"],
        "PatientName": f"ANON^{n:06d}",
        "PatientID": f"RP{n:08d}",
        "PatientSex": rng.choice("FM"),
        "AccessionNumber": f"A{n:08d}",
        "StudyDate": at.strftime("%Y%m%d"),
        "StudyTime": at.strftime("%H%M%S"),
        "StudyDescription": "CT CHEST",
        "StudyID": str(n),
    }
    series = [(s["series_uid"], "CT", "deid") for s in deid["series"]]
    if "analysis" in doc:
        series += [(_uid(rng), "SEG", "results"), (_uid(rng), "SR", "results")]
    out = []
    for number, (series_uid, modality, bucket) in enumerate(series, 1):
        for instance in (1, 2):
            uid = _uid(rng)
            attributes = {
                **study,
                "Modality": modality,
                "SeriesInstanceUID": series_uid,
                "SeriesNumber": number,
                "SeriesDescription": modality,
                "SOPClassUID": "1.2.840.10008.5.1.4.1.1.2",
                "SOPInstanceUID": uid,
                "InstanceNumber": instance,
                "Rows": 512,
                "Columns": 512,
            }
            out.append(
                {
                    "_id": uid,
                    "study_id": doc["_id"],
                    "bucket": f"radpipe-{bucket}",
                    "key": f"{deid['study_uid']}/{series_uid}/{uid}.dcm",
                    "transfer_syntax": "1.2.840.10008.1.2.1",
                    "attributes": attributes,
                }
            )
    return out


def open_store(engine: str, data: Path) -> Any:
    from radpipe.common.docstore import EmbeddedDocumentStore, open_embedded

    folder = data / "documents"
    return (
        EmbeddedDocumentStore(folder, "radpipe")
        if engine == "old"
        else open_embedded(folder, "radpipe")
    )


def generate(engine: str, size: int, data: Path) -> None:
    """Write ``size`` studies and their alerts through the store, as the pipeline would."""
    from rich.progress import Progress

    from radpipe.common.alerts import ensure_alert_indexes
    from radpipe.common.dicomindex import add_to_index
    from radpipe.common.studies import StudyRepository, with_sort_fields

    store = open_store(engine, data)
    repo = StudyRepository(store)
    repo.ensure_indexes()
    ensure_alert_indexes(store)
    rng = random.Random(size)
    start = datetime(2026, 1, 1, tzinfo=UTC)
    batch = 500
    with Progress(transient=False) as progress:
        task = progress.add_task(f"{engine}: writing {size:,} studies", total=size)
        for first in range(0, size, batch):
            with store.exclusive():  # one transaction per batch on the new engine
                for n in range(first, min(size, first + batch)):
                    doc, alert = study_document(n, rng, start)
                    # The repository keeps risk_score with the analysis (see _with_risk).
                    repo.studies.insert_one(with_sort_fields(doc))
                    if alert is not None:
                        repo.alerts.insert_one(alert)
                    for entry in index_entries(doc, n, rng):
                        add_to_index(store, entry)
            progress.update(task, completed=min(size, first + batch))
    store.close()


# -- measurement ------------------------------------------------------------------------------


class _NoTasks:
    def send(self, stage: str, study_id: str, *, countdown: float | None = None) -> None:
        return None

    def ping(self) -> None:
        return None

    def queue_lengths(self) -> dict[str, int]:
        return {}


def bench_context(engine: str, data: Path) -> Any:
    """The app's context over the generated data dir: no broker (hand-offs are dropped)."""
    from radpipe.common.alerts import ensure_alert_indexes
    from radpipe.common.context import Context
    from radpipe.common.objectstore import FolderObjectStore, bucket_names
    from radpipe.common.settings import Settings

    settings = Settings(data_dir=data, all_in_one=True, log_level="WARNING")
    store = open_store(engine, data)
    ctx = Context(
        settings=settings,
        objects=FolderObjectStore(data / "objects"),
        documents=store,
        tasks=_NoTasks(),
        buckets=bucket_names(settings),
    )
    ctx.studies.ensure_indexes()
    ensure_alert_indexes(store)
    return ctx


def timed_gets(
    client: Any, url: Any, headers: dict[str, str], requests: int, budget: float
) -> dict[str, Any]:
    """p50/p95/max of ``requests`` GETs of ``url()`` after one warm-up, within ``budget`` s."""
    times: list[float] = []
    began = time.perf_counter()
    for i in range(requests + 1):
        target = url()
        t0 = time.perf_counter()
        response = client.get(target, headers=headers)
        elapsed = time.perf_counter() - t0
        assert response.status_code == 200, (target, response.status_code, response.text)
        if i:  # the first request warms caches
            times.append(elapsed)
        if len(times) >= 3 and time.perf_counter() - began > budget:
            break
    return _summary(times)


def measure(engine: str, data: Path, requests: int, budget: float) -> dict[str, Any]:
    from fastapi.testclient import TestClient

    from radpipe.app import build_app
    from radpipe.common.auth import AuthService
    from radpipe.common.dicomindex import STUDY_SUMMARIES

    ctx = bench_context(engine, data)
    store = ctx.documents
    token = AuthService(store).create_token("bench", "radiologist")
    ids = [d["_id"] for d in ctx.studies.studies.find({}).limit(200)]
    uids = [d["_id"] for d in store.collection(STUDY_SUMMARIES).find({}).limit(200)]
    total = ctx.studies.studies.count_documents({})
    rng = random.Random(1)
    results: dict[str, Any] = {}

    def fill(path: str) -> str:
        n = rng.randrange(total)
        day = datetime(2026, 1, 1, tzinfo=UTC) + timedelta(seconds=n * 90)
        return path.format(
            study_uid=rng.choice(uids),
            patient=f"ANON^{n // 100:04d}",  # 100 studies share the prefix
            dates=f"{day:%Y%m%d}-{day + timedelta(days=1):%Y%m%d}",
        )

    with TestClient(build_app(ctx, ["ingest", "portal", "notify"])) as client:
        headers = {"Authorization": f"Bearer {token}"}
        for name, path in REQUESTS:
            results[name] = timed_gets(
                client,
                lambda path=path: fill(path) if path else f"/api/studies/{rng.choice(ids)}",
                headers,
                requests,
                budget,
            )
        page = client.get("/api/studies", headers=headers).json()
        results["total"] = page["total"]
        results["open_alerts"] = len(client.get("/api/alerts?open=true", headers=headers).json())
        # Peak RSS of serving the routes, before the pre-store path holds the whole index.
        results["rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        results["QIDO studies, pre-store code"] = _timed(
            lambda: _pre_store_study_list(store), requests, budget
        )
    store.close()
    return results


def _pre_store_study_list(store: Any) -> list[dict[str, Any]]:
    """OHIF's study list as QIDO-RS answered it before the store did: every index entry read,
    grouped by study in Python, sorted, the first 101 kept (as the code replaced in qido.py)."""
    from radpipe.common.dicomindex import INDEX

    groups: dict[str, list[dict[str, Any]]] = {}
    for entry in store.collection(INDEX).find({}):
        groups.setdefault(entry["attributes"].get("StudyInstanceUID", ""), []).append(
            entry["attributes"]
        )
    rows = []
    for members in groups.values():
        row = dict(members[0])
        row["ModalitiesInStudy"] = sorted({m.get("Modality") or "" for m in members} - {""})
        row["NumberOfStudyRelatedSeries"] = len({m.get("SeriesInstanceUID") for m in members})
        row["NumberOfStudyRelatedInstances"] = len(members)
        rows.append(row)
    rows.sort(key=lambda r: str(r.get("StudyDate") or ""))
    return rows[:101]


def _timed(call: Any, requests: int, budget: float) -> dict[str, Any]:
    times: list[float] = []
    began = time.perf_counter()
    for i in range(requests + 1):
        t0 = time.perf_counter()
        call()
        if i:
            times.append(time.perf_counter() - t0)
        if len(times) >= 3 and time.perf_counter() - began > budget:
            break
    return _summary(times)


def _summary(times: list[float]) -> dict[str, Any]:
    times.sort()
    p95 = statistics.quantiles(times, n=20, method="inclusive")[18] if len(times) > 1 else times[0]
    return {"n": len(times), "p50": statistics.median(times), "p95": p95, "max": times[-1]}


# -- driver -----------------------------------------------------------------------------------


def _child(*args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-W", "ignore", __file__, "--child", *args],
        stdout=subprocess.PIPE,
        check=True,
        cwd=ROOT,
    )
    return done.stdout.decode()


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:,.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,10000", help="comma-separated study counts")
    parser.add_argument("--engines", default="old,new", help="old (litemongo), new (sqlite)")
    parser.add_argument("--requests", type=int, default=30, help="timed requests per endpoint")
    parser.add_argument("--budget", type=float, default=60.0, help="seconds per endpoint at most")
    parser.add_argument("--keep", type=Path, help="keep the data dirs under this folder")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        role, engine, data, *rest = args.child
        if role == "generate":
            generate(engine, int(rest[0]), Path(data))
        else:
            print(json.dumps(measure(engine, Path(data), int(rest[0]), float(rest[1]))))
        return
    sizes = [int(s) for s in args.sizes.split(",")]
    engines = [e for e in args.engines.split(",") if e in ENGINES]
    figures: dict[tuple[str, int], dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(dir=args.keep) as work:
        for size in sizes:
            for engine in engines:
                data = Path(work) / f"{engine}-{size}"
                t0 = time.perf_counter()
                _child("generate", engine, str(data), str(size))
                written = time.perf_counter() - t0
                result = json.loads(
                    _child("measure", engine, str(data), str(args.requests), str(args.budget))
                )
                result["write_s"] = written
                figures[engine, size] = result
                print(
                    f"{engine} {size:>7,}: written in {written:,.0f} s, peak RSS "
                    f"{result['rss_mib']:,.0f} MiB, total {result['total']:,}, "
                    f"open alerts listed {result['open_alerts']}",
                    file=sys.stderr,
                )
    _report(figures, sizes, engines)


def _report(
    figures: dict[tuple[str, int], dict[str, Any]], sizes: list[int], engines: list[str]
) -> None:
    print(
        "| request | studies | "
        + " | ".join(f"{e} p50 / p95 / max ms" for e in engines)
        + (" | p95 old/new |" if len(engines) == 2 else " |")
    )
    print("|---|---|" + "---|" * len(engines) + ("---|" if len(engines) == 2 else ""))
    for name in NAMES:
        for size in sizes:
            cells = []
            for engine in engines:
                r = figures[engine, size][name]
                cells.append(f"{_ms(r['p50'])} / {_ms(r['p95'])} / {_ms(r['max'])} (n={r['n']})")
            line = f"| {name} | {size:,} | " + " | ".join(cells) + " |"
            if len(engines) == 2:
                old, new = (figures[e, size][name]["p95"] for e in engines)
                line += f" {old / new:,.1f}x |"
            print(line)
    for size in sizes:
        rss = " / ".join(f"{e} {figures[e, size]['rss_mib']:,.0f} MiB" for e in engines)
        write = " / ".join(f"{e} {figures[e, size]['write_s']:,.0f} s" for e in engines)
        print(f"| peak RSS | {size:,} | {rss} | writing: {write} |")
    if "new" in engines and len(sizes) > 1:
        small, large = min(sizes), max(sizes)
        for name in NAMES:
            growth = figures["new", large][name]["p95"] / figures["new", small][name]["p95"]
            print(f"new engine {name}: p95 grows {growth:.2f}x from {small:,} to {large:,}")


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
