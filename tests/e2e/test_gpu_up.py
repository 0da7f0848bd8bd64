"""`radpipe up` and `radpipe demo` on a host with a CUDA GPU (issue 15 item 3).

Runs only where torch sees a GPU (the project's device machine, through
scripts/gpu_check.sh; these build machines have none, DESIGN.md section 5); with
RADPIPE_REQUIRE_GPU=true a machine without one fails instead. Nothing is configured: the
stack decides once that this host infers on its GPU, its deid stage hands studies to
inference-gpu, the inference worker (a real Celery process under the supervisor) reads that
queue, and the demo's two studies are analysed on CUDA: the nodule study pages, the clean one
does not. Before the queue was decided once, a GPU host's deid sent to inference-cpu, which
nothing read, and no study was ever analysed.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from radpipe.common.context import build_context
from radpipe.common.secret import local_secret
from radpipe.common.settings import Settings

from ..servers import free_port, radpipe_env, stop, wait_for_port

REQUIRED = os.environ.get("RADPIPE_REQUIRE_GPU", "").lower() == "true"

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available() and not REQUIRED,
    reason="no CUDA device: the GPU path runs on the device machine (scripts/gpu_check.sh)",
)


def test_up_on_a_gpu_host_analyses_the_demo_on_cuda(tmp_path: Path) -> None:
    assert torch.cuda.is_available(), "RADPIPE_REQUIRE_GPU=true, but torch sees no CUDA device"
    port, data = free_port(), tmp_path / "data"
    env = radpipe_env(RADPIPE_DATA_DIR=str(data), RADPIPE_STUDY_STABLE_SECONDS="2")
    log = (tmp_path / "up.log").open("wb")
    up = subprocess.Popen(
        [sys.executable, "-m", "radpipe.cli", "up", "--port", str(port)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
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
