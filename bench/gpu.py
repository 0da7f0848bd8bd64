"""The demo bundle's prediction on a GPU (mixed precision, batched windows) against the CPU.

A 100-slice 512x512 CT phantom (2.5 x 0.7 x 0.7 mm, one 12 mm nodule), pre-processed once.
Each round times `predict` three ways on the same tensor: the CPU path (the anchor: what the
inference-cpu worker runs, `--threads` intra-op threads), CUDA in float32 one window at a time
(what a naive port would do) and the worker's CUDA path (autocast, `device_batch` windows per
forward). Prints the medians, the ratios against the anchor, the device batch and the peak
GPU memory. Where torch sees no GPU it says so and exits 0 (these build machines have none;
the project's device machine has one).

    .venv/bin/python bench/gpu.py [--rounds 5] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from radpipe.demo import make_phantom  # noqa: E402
from radpipe.inference.bundle import default_bundle_path, load_bundle  # noqa: E402
from radpipe.inference.model import device_batch, pre_process, predict  # noqa: E402
from radpipe.inference.volume import Volume  # noqa: E402


def _timed(run: object) -> float:
    torch.cuda.synchronize()
    start = time.perf_counter()
    run()  # type: ignore[operator]
    torch.cuda.synchronize()
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("no CUDA device here: run this on a machine with a GPU (nothing measured)")
        return 0
    phantom = make_phantom(
        np.random.default_rng(0), nodules=[12.0], shape=(100, 512, 512), spacing=(2.5, 0.7, 0.7)
    )
    volume = Volume(phantom.volume.astype(np.float32), phantom.spacing, [])
    cpu = load_bundle(default_bundle_path(), "cpu")
    gpu = load_bundle(default_bundle_path(), "cuda")
    tensor = pre_process(volume, cpu)
    batch = device_batch(gpu)
    plain = replace(gpu, device=torch.device("cuda"))

    def fp32_one_window() -> None:
        # The same network without autocast and one window per forward.
        from monai.inferers import sliding_window_inference

        with torch.inference_mode():
            sliding_window_inference(
                tensor[None].cuda(),
                plain.roi_size,
                1,
                plain.network,
                plain.overlap,
                mode="gaussian",
            )

    predict(tensor, gpu)  # warm-up: cuDNN picks its algorithms, the allocator fills
    fp32_one_window()
    times: dict[str, list[float]] = {"cpu": [], "cuda fp32 batch 1": [], "cuda amp batched": []}
    torch.cuda.reset_peak_memory_stats()
    for r in range(args.rounds):
        start = time.perf_counter()
        predict(tensor, cpu, threads=args.threads)
        times["cpu"].append(time.perf_counter() - start)
        times["cuda fp32 batch 1"].append(_timed(fp32_one_window))
        times["cuda amp batched"].append(_timed(lambda: predict(tensor, gpu)))
        print(
            f"  round {r + 1}/{args.rounds}: "
            + ", ".join(f"{k} {v[-1]:.3f} s" for k, v in times.items()),
            flush=True,
        )
    anchor = statistics.median(times["cpu"])
    print(
        f"\n{torch.cuda.get_device_name()}; grid {tuple(tensor.shape[1:])}, windows "
        f"{gpu.roi_size}, device batch {batch}, peak GPU memory "
        f"{torch.cuda.max_memory_allocated() / 2**20:.0f} MiB"
    )
    print("| path | median s | speed-up vs CPU |\n|---|---|---|")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"| {name} | {median:.3f} | {anchor / median:.1f}x |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
