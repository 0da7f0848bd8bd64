"""Load: four concurrent STOW-RS clients pushing twenty studies each, Radpipe against Orthanc.

Each client sends its studies one after another, one STOW-RS request per study (the way a
modality or a router forwards a finished study); the four clients run at once. Both servers get
the same studies (fresh UIDs every round, so neither sees a re-send) and rounds alternate
between them, as in ``bench/ingest.py``, whose helpers start both. A 503 (back-pressure) is
retried after its Retry-After (capped at 5 s) and counted; anything else that is not a full
success is an error. Reports studies/s per round, the median ratio Radpipe/Orthanc, errors,
and the peak RSS (VmHWM) of every process: each of `radpipe up` (API workers, stage workers,
broker) and Orthanc. With ``--pipeline`` the stages run while the load goes on (the stability
wait is 1 s instead of an hour), so the workers' memory is measured under work too.

    .venv/bin/python bench/load.py [--clients 4] [--studies 20] [--instances 20] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from _up import start_up, wait_until_idle  # noqa: E402
from ingest import start_orthanc  # noqa: E402

from radpipe.common.mime import encode_multipart  # noqa: E402
from radpipe.demo import make_phantom, phantom_to_datasets  # noqa: E402

Study = list[bytes]


@dataclass
class Tally:
    studies: int = 0
    errors: list[str] = field(default_factory=list)
    busy: int = 0


def make_studies(count: int, instances: int, size: int, tag: str) -> list[Study]:
    """``count`` studies of ``instances`` CT slices, each with its own UIDs and patient."""
    from io import BytesIO

    import pydicom

    pixel = 350.0 / size  # a 35 cm field of view whatever the matrix
    phantom = make_phantom(
        11, nodules=[12.0], shape=(instances, size, size), spacing=(2.5, pixel, pixel)
    )
    studies = []
    for n in range(count):
        datasets = phantom_to_datasets(phantom, patient_id=f"LOAD{tag}-{n}", accession=f"A{n}")
        parts = []
        for ds in datasets:
            buffer = BytesIO()
            pydicom.dcmwrite(buffer, ds, enforce_file_format=True)
            parts.append(buffer.getvalue())
        studies.append(parts)
    return studies


def send_study(http: httpx.Client, url: str, study: Study, tally: Tally) -> None:
    body, content_type = encode_multipart(study)
    headers = {"Content-Type": content_type, "Accept": "application/dicom+json"}
    for _ in range(20):
        try:
            response = http.post(f"{url}/studies", content=body, headers=headers)
        except httpx.HTTPError as exc:
            tally.errors.append(type(exc).__name__)
            return
        if response.status_code == 503:
            tally.busy += 1
            time.sleep(min(float(response.headers.get("retry-after", "1")), 5.0))
            continue
        stored = len(response.json().get("00081199", {}).get("Value", []))
        if response.status_code != 200 or stored != len(study):
            tally.errors.append(f"{response.status_code} ({stored}/{len(study)} stored)")
        else:
            tally.studies += 1
        return
    tally.errors.append("503 twenty times")


def run_clients(url: str, token: str, groups: list[list[Study]]) -> tuple[float, Tally]:
    """Every group pushed by its own client at once; (seconds, tally)."""
    tally = Tally()

    def client(studies: list[Study]) -> None:
        auth = {"Authorization": f"Bearer {token}"}
        with httpx.Client(timeout=300, headers=auth) as http:
            for study in studies:
                send_study(http, url, study, tally)

    start = time.perf_counter()
    with ThreadPoolExecutor(len(groups)) as pool:
        list(pool.map(client, groups))
    return time.perf_counter() - start, tally


def process_tree(root: int) -> list[int]:
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int(
                    (entry / "stat").read_text().rsplit(")", 1)[1].split()[1]
                )
            except OSError:
                continue
    tree, frontier = [root], [root]
    while frontier:
        pid = frontier.pop()
        children = [child for child, parent in parents.items() if parent == pid]
        tree.extend(children)
        frontier.extend(children)
    return tree


def peak_rss(root: int) -> list[tuple[str, float]]:
    """(command, peak RSS in MB) of ``root`` and every process below it."""
    rows = []
    for pid in process_tree(root):
        try:
            status = Path(f"/proc/{pid}/status").read_text()
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        if "VmHWM" not in fields:
            continue
        words = [Path(a.decode(errors="replace")).name for a in argv if a][:6]
        name = " ".join(words)
        if "multiprocessing" in name:
            name = "uvicorn child (HTTP worker, or its process tracker)"
        rows.append((f"{name[:60]} (pid {pid})", int(fields["VmHWM"].split()[0]) / 1024))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--studies", type=int, default=20, help="studies per client")
    parser.add_argument("--instances", type=int, default=20, help="slices per study")
    parser.add_argument("--size", type=int, default=256, help="rows and columns per slice")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--pipeline", action="store_true", help="let the stages run too")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="radpipe-bench-load-"))
    stable = "1" if args.pipeline else "3600"  # 3600: measure intake alone, as Orthanc does
    env = dict(os.environ, RADPIPE_STUDY_STABLE_SECONDS=stable)
    orthanc, orthanc_url = start_orthanc(work)
    radpipe, base, token = start_up(work / "radpipe", env, "modality", log=work / "up.log")
    radpipe_url = f"{base}/dicom-web"
    wait_until_idle(radpipe.pid)
    total = args.clients * args.studies
    try:
        ratios, rates = [], {"orthanc": [], "radpipe": []}  # type: ignore[var-annotated]
        errors = {"orthanc": 0, "radpipe": 0}
        busy = 0
        for round_ in range(args.rounds):
            studies = make_studies(total, args.instances, args.size, str(round_))
            groups = [studies[i :: args.clients] for i in range(args.clients)]
            megabytes = sum(len(p) for s in studies for p in s) / 1e6
            t_orthanc, o = run_clients(orthanc_url, "unused", groups)
            t_radpipe, r = run_clients(radpipe_url, token, groups)
            errors["orthanc"] += len(o.errors)
            errors["radpipe"] += len(r.errors)
            busy += r.busy
            rates["orthanc"].append(o.studies / t_orthanc)
            rates["radpipe"].append(r.studies / t_radpipe)
            ratios.append(rates["radpipe"][-1] / rates["orthanc"][-1])
            print(
                f"round {round_ + 1}: {total} studies ({megabytes:.0f} MB) by {args.clients} "
                f"clients | orthanc {rates['orthanc'][-1]:5.2f} studies/s, "
                f"{len(o.errors)} errors | radpipe {rates['radpipe'][-1]:5.2f} studies/s, "
                f"{len(r.errors)} errors, {r.busy} busy (503) | ratio {ratios[-1]:.2f}"
                + (f" | radpipe errors: {sorted(set(r.errors))}" if r.errors else "")
            )
        print(
            f"\n{args.clients} clients x {args.studies} studies of {args.instances} "
            f"{args.size}x{args.size} CT slices, {args.rounds} rounds, {os.cpu_count()} CPU cores"
            f"{', stages running' if args.pipeline else ', intake only'}"
        )
        print(f"median orthanc  {statistics.median(rates['orthanc']):5.2f} studies/s")
        print(f"median radpipe  {statistics.median(rates['radpipe']):5.2f} studies/s")
        print(f"median ratio radpipe/orthanc (throughput) {statistics.median(ratios):.2f}")
        print(f"errors: radpipe {errors['radpipe']}, orthanc {errors['orthanc']}; 503s {busy}")
        print("peak RSS per process (MB):")
        for name, mb in peak_rss(radpipe.pid) + peak_rss(orthanc.pid):
            print(f"  {mb:7.0f}  {name}")
    finally:
        for process in (radpipe, orthanc):
            process.terminate()
            process.wait(timeout=30)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
