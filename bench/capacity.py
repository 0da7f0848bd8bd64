"""Capacity per stage: studies per hour with one and with two worker processes per stage.

The all-in-one stores (a data dir, the broker `radpipe up` starts) without HTTP: each repeat
stores ``--studies`` fresh studies through the ingest service (the STOW-RS path, stability wait
0), then runs the stages one at a time. For a stage, N ``radpipe worker <stage> --pool solo``
processes are started on its queue, which already holds one task per study (left there by the
stage before, whose workers are stopped), and the stage is timed by the study timeline: the
rate is ``(studies - 1) / (last - first completion)``, so worker start-up (torch's import) is not
counted. Stages: ``deid`` (stability check and de-identification, queue ``deid``),
``inference`` (queue ``inference-cpu``, ``RADPIPE_INFERENCE_THREADS=1`` per process, so two
processes use both cores), ``notify`` (alert decision and first page; no channel configured, so
no network wait). The machine is shared: medians over ``--repeats``; the load average is printed.

    .venv/bin/python bench/capacity.py [--studies 12] [--repeats 3] [--instances 32] [--size 256]
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from load import make_studies  # noqa: E402

from radpipe.stack import inference_env, local_secret, start_broker  # noqa: E402

#: stage -> the timeline events that say a study is through it
DONE = {
    "deid": ("deidentified",),
    "inference": ("analyzed",),
    "notify": ("alerted", "alert.not-required"),
}


def _time(value: datetime | str) -> datetime:
    return value if isinstance(value, datetime) else datetime.fromisoformat(value)


def completions(ctx: Any, ids: list[str], stage: str) -> list[datetime]:
    times = []
    for study_id in ids:
        study = ctx.studies.get(study_id)
        if study["state"] == "failed":
            raise SystemExit(f"{stage}: study {study_id} failed: {study.get('failure')}")
        at = [_time(e["at"]) for e in study.get("events", []) if e["type"] in DONE[stage]]
        if at:
            times.append(min(at))
    return times


def run_stage(ctx: Any, env: dict[str, str], stage: str, workers: int, ids: list[str]) -> float:
    """Studies per hour of ``workers`` processes on ``stage`` (its queue already filled)."""
    child_env = inference_env(env) if stage == "inference" else env
    processes = [
        subprocess.Popen(
            [sys.executable, "-m", "radpipe.cli", "worker", stage, "--pool", "solo"],
            env=child_env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd=ROOT,
        )
        for _ in range(workers)
    ]
    try:
        deadline = time.monotonic() + 900
        while len(times := completions(ctx, ids, stage)) < len(ids):
            if time.monotonic() > deadline:
                raise SystemExit(f"{stage}: {len(times)} of {len(ids)} done after 900 s")
            time.sleep(0.5)
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait(timeout=60)
    span = (max(times) - min(times)).total_seconds()
    return (len(ids) - 1) / span * 3600


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=12, help="studies per stage and run")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--instances", type=int, default=32, help="slices per study")
    parser.add_argument("--size", type=int, default=256, help="rows and columns per slice")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="radpipe-bench-capacity-"))
    data = work / "data"
    broker, broker_url = start_broker(work / "broker")
    env = dict(
        os.environ,
        RADPIPE_ALL_IN_ONE="true",
        RADPIPE_DATA_DIR=str(data),
        RADPIPE_BROKER_URL=broker_url,
        RADPIPE_SECRET_KEY=local_secret(data),
        RADPIPE_STUDY_STABLE_SECONDS="0",
        RADPIPE_INFERENCE_THREADS="1",
    )
    os.environ.update(env)

    from radpipe.common.context import build_context
    from radpipe.common.settings import get_settings
    from radpipe.ingest.multipart import Part
    from radpipe.ingest.service import store_parts

    get_settings.cache_clear()
    ctx = build_context(get_settings())
    rates: dict[tuple[str, int], list[float]] = {}
    load_before = os.getloadavg()
    try:
        for repeat in range(args.repeats):
            for workers in (1, 2):
                tag = f"{repeat}-{workers}"
                ids = []
                for parts in make_studies(args.studies, args.instances, args.size, tag):
                    result = store_parts(
                        ctx,
                        [Part("application/dicom", io.BytesIO(p), len(p)) for p in parts],
                        None,
                        source="bench",
                    )
                    ids.append(result.stored[0].study_id)
                for stage in DONE:
                    rate = run_stage(ctx, env, stage, workers, ids)
                    rates.setdefault((stage, workers), []).append(rate)
                    print(
                        f"repeat {repeat + 1}, {workers} worker(s), {stage:9}: "
                        f"{rate:8.0f} studies/h",
                        flush=True,
                    )
        load_after = os.getloadavg()
        print(
            f"\n{args.studies} studies of {args.instances} {args.size}x{args.size} CT slices per "
            f"run, {args.repeats} repeats, {os.cpu_count()} CPU cores (shared); load average "
            f"{load_before[0]:.1f} before, {load_after[0]:.1f} after"
        )
        print("stage      1 worker (studies/h)  2 workers (studies/h)  scaling")
        for stage in DONE:
            one = statistics.median(rates[(stage, 1)])
            two = statistics.median(rates[(stage, 2)])
            print(f"{stage:9}  {one:20.0f}  {two:21.0f}  {two / one:7.2f}")
    finally:
        ctx.documents.close()
        broker.terminate()
        broker.wait(timeout=10)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
