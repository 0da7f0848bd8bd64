"""De-identification of a folder: `radpipe deid` against dicognito, both as whole processes.

The same folder of 512x512 CT files goes through `python -m dicognito --output-directory` and
through `radpipe deid --out` (one process per core, its default), each into a fresh folder,
neither touching the input. Rounds alternate the tools, and which goes first alternates per
round. The clock covers the whole process, interpreter start and imports included. Prints
files/s per round, the median ratio Radpipe/dicognito (throughput) and the medians of files/s.

    .venv/bin/python bench/deid.py [--files 400] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from radpipe.demo import make_phantom, phantom_to_datasets, write_series  # noqa: E402

SECRET = "8d1f0c6a3e9b27d45f10a8c3e6b9d2f7a4c1e8b5"  # random hex; the output is thrown away


def command(tool: str, folder: Path, out: Path) -> list[str]:
    if tool == "copy":  # the I/O ceiling: the same bytes read and written, nothing else
        return ["cp", "-r", str(folder), str(out)]
    if tool == "dicognito":  # --quiet: no summary table of studies, just the files
        args = ["dicognito", "--quiet", "--output-directory", str(out), str(folder)]
    else:
        args = ["radpipe.cli", "deid", str(folder), "--out", str(out)]
    return [sys.executable, "-m", *args]


def written(out: Path) -> int:
    """Finished files under ``out`` (temporaries and hidden files not counted)."""
    return sum(1 for p in out.rglob("*") if p.is_file() and not p.name.startswith("."))


def timed_run(tool: str, folder: Path, out: Path, expected: int) -> float:
    env = dict(os.environ, RADPIPE_SECRET_KEY=SECRET)
    start = time.perf_counter()
    result = subprocess.run(
        command(tool, folder, out), cwd=ROOT, env=env, capture_output=True, text=True
    )
    elapsed = time.perf_counter() - start
    count = written(out) if out.is_dir() else 0
    if result.returncode != 0 or count != expected:
        raise SystemExit(
            f"{tool}: exit status {result.returncode}, wrote {count} of {expected} files\n"
            f"{result.stdout}{result.stderr}"
        )
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    # 400 slices: a thin-slice chest CT; start-up (~0.4 s for either tool) is then not the
    # main cost. --files 100 shows the start-up-bound case.
    parser.add_argument("--files", type=int, default=400)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="radpipe-bench-deid-"))
    try:
        phantom = make_phantom(7, nodules=[], shape=(args.files, 512, 512), spacing=(2.5, 0.7, 0.7))
        folder = work / "input"
        files = write_series(phantom_to_datasets(phantom), folder)
        megabytes = sum(f.stat().st_size for f in files) / 1e6
        rates: dict[str, list[float]] = {"dicognito": [], "radpipe": [], "copy": []}
        ratios = []
        for round_ in range(args.rounds):
            order = ["dicognito", "radpipe"] if round_ % 2 == 0 else ["radpipe", "dicognito"]
            order.append("copy")
            for tool in order:
                out = work / f"{tool}-out{round_}"
                rates[tool].append(len(files) / timed_run(tool, folder, out, len(files)))
                shutil.rmtree(out)
                out.with_name(out.name + ".report.json").unlink(missing_ok=True)
            ratios.append(rates["radpipe"][-1] / rates["dicognito"][-1])
            print(
                f"round {round_ + 1} ({order[0]} first): "
                f"dicognito {rates['dicognito'][-1]:6.1f} files/s"
                f" | radpipe {rates['radpipe'][-1]:6.1f} files/s | ratio {ratios[-1]:.2f}"
                f" | cp -r {rates['copy'][-1]:6.1f} files/s"
            )
        print(
            f"{len(files)} files of 512x512 CT, {megabytes:.0f} MB, {os.cpu_count()} CPU cores; "
            f"median files/s: dicognito {statistics.median(rates['dicognito']):.1f}, "
            f"radpipe {statistics.median(rates['radpipe']):.1f}"
        )
        print(f"median ratio radpipe/dicognito (throughput) {statistics.median(ratios):.2f}")
        copy = statistics.median(rates["copy"])
        print(
            f"I/O ceiling: cp -r of the same folder {copy:.1f} files/s; radpipe reaches "
            f"{statistics.median(rates['radpipe']) / copy:.2f} of it, dicognito "
            f"{statistics.median(rates['dicognito']) / copy:.2f}"
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
