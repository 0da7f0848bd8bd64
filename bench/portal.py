"""The portal's pages at scale: the HTML worklist and study page p50/p95 at 10,000 and 100,000
studies on the embedded store (goal: the page p95 <= 150 ms at 100,000).

The studies, alerts and DICOM index are written as ``bench/store.py`` writes them (a running
department's mix of states, risks and alerts), in a child process; a second child serves the
real app in-process (FastAPI's ``TestClient`` over ``build_app``, the routes and store code
``radpipe up`` serves) and times sequential requests of a radiologist (bearer token) and of a
resident (the blinded path: waiting order, reads looked up per page):

* ``GET /`` (the worklist page: 50 studies, the open alerts), filtered by AI risk, and by
  modality and received dates, and its page 20;
* ``GET /studies/{id}`` (the study page with the viewer's slice list) for random studies;
* the same two pages as a resident.

    .venv/bin/python bench/portal.py [--sizes 10000,100000] [--requests 30]
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from store import _ms, generate, timed_gets  # type: ignore[import-not-found]

REQUESTS = [
    ("worklist page", "radiologist", "/"),
    ("worklist page, risk=high", "radiologist", "/?risk=high"),
    ("worklist page, CT since a date", "radiologist", "/?modality=CT&since=2026-01-20"),
    ("worklist page 20", "radiologist", "/?offset=950&limit=50"),
    ("study page", "radiologist", None),
    ("worklist page (resident)", "resident", "/"),
    ("study page (resident)", "resident", None),
]
NAMES = [name for name, _, _ in REQUESTS]


def measure(data: Path, requests: int, budget: float) -> dict[str, Any]:
    from fastapi.testclient import TestClient
    from store import bench_context  # type: ignore[import-not-found]

    from radpipe.app import build_app
    from radpipe.common.auth import AuthService

    ctx = bench_context("new", data)
    documents = ctx.documents
    from radpipe.common import blinding

    blinding.ensure_indexes(documents)
    auth = AuthService(documents)
    tokens = {
        role: auth.create_token(f"bench-{role}", role) for role in ("radiologist", "resident")
    }
    ids = [d["_id"] for d in ctx.studies.studies.find({}).limit(500)]
    rng = random.Random(1)
    results: dict[str, Any] = {}
    with TestClient(build_app(ctx, ["ingest", "portal", "notify"])) as client:
        for name, role, path in REQUESTS:
            headers = {"Authorization": f"Bearer {tokens[role]}"}
            results[name] = timed_gets(
                client,
                lambda path=path: path or f"/studies/{rng.choice(ids)}",
                headers,
                requests,
                budget,
            )
        results["total"] = ctx.studies.studies.count_documents({})
        results["rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    documents.close()
    return results


def _run(*args: str) -> str:
    import subprocess

    done = subprocess.run(
        [sys.executable, "-W", "ignore", __file__, "--child", *args],
        stdout=subprocess.PIPE,
        check=True,
    )
    return done.stdout.decode()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,100000", help="comma-separated study counts")
    parser.add_argument("--requests", type=int, default=30, help="timed requests per page")
    parser.add_argument("--budget", type=float, default=60.0, help="seconds per page at most")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        role, data, *rest = args.child
        if role == "generate":
            generate("new", int(rest[0]), Path(data))
        else:
            print(json.dumps(measure(Path(data), int(rest[0]), float(rest[1]))))
        return
    sizes = [int(s) for s in args.sizes.split(",")]
    figures: dict[int, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as work:
        for size in sizes:
            data = Path(work) / f"portal-{size}"
            t0 = time.perf_counter()
            _run("generate", str(data), str(size))
            written = time.perf_counter() - t0
            figures[size] = json.loads(
                _run("measure", str(data), str(args.requests), str(args.budget))
            )
            print(
                f"{size:>7,}: written in {written:,.0f} s, peak RSS "
                f"{figures[size]['rss_mib']:,.0f} MiB",
                file=sys.stderr,
            )
    print("| page | " + " | ".join(f"{s:,} studies p50 / p95 ms" for s in sizes) + " |")
    print("|---|" + "---|" * len(sizes))
    for name in NAMES:
        cells = []
        for size in sizes:
            r = figures[size][name]
            cells.append(f"{_ms(r['p50'])} / {_ms(r['p95'])} (n={r['n']})")
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
