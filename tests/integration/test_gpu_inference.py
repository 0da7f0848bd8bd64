"""The GPU path of the inference worker on a real CUDA device (issue 15 item 3).

Runs only where torch sees a GPU (the project's device machine; these build machines have
none, DESIGN.md section 5): the shipped demo bundle on a phantom CT, on CUDA with mixed
precision and batched windows, against the CPU path on the same tensor. With
RADPIPE_REQUIRE_GPU=true (scripts/gpu_check.sh) a machine without one fails instead. Then
the MONAI Model Zoo bundles the unit tests build (segmentation, detection, classification)
run on the GPU with their own configs and give what they give on the CPU.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch

from radpipe.demo import make_phantom, phantom_to_datasets
from radpipe.inference.bundle import default_bundle_path, load_bundle, select_device
from radpipe.inference.findings import segment_findings
from radpipe.inference.model import device_batch, pre_process, predict
from radpipe.inference.outputs import build_results
from radpipe.inference.service import analyze
from radpipe.inference.volume import Volume, series_to_volume
from radpipe.inference.zoo import ZooResult, load_model, run_zoo

from ..zoo_bundles import (
    classification_bundle,
    detection_bundle,
    sample_series,
    segmentation_bundle,
)

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


def test_the_worker_stage_picks_the_gpu_by_default_and_writes_what_the_cpu_writes() -> None:
    """What the inference worker runs per study (`radpipe.inference.stage`): the device its
    default setting `auto` selects, `analyze` on the DICOM instances, then the result objects."""
    assert torch.cuda.is_available(), "RADPIPE_REQUIRE_GPU=true, but torch sees no CUDA device"
    device = select_device("auto")
    assert device.type == "cuda"
    series = phantom_to_datasets(make_phantom(np.random.default_rng(15), nodules=[12.0, 7.0]))
    on_gpu = analyze(series, load_model(default_bundle_path(), device))
    on_cpu = analyze(series, load_model(default_bundle_path(), torch.device("cpu")), threads=2)
    assert on_gpu.model["device"].startswith("cuda") and on_cpu.model["device"] == "cpu"
    print(f"analyze on {on_gpu.model['device']}: {on_gpu.timings}")
    assert len(on_gpu.findings) == len(on_cpu.findings) >= 1
    for a, b in zip(on_gpu.findings, on_cpu.findings, strict=True):
        assert abs(a.diameter_mm - b.diameter_mm) < 0.5
    assert on_gpu.risk.category == on_cpu.risk.category
    assert abs(on_gpu.risk.score - on_cpu.risk.score) < 0.05
    assert on_gpu.volume is not None
    by_uid = {str(ds.SOPInstanceUID): ds for ds in series}
    built = build_results(
        [by_uid[u] for u in on_gpu.input_sop_uids],
        on_gpu.volume,
        on_gpu,
        uid=lambda purpose: pydicom.uid.generate_uid(entropy_srcs=[purpose]),
    )
    assert {obj.kind for obj in built.objects} == {"seg", "sr", "key-image"}


ZOO_BUNDLES = {
    "threshold segmentation": lambda root: segmentation_bundle(root, network="threshold"),
    "unet segmentation": segmentation_bundle,
    "retinanet detection": detection_bundle,
    "densenet classification": classification_bundle,
}


@pytest.mark.parametrize("name", list(ZOO_BUNDLES))
def test_a_zoo_bundle_on_a_gpu_gives_what_it_gives_on_the_cpu(name: str, tmp_path: Path) -> None:
    assert torch.cuda.is_available(), "RADPIPE_REQUIRE_GPU=true, but torch sees no CUDA device"
    volume = series_to_volume(sample_series())
    root = ZOO_BUNDLES[name](tmp_path / "bundle")
    on_cpu = run_zoo(volume, load_model(root, torch.device("cpu")))  # type: ignore[arg-type]
    gpu = load_model(root, torch.device("cuda"))
    assert next(gpu.network.parameters()).is_cuda  # its own config put the network there
    on_gpu = run_zoo(volume, gpu)  # type: ignore[arg-type]
    print(f"{name}: {len(on_gpu.findings)} findings, {len(on_gpu.evaluations)} classes")
    assert_same_result(on_cpu, on_gpu)


def assert_same_result(cpu: ZooResult, gpu: ZooResult) -> None:
    """float16 convolutions may move a score or a boundary voxel, never the result's meaning."""
    assert gpu.kind == cpu.kind and gpu.label_map.shape == cpu.label_map.shape
    if cpu.kind == "classification":
        assert [e.name for e in gpu.evaluations] == [e.name for e in cpu.evaluations]
        for a, b in zip(gpu.evaluations, cpu.evaluations, strict=True):
            assert abs(a.probability - b.probability) < 0.01 and a.selected == b.selected
        return
    assert cpu.findings, "the sample must give the bundle something to find"
    if cpu.kind == "segmentation":
        assert [f.name for f in gpu.findings] == [f.name for f in cpu.findings]
        assert float((gpu.label_map == cpu.label_map).mean()) > 0.99
        return
    # Detection: scores nearly tied among the tiny network's boxes may reorder them, so each
    # CPU box is looked for among the GPU's, by centre and score.
    assert len(gpu.findings) == len(cpu.findings)
    matched = sum(
        any(
            np.linalg.norm(np.subtract(g.center_patient_xyz, c.center_patient_xyz)) < 3.0
            and abs(g.probability - c.probability) < 0.02
            for g in gpu.findings
        )
        for c in cpu.findings
    )
    assert matched >= 0.8 * len(cpu.findings)
