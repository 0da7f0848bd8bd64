"""Stages 2 and 3, model: resample and window for the bundle, then sliding-window prediction.

Geometry: the bundle grid has `bundle_grid(...)` voxels covering the same field of view as the
input (align_corners=False), so an index `j` on the bundle grid lies at input index
`(j + 0.5) * n_in / n_out - 0.5` on each axis.
"""

from __future__ import annotations

import numpy as np
import torch
from monai.data import MetaTensor
from monai.inferers import sliding_window_inference
from monai.transforms import Compose, Resize, ScaleIntensityRange

from .bundle import Bundle
from .volume import Vec3, Volume

__all__ = ["bundle_grid", "device_batch", "pre_process", "predict"]

#: Bytes one window needs on a GPU under autocast, per voxel of `roi_size`: an estimate for
#: the demo UNet (16 channels at full resolution, half precision, a few live activations,
#: plus the float32 output and Gaussian weights), doubled for headroom. Measured on an H200
#: (2026-12-04, bench/gpu.py): 625 MiB peak for 32 windows of 96^3, about 23 bytes per window
#: voxel all told, so this errs about tenfold on the safe side; it picks fewer than
#: `MAX_DEVICE_BATCH` windows only where under ~15 GiB of GPU memory is free.
GPU_BYTES_PER_VOXEL = 256
#: Never more windows per forward than this: beyond it the GPU is already full and the
#: stitching on the host dominates.
MAX_DEVICE_BATCH = 32


def bundle_grid(
    shape: tuple[int, ...], spacing: Vec3, bundle_spacing: Vec3
) -> tuple[tuple[int, int, int], Vec3]:
    """Shape of the bundle grid covering the same field of view, and its exact spacing."""
    out = [max(1, round(n * s / b)) for n, s, b in zip(shape, spacing, bundle_spacing, strict=True)]
    exact = [n * s / o for n, s, o in zip(shape, spacing, out, strict=True)]
    return (out[0], out[1], out[2]), (exact[0], exact[1], exact[2])


def pre_process(volume: Volume, bundle: Bundle) -> torch.Tensor:
    """Resample to the bundle spacing (trilinear) and window HU to [0, 1]; returns (1, z, y, x).

    Expected time: ~0.2 s for 512x512x100 on 2 CPU cores; memory ~2x the input.
    """
    shape, _ = bundle_grid(volume.array.shape, volume.spacing, bundle.spacing)
    low, high = bundle.intensity_range
    transform = Compose(
        [
            Resize(shape, mode="trilinear"),
            ScaleIntensityRange(a_min=low, a_max=high, b_min=0.0, b_max=1.0, clip=True),
        ]
    )
    out = transform(torch.from_numpy(volume.array)[None])
    if isinstance(out, MetaTensor):  # plain tensor out: the geometry lives in `bundle_grid`
        out = out.as_tensor()
    return torch.as_tensor(out, dtype=torch.float32).contiguous()


def device_batch(bundle: Bundle, free_bytes: int | None = None) -> int:
    """Sliding windows per forward pass: the bundle's `sw_batch_size` on CPU (more windows do
    not run faster on 2 cores), on a GPU as many as half of its free memory holds
    (`torch.cuda.mem_get_info`), 1 to `MAX_DEVICE_BATCH`, never fewer than the bundle asks."""
    if bundle.device.type != "cuda":
        return bundle.sw_batch_size
    if free_bytes is None:
        free_bytes, _ = torch.cuda.mem_get_info(bundle.device)
    per_window = GPU_BYTES_PER_VOXEL * int(np.prod(bundle.roi_size))
    fits = int(free_bytes // 2 // max(per_window, 1))
    return max(bundle.sw_batch_size, min(fits, MAX_DEVICE_BATCH), 1)


def predict(tensor: torch.Tensor, bundle: Bundle, *, threads: int | None = None) -> np.ndarray:
    """Sliding-window sigmoid probabilities (z, y, x) float32 on the bundle grid.

    On a GPU the windows run in batches that fill the device (`device_batch`) under
    autocast (float16 convolutions, float32 accumulation; the sigmoid in float32).
    `threads` sets torch's intra-op threads (process-wide). Expected time for the demo
    bundle: ~2-4 s per 10 M bundle-grid voxels on 2 CPU cores, <0.5 s on a GPU; peak memory
    ~1 GB on CPU.
    """
    if threads:
        torch.set_num_threads(threads)
    x = tensor[None].to(bundle.device)
    use_amp = bundle.device.type == "cuda"  # autocast on CPU is slower for these convolutions
    with torch.inference_mode(), torch.autocast("cuda", enabled=use_amp):
        logits = sliding_window_inference(
            x,
            roi_size=bundle.roi_size,
            sw_batch_size=device_batch(bundle),
            predictor=bundle.network,
            overlap=bundle.overlap,
            mode="gaussian",
        )
        prob = torch.sigmoid(torch.as_tensor(logits).float())
    return prob[0, 0].cpu().numpy()
