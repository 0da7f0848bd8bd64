"""Turnaround analytics benchmark: ``GET /api/tat`` p50/p95 over N studies' events, and the
import time of a RIS CSV of M rows, on the embedded store (SQLite) of ``radpipe up``.

Studies are written straight into the store (events, first instance, de-identified summary),
as the pipeline leaves them, half of them joined by a RIS row; the API is called in-process.

    python bench/tat.py --studies 10000 100000 --rows 100000
"""

from __future__ import annotations

import argparse
import math
import random
import statistics
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from fastapi.testclient import TestClient

from radpipe.app import build_app
from radpipe.common.auth import AuthService
from radpipe.common.context import Context, build_context
from radpipe.common.dicomindex import STUDY_SUMMARIES
from radpipe.common.settings import Settings
from radpipe.common.studies import StudyRepository
from radpipe.common.tat import accession_pseudonym, pseudonym_key
from radpipe.tat import service

STAGES = ("received", "stable", "deidentified", "analyzed", "alerted", "signed")


class _NoTasks:
    def send(self, stage: str, study_id: str, *, countdown: float | None = None) -> None:
        return None

    def ping(self) -> None:
        return None

    def queue_lengths(self) -> dict[str, int]:
        return {}


def context(folder: Path) -> Context:
    settings = Settings(data_dir=folder, all_in_one=True)
    return build_context(settings, tasks=_NoTasks())


def seed(ctx: Context, count: int, days: int = 28) -> list[str]:
    """``count`` studies over ``days`` days; returns their accession numbers (for the CSV)."""
    rng = random.Random(count)
    now = datetime.now(UTC)
    key = pseudonym_key(ctx.settings)
    studies = ctx.documents.collection("studies")
    instances = ctx.documents.collection("instances")
    summaries = ctx.documents.collection(STUDY_SUMMARIES)
    accessions = []
    for start in range(0, count, 1000):
        with ctx.documents.exclusive():
            for i in range(start, min(count, start + 1000)):
                # every event in the past (at most ~9 h after arrival), as in a live store
                at = now - timedelta(minutes=rng.uniform(600, days * 1440))
                steps = [0, rng.uniform(10, 60), rng.uniform(20, 120), rng.uniform(60, 900)]
                steps += [rng.uniform(5, 60), rng.uniform(600, 30000)]
                events, t = [], at
                for stage, seconds in zip(STAGES, steps, strict=True):
                    t += timedelta(seconds=seconds)
                    events.append({"type": stage, "at": t, "version": 1, "detail": {}})
                study_id, uid, accession = f"{i:024x}", f"2.25.{i + 1}", f"ACC{i:08d}"
                accessions.append(accession)
                studies.insert_one(
                    {
                        "_id": study_id,
                        "state": "signed",
                        "version": 1,
                        "created_at": at,
                        "updated_at": t,
                        "modality": rng.choice(("CT", "MR", "CR", "US")),
                        "source": rng.choice(("ct1", "mr1", "cr1")),
                        "instance_count": 1,
                        "analysis": {"risk": {"category": rng.choice(("high", "low", "none"))}},
                        "deid": {"study_uid": uid},
                        "events": events,
                    }
                )
                instances.insert_one(
                    {
                        "_id": f"i{i:031x}",
                        "study_id": study_id,
                        "received_at": at,
                        "acquired_to_received_s": rng.uniform(30, 900),
                    }
                )
                summaries.insert_one(
                    {
                        "_id": uid,
                        "study_id": study_id,
                        "attributes": {"AccessionNumber": accession_pseudonym(key, accession)},
                    }
                )
    return accessions


def ris_csv(accessions: list[str], rows: int) -> bytes:
    now = datetime.now(UTC)
    lines = ["Accession,Modality,Priority,Order Time,Exam Complete,Final Report"]
    for i in range(rows):
        accession = accessions[i] if i < len(accessions) else f"X{i:09d}"
        order = now - timedelta(days=2, minutes=i % 5000)
        done = order + timedelta(minutes=45)
        lines.append(
            f"{accession},CT,{'STAT' if i % 10 == 0 else 'ROUTINE'},"
            f"{order:%Y-%m-%d %H:%M},{done:%Y-%m-%d %H:%M},"
        )
    return ("\n".join(lines) + "\n").encode()


def bench_api(ctx: Context, calls: int) -> dict[str, float]:
    """The first call (builds every study's fact), then ``calls`` calls with nothing changed
    (p50/p95), then ``calls`` calls each after one study gained an event (incremental refresh
    and the report computed again from the facts, ``tat_report_ttl_s=0``), then the same with
    the default ttl (the last report answered, recomputed in the background)."""
    token = AuthService(ctx.documents).create_token("bench-tat", "manager")
    repo = StudyRepository(ctx.documents)
    some = [s["_id"] for s in ctx.documents.collection("studies").find({}).limit(calls)]
    headers = {"Authorization": f"Bearer {token}"}
    with TestClient(build_app(ctx, ["portal"])) as client:

        def call() -> float:
            t0 = time.perf_counter()
            answer = client.get("/api/tat", headers=headers)
            assert answer.status_code == 200, answer.text
            return time.perf_counter() - t0

        first = call()
        warm = sorted(call() for _ in range(calls))
        changed = []
        for study_id in some:
            repo.add_event(study_id, "alert.acknowledged", {})
            changed.append(call())
        changed.sort()
        ctx.settings.tat_report_ttl_s = 60.0  # the default: the last report, recomputed behind
        background = []
        for study_id in some:
            repo.add_event(study_id, "alert.acknowledged", {})
            background.append(call())
            time.sleep(0.5)
        background.sort()

    def p95(times: list[float]) -> float:
        return times[min(len(times) - 1, math.ceil(len(times) * 0.95) - 1)]

    return {
        "first": first,
        "p50": statistics.median(warm),
        "p95": p95(warm),
        "changed_p50": statistics.median(changed),
        "changed_p95": p95(changed),
        "background_p50": statistics.median(background),
        "background_p95": p95(background),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--calls", type=int, default=5)
    args = parser.parse_args()
    for count in args.studies:
        with tempfile.TemporaryDirectory() as folder:
            ctx = context(Path(folder))
            t0 = time.perf_counter()
            accessions = seed(ctx, count)
            seeded = time.perf_counter() - t0
            ctx.settings.tat_report_ttl_s = 0  # every change recomputes first: the worst case
            got = bench_api(ctx, args.calls)
            print(
                f"studies={count} seed={seeded:.1f}s /api/tat first={got['first']:.2f}s "
                f"p50={got['p50']:.3f}s p95={got['p95']:.3f}s after a change "
                f"p50={got['changed_p50']:.2f}s p95={got['changed_p95']:.2f}s (ttl 0), "
                f"p50={got['background_p50']:.3f}s p95={got['background_p95']:.3f}s (ttl 60)"
            )
            if count == args.studies[0]:
                data = ris_csv(accessions, args.rows)
                t0 = time.perf_counter()
                report, _ = service.import_ris(ctx, data, "bench")
                took = time.perf_counter() - t0
                print(
                    f"import rows={report['rows']} clean={report['clean']} "
                    f"matched={report['matched']} in {took:.1f}s"
                )
            ctx.documents.close()


if __name__ == "__main__":
    main()
