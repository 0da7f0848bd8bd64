"""STOW-RS ingest: Radpipe (`radpipe up`) against Orthanc's DICOMweb plugin, same client.

Both servers run on loopback in their own temp dirs and get the same files (a fresh series,
new UIDs, for every round, so neither sees a re-send); rounds alternate. Reports
files/s and MB/s per round, the median ratio Radpipe/Orthanc, Radpipe's peak RSS, and the same
with four concurrent clients. Needs Debian's `orthanc` and `orthanc-dicomweb`.

    .venv/bin/python bench/ingest.py [--files 100] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from _up import start_up, wait_until_idle  # noqa: E402

from radpipe.client import push  # noqa: E402
from radpipe.demo import make_phantom, phantom_to_datasets, write_series  # noqa: E402
from radpipe.stack import free_port, wait_for_port  # noqa: E402

PLUGIN = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"


def start_orthanc(work: Path) -> tuple[subprocess.Popen[bytes], str]:
    port, dicom = free_port(), free_port()
    config = {
        "StorageDirectory": str(work / "orthanc"),
        "HttpPort": port,
        "DicomPort": dicom,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "Plugins": [PLUGIN],
        "DicomWeb": {"Enable": True},
        "HttpCompressionEnabled": False,
    }
    (work / "orthanc.json").write_text(json.dumps(config))
    binary = shutil.which("Orthanc") or "/usr/sbin/Orthanc"
    process = subprocess.Popen(
        [binary, str(work / "orthanc.json")], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    wait_for_port(port, 30)
    return process, f"http://127.0.0.1:{port}/dicom-web"


def start_radpipe(work: Path) -> tuple[subprocess.Popen[bytes], str, str]:
    env = dict(os.environ, RADPIPE_STUDY_STABLE_SECONDS="3600")  # measure ingest alone
    process, url, token = start_up(work / "radpipe", env, "modality")
    wait_until_idle(process.pid)
    return process, f"{url}/dicom-web", token


def peak_rss_mb(pid: int) -> float:
    """Largest peak RSS among the HTTP processes of `radpipe up` (the server and its workers)."""
    peaks = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            status = (entry / "status").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        parent = int(fields.get("PPid", "0").strip() or 0)
        if int(entry.name) != pid and (parent != pid or "radpipe.cli worker" in cmdline):
            continue
        if "valkey" in cmdline:
            continue
        if "VmHWM" in fields:
            peaks.append(int(fields["VmHWM"].split()[0]) / 1024)
    return max(peaks, default=float("nan"))


def timed_push(files: list[Path], url: str, token: str, clients: int) -> float:
    groups = [files[i::clients] for i in range(clients)]
    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        reports = list(pool.map(lambda g: push(g, url, token, show_progress=False), groups))
    elapsed = time.perf_counter() - start
    stored = sum(r.stored for r in reports)
    if stored != len(files):
        raise SystemExit(f"{url}: only {stored} of {len(files)} stored")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="radpipe-bench-ingest-"))
    phantom = make_phantom(7, nodules=[10.0], shape=(args.files, 512, 512), spacing=(2.5, 0.7, 0.7))
    series = [
        write_series(phantom_to_datasets(phantom), work / f"series{n}")
        for n in range(2 * args.rounds)
    ]
    files = series[0]
    megabytes = sum(f.stat().st_size for f in files) / 1e6
    orthanc, orthanc_url = start_orthanc(work)
    radpipe, radpipe_url, token = start_radpipe(work)
    try:
        for clients in (1, 4):
            ratios = []
            for round_ in range(args.rounds):
                files = series[round_ + (args.rounds if clients > 1 else 0)]
                t_orthanc = timed_push(files, orthanc_url, "unused", clients)
                t_radpipe = timed_push(files, radpipe_url, token, clients)
                ratios.append(t_orthanc / t_radpipe)
                print(
                    f"clients={clients} round {round_ + 1}: "
                    f"orthanc {len(files) / t_orthanc:6.1f} files/s "
                    f"{megabytes / t_orthanc:6.1f} MB/s"
                    f" | radpipe {len(files) / t_radpipe:6.1f} files/s "
                    f"{megabytes / t_radpipe:6.1f} MB/s | ratio {ratios[-1]:.2f}"
                )
            print(
                f"clients={clients}: median ratio radpipe/orthanc (throughput) "
                f"{statistics.median(ratios):.2f}"
            )
        print(
            f"{len(files)} files of 512x512 CT, {megabytes:.0f} MB; "
            f"radpipe API peak RSS {peak_rss_mb(radpipe.pid):.0f} MB"
        )
    finally:
        for process in (radpipe, orthanc):
            process.terminate()
            process.wait(timeout=30)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
