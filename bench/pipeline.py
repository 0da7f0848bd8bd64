"""Upload-to-alert latency of a 100-slice 512x512 CT on `radpipe up`, against the bare model.

The anchor is the same MONAI bundle called directly in-process on the same slices
(``radpipe.inference.service.analyze``): the ratio says what the pipeline (stability wait,
de-identification, queues, stores, notification) adds on top of the model itself.
Rounds alternate and each pushes a fresh study. Prints medians and the ratio.

    .venv/bin/python bench/pipeline.py [--rounds 3] [--slices 100] [--stable-seconds 1]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from _up import start_up, wait_until_idle  # noqa: E402

from radpipe.client import iter_files, push  # noqa: E402
from radpipe.demo import make_phantom, phantom_to_datasets, write_series  # noqa: E402


def direct_seconds(folder: Path, threads: int) -> float:
    import pydicom

    from radpipe.inference.bundle import default_bundle_path, load_bundle
    from radpipe.inference.service import analyze

    bundle = load_bundle(default_bundle_path())
    datasets = [pydicom.dcmread(p) for p in sorted(folder.iterdir())]
    start = time.perf_counter()
    analyze(datasets, bundle, threads=threads)
    return time.perf_counter() - start


def reader_token(data: Path, env: dict[str, str]) -> str:
    """A radiologist token in the stack's store (``radpipe token create``'s last line)."""
    command = ["token", "create", "--role", "radiologist", "--name", "bench-reader"]
    created = subprocess.run(
        [sys.executable, "-m", "radpipe.cli", *command],
        env={**env, "RADPIPE_DATA_DIR": str(data)},
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    )
    return created.stdout.splitlines()[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--slices", type=int, default=100)
    parser.add_argument("--stable-seconds", type=float, default=1.0)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="radpipe-bench-"))
    env = dict(
        os.environ,
        RADPIPE_STUDY_STABLE_SECONDS=str(args.stable_seconds),
        RADPIPE_INFERENCE_THREADS=str(os.cpu_count() or 1),
    )
    # A modality pushes and a radiologist reads the alerts (admin is not a clinical role).
    server, url, token = start_up(work / "data", env, "modality", log=work / "up.log")
    reader = {"Authorization": f"Bearer {reader_token(work / 'data', env)}"}
    wait_until_idle(server.pid)
    try:
        pipeline, direct = [], []
        for round_ in range(args.rounds):
            phantom = make_phantom(
                500 + round_,
                nodules=[14.0],
                shape=(args.slices, 512, 512),
                spacing=(2.5, 0.7, 0.7),
            )
            folder = work / f"study{round_}"
            write_series(phantom_to_datasets(phantom, patient_id=f"BENCH{round_}"), folder)
            direct.append(direct_seconds(folder, os.cpu_count() or 1))
            seen = len(httpx.get(f"{url}/api/alerts", headers=reader).json())
            push(list(iter_files([folder])), f"{url}/dicom-web", token, show_progress=False)
            uploaded = time.perf_counter()
            while True:
                alerts = httpx.get(f"{url}/api/alerts", headers=reader).json()
                if len(alerts) > seen:
                    break
                if time.perf_counter() - uploaded > 600:
                    raise SystemExit(f"no alert after 600 s; see {work / 'up.log'}")
                time.sleep(0.2)
            pipeline.append(time.perf_counter() - uploaded)
            print(
                f"round {round_ + 1}: upload->alert {pipeline[-1]:.1f} s, "
                f"model alone {direct[-1]:.1f} s"
            )
        p, d = statistics.median(pipeline), statistics.median(direct)
        print(
            f"\n{args.slices}-slice 512x512 CT, {os.cpu_count()} CPU cores, "
            f"stable wait {args.stable_seconds:.0f} s, {args.rounds} rounds"
        )
        print(f"median upload->alert (radpipe up): {p:.1f} s")
        print(f"median model alone (anchor):       {d:.1f} s")
        print(f"ratio pipeline / model alone:      {p / d:.2f}")
    finally:
        server.terminate()
        server.wait(timeout=30)


if __name__ == "__main__":
    main()
