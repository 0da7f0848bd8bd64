"""The GPU path of the inference worker on a real CUDA device (issue 15 item 3).

Runs only where torch sees a GPU (the project's device machine; these build machines have
none, DESIGN.md section 5): the shipped demo bundle on a phantom CT, on CUDA with mixed
precision and batched windows, against the CPU path on the same tensor. With
RADPIPE_REQUIRE_GPU=true (scripts/gpu_check.sh) a machine without one fails instead.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from radpipe.demo import make_phantom
from radpipe.inference.bundle import default_bundle_path, load_bundle
from radpipe.inference.findings import segment_findings
from radpipe.inference.model import device_batch, pre_process, predict
from radpipe.inference.volume import Volume

REQUIRED = os.environ.get("RADPIPE_REQUIRE_GPU", "").lower() == "true"

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available() and not REQUIRED,
    reason="no CUDA device: the GPU path runs on the device machine (bench/gpu.py, this file)",
)


def test_the_demo_bundle_on_a_gpu_batches_windows_and_finds_what_the_cpu_finds() -> None:
    assert torch.cuda.is_available(), "RADPIPE_REQUIRE_GPU=true, but torch sees no CUDA device"
    phantom = make_phantom(np.random.default_rng(15), nodules=[12.0, 7.0])
    volume = Volume(phantom.volume.astype(np.float32), phantom.spacing, [])
    cpu = load_bundle(default_bundle_path(), "cpu")
    gpu = load_bundle(default_bundle_path(), "cuda")
    assert next(gpu.network.parameters()).is_cuda
    free, _ = torch.cuda.mem_get_info()
    batch = device_batch(gpu)
    assert batch > 1, "a GPU with memory to spare runs several windows per forward pass"

    tensor = pre_process(volume, cpu)
    torch.cuda.reset_peak_memory_stats()
    on_gpu = predict(tensor, gpu)
    peak = torch.cuda.max_memory_allocated()
    on_cpu = predict(tensor, cpu, threads=2)
    print(f"device batch {batch}, peak {peak / 2**20:.0f} MiB of {free / 2**20:.0f} MiB free")
    assert peak < free  # the batch the estimate chose fits
    assert on_gpu.dtype == np.float32 and on_gpu.shape == on_cpu.shape
    # float16 convolutions move probabilities a little, never the findings.
    assert float(np.abs(on_gpu - on_cpu).max()) < 0.05
    found_gpu, _ = segment_findings(on_gpu, volume, gpu)
    found_cpu, _ = segment_findings(on_cpu, volume, cpu)
    assert len(found_gpu) == len(found_cpu) >= 1
    for a, b in zip(found_gpu, found_cpu, strict=True):
        assert abs(a.diameter_mm - b.diameter_mm) < 0.5
