"""The inference worker on a host with a CUDA GPU, as real processes (issue 15 item 3).

Runs only where torch sees a GPU (the project's device machine, through
scripts/gpu_check.sh; these build machines have none, DESIGN.md section 5); with
RADPIPE_REQUIRE_GPU=true a machine without one fails instead.

1. `radpipe up` and `radpipe demo`, nothing configured: the stack decides once that this host
   infers on its GPU, its deid stage hands studies to inference-gpu, the inference worker (a
   Celery process under the supervisor, solo pool) reads that queue, and the demo's two
   studies are analysed on CUDA: the nodule study pages, the clean one does not. Before the
   queue was decided once, a GPU host's deid sent to inference-cpu, which nothing read.
2. `radpipe worker inference` with Celery's prefork pool, as the compose GPU service and the
   Kubernetes GPU overlay run it: the parent picks its queue and checks its device before it
   forks the child that runs the model, and must not start CUDA doing so (a child forked
   after `torch.cuda.is_available()` cannot use the GPU).
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest
import torch

from radpipe.common.context import build_context
from radpipe.common.secret import local_secret
from radpipe.common.settings import Settings
from radpipe.deid.service import deidentify_study
from radpipe.deid.stability import check_stable
from radpipe.demo import make_phantom, phantom_to_datasets
from radpipe.ingest.multipart import Part
from radpipe.ingest.service import store_parts
from radpipe.stack import start_broker_command

from ..dicom import to_bytes
from ..servers import free_port, radpipe_env, start_up, stop, wait_for_port

SECRET = secrets.token_hex(32)
WORKER = [sys.executable, "-m", "radpipe.cli", "worker", "inference"]

REQUIRED = os.environ.get("RADPIPE_REQUIRE_GPU", "").lower() == "true"

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available() and not REQUIRED,
    reason="no CUDA device: the GPU path runs on the device machine (scripts/gpu_check.sh)",
)


def test_up_on_a_gpu_host_analyses_the_demo_on_cuda(tmp_path: Path) -> None:
    assert torch.cuda.is_available(), "RADPIPE_REQUIRE_GPU=true, but torch sees no CUDA device"
    port, data = free_port(), tmp_path / "data"
    env = radpipe_env(RADPIPE_DATA_DIR=str(data), RADPIPE_STUDY_STABLE_SECONDS="2")
    up = start_up(env, port, tmp_path / "up.log")
    try:
        wait_for_port(port, 120)
        url = f"http://127.0.0.1:{port}"
        demo = subprocess.run(
            [sys.executable, "-m", "radpipe.cli", "demo", "--url", url, "--wait", "240"],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
    finally:
        stop(up, grace=20)
    up_log = (tmp_path / "up.log").read_text()
    print(demo.stdout)
    assert demo.returncode == 0, demo.stdout + demo.stderr + up_log[-4000:]
    assert "  inference on the GPU (queue inference-gpu)" in up_log.splitlines(), up_log[:2000]
    assert ": alerted, risk high" in demo.stdout and ": analyzed, risk none" in demo.stdout

    settings = Settings(data_dir=data, secret_key=local_secret(data), all_in_one=True)  # type: ignore[arg-type]
    ctx = build_context(settings)
    studies, total = ctx.studies.list()
    assert total == 2
    models = [study["analysis"]["model"] for study in studies]
    assert [model["device"] for model in models] == ["cuda", "cuda"], models
    assert all(not study["analysis"]["outputs_pending"] for study in studies)
    ctx.documents.close()


def test_a_prefork_inference_worker_analyses_on_cuda(tmp_path: Path) -> None:
    assert torch.cuda.is_available(), "RADPIPE_REQUIRE_GPU=true, but torch sees no CUDA device"
    data = tmp_path / "data"
    broker, url, _ = start_broker_command(tmp_path / "broker")
    settings = Settings(data_dir=data, secret_key=SECRET, broker_url=url)  # type: ignore[arg-type]
    env = radpipe_env(RADPIPE_DATA_DIR=str(data), RADPIPE_SECRET_KEY=SECRET, RADPIPE_BROKER_URL=url)
    log = (tmp_path / "worker.log").open("wb")
    worker = subprocess.Popen(
        [*WORKER, "--pool", "prefork", "--concurrency", "1"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        ctx = build_context(settings)
        phantom = make_phantom(15, nodules=[12.0], shape=(48, 192, 192), spacing=(2.0, 1.4, 1.4))
        parts = [
            Part.from_bytes("application/dicom", to_bytes(ds))
            for ds in phantom_to_datasets(phantom)
        ]
        stored = store_parts(ctx, parts, None)
        assert not stored.failed
        study_id = stored.stored[0].study_id
        last = ctx.studies.get(study_id)["last_instance_at"]
        quiet = timedelta(seconds=settings.study_stable_seconds + 1)
        check_stable(ctx, study_id, clock=lambda: last + quiet)
        deidentify_study(ctx, study_id)  # hands the study to inference-gpu, this host's queue

        deadline = time.monotonic() + 180
        study = ctx.studies.get(study_id)
        while time.monotonic() < deadline and not done(study):
            time.sleep(0.5)
            study = ctx.studies.get(study_id)
        worker_log = (tmp_path / "worker.log").read_text(errors="replace")
        assert study["state"] == "analyzed", (
            study["state"],
            study.get("reason"),
            worker_log[-4000:],
        )
        assert study["analysis"]["model"]["device"] == "cuda"
        assert study["analysis"]["findings"], "the 12 mm nodule is found"
        assert "initialization error" not in worker_log
        ctx.documents.close()
    finally:
        stop(worker, grace=20)
        stop(broker)


def done(study: dict[str, object]) -> bool:
    """Failed, or analysed with its result objects written."""
    analysis = study.get("analysis") or {}
    return study["state"] == "failed" or analysis.get("outputs_pending") is False  # type: ignore[union-attr]
