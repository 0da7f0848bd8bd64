"""Lung-nodule inference by stage on CPU, and MONAI sliding-window against a plain forward.

A 100-slice 512x512 CT phantom (2.5 x 0.7 x 0.7 mm) with one 12 mm nodule is written as
Part-10 files to a temp dir. Each round runs what the inference worker runs, with the shipped
demo bundle on CPU (loaded once, before the clock): load (pydicom reads every file), volume
(`series_to_volume`), preprocess (`pre_process`), predict (`predict`, sliding window),
post-process (`segment_findings`, `label_map_on_input`, `assess_risk`) and write
(`build_results`: SEG, SR, key images, then every object serialised to Part-10 bytes; no
object store). Prints seconds per stage per round, the medians with their share of the total,
and slices/s.

Anchor, in the same run on each round's pre-processed tensor: `predict` (MONAI
`sliding_window_inference` with the bundle's roi_size, overlap and Gaussian weighting) against
one plain forward of the network: the whole volume padded to the UNet's downsampling factor
(`--plain tiles`: non-overlapping roi_size tiles stacked into one batch). Which goes first
alternates per round. Prints both medians, the ratio and how far the probability maps agree.

    .venv/bin/python bench/inference.py [--rounds 3] [--plain whole|tiles]
"""

from __future__ import annotations

import argparse
import math
import os
import resource
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import TypeVar

import numpy as np
import pydicom
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from radpipe.common.dicomio import write_part10  # noqa: E402
from radpipe.common.identity import pseudonymous_uid  # noqa: E402
from radpipe.demo import make_phantom, phantom_to_datasets, write_series  # noqa: E402
from radpipe.inference.bundle import Bundle, default_bundle_path, load_bundle  # noqa: E402
from radpipe.inference.outputs import build_results  # noqa: E402
from radpipe.inference.service import (  # noqa: E402
    Analysis,
    Volume,
    assess_risk,
    label_map_on_input,
    pre_process,
    predict,
    segment_findings,
    series_to_volume,
)

STAGES = ("load", "volume", "preprocess", "predict", "postprocess", "write")
SECRET = b"bench-inference"  # deterministic result UIDs; the objects are thrown away
WHEN = datetime(2026, 11, 23, 12, 0, 0)
T = TypeVar("T")


def timed(seconds: dict[str, float], stage: str, call: Callable[[], T]) -> T:
    start = time.perf_counter()
    value = call()
    seconds[stage] = time.perf_counter() - start
    return value


def downsampling(network: torch.nn.Module) -> int:
    """Product of the UNet's strides: every axis must be a multiple of it for one forward."""
    strides = getattr(network, "strides", None)
    if not strides:
        return 16
    return math.prod(int(np.max(s)) for s in strides)


def _sigmoid(logits: torch.Tensor) -> np.ndarray:
    return torch.sigmoid(logits.float()).numpy()


def plain_whole(tensor: torch.Tensor, bundle: Bundle) -> np.ndarray:
    """One forward of the whole (1, z, y, x) volume, zero-padded at the end of each axis."""
    factor = downsampling(bundle.network)
    shape = tensor.shape[1:]
    pad: list[int] = []
    for n in reversed(shape):
        pad += [0, -n % factor]
    with torch.inference_mode():
        logits = bundle.network(F.pad(tensor[None], pad))
    return _sigmoid(logits[0, 0, : shape[0], : shape[1], : shape[2]])


def plain_tiles(tensor: torch.Tensor, bundle: Bundle) -> np.ndarray:
    """Non-overlapping roi_size tiles (zero-padded at the end) in one batch, one forward."""
    roi = bundle.roi_size
    shape = tensor.shape[1:]
    pad: list[int] = []
    for n, r in zip(reversed(shape), reversed(roi), strict=True):
        pad += [0, -n % r]
    x = F.pad(tensor, pad)[0]
    nz, ny, nx = (n // r for n, r in zip(x.shape, roi, strict=True))
    tiles = (
        x.reshape(nz, roi[0], ny, roi[1], nx, roi[2]).permute(0, 2, 4, 1, 3, 5).reshape(-1, 1, *roi)
    )
    with torch.inference_mode():
        logits = bundle.network(tiles)
    whole = (
        logits.reshape(nz, ny, nx, *roi)
        .permute(0, 3, 1, 4, 2, 5)
        .reshape(nz * roi[0], ny * roi[1], nx * roi[2])
    )
    return _sigmoid(whole[: shape[0], : shape[1], : shape[2]])


def dice(a: np.ndarray, b: np.ndarray) -> float:
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int(np.logical_and(a, b).sum()) / total


def agree(
    prob: np.ndarray, plain_prob: np.ndarray, volume: Volume, bundle: Bundle
) -> dict[str, float]:
    """How far two probability maps agree, before and after post-processing."""
    findings, labels = segment_findings(prob, volume, bundle)
    plain_findings, plain_labels = segment_findings(plain_prob, volume, bundle)
    diff = np.abs(prob - plain_prob)
    return {
        "dice": dice(prob >= bundle.threshold, plain_prob >= bundle.threshold),
        "dice_findings": dice(labels > 0, plain_labels > 0),
        "max_diff": float(diff.max()),
        "over_0.1": float((diff > 0.1).sum()),
        "diameter": max((f.diameter_mm for f in findings), default=0.0),
        "plain_diameter": max((f.diameter_mm for f in plain_findings), default=0.0),
    }


def run_round(
    files: list[Path],
    bundle: Bundle,
    threads: int,
    plain: Callable[[torch.Tensor, Bundle], np.ndarray],
    plain_first: bool,
) -> tuple[dict[str, float], float, np.ndarray, np.ndarray, Analysis]:
    """Stage seconds, plain-forward seconds, both probability maps and the analysis."""
    seconds: dict[str, float] = {}
    datasets = timed(seconds, "load", lambda: [pydicom.dcmread(p) for p in files])
    volume = timed(seconds, "volume", lambda: series_to_volume(datasets))
    tensor = timed(seconds, "preprocess", lambda: pre_process(volume, bundle))
    anchor: dict[str, float] = {}
    if plain_first:
        plain_prob = timed(anchor, "plain", lambda: plain(tensor, bundle))
    prob = timed(seconds, "predict", lambda: predict(tensor, bundle, threads=threads))
    if not plain_first:
        plain_prob = timed(anchor, "plain", lambda: plain(tensor, bundle))

    def post_process() -> Analysis:
        findings, labels = segment_findings(prob, volume, bundle)
        return Analysis(
            findings=findings,
            risk=assess_risk(findings),
            timings={},
            input_sop_uids=list(volume.sop_instance_uids),
            model=bundle.to_dict(),
            label_map=label_map_on_input(labels, volume.array.shape),
            volume=volume,
        )

    analysis = timed(seconds, "postprocess", post_process)

    def write() -> int:
        # As the stage does: sources in volume order, then every object to Part-10 bytes.
        by_uid = {str(ds.SOPInstanceUID): ds for ds in datasets}
        order = [reference.split("#")[0] for reference in analysis.input_sop_uids]
        sources = [by_uid[u] for u in dict.fromkeys(order)]
        results = build_results(
            sources,
            volume,
            analysis,
            uid=lambda purpose: pseudonymous_uid(SECRET, f"result:{purpose}"),
            content_datetime=WHEN,
        )
        written = sum(len(write_part10(obj.dataset)) for obj in results.objects)
        return written + sum(len(png) for _, png in results.pngs)

    timed(seconds, "write", write)
    seconds["total"] = sum(seconds[s] for s in STAGES)
    return seconds, anchor["plain"], prob, plain_prob, analysis


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--slices", type=int, default=100)
    parser.add_argument(
        "--plain",
        choices=("whole", "tiles"),
        default="whole",
        help="plain forward: the whole padded volume at once, or roi_size tiles in one batch",
    )
    args = parser.parse_args()
    threads = os.cpu_count() or 1
    torch.set_num_threads(threads)

    work = Path(tempfile.mkdtemp(prefix="radpipe-bench-inference-"))
    try:
        phantom = make_phantom(
            7, nodules=[12.0], shape=(args.slices, 512, 512), spacing=(2.5, 0.7, 0.7)
        )
        files = write_series(phantom_to_datasets(phantom), work / "series")
        start = time.perf_counter()
        bundle = load_bundle(default_bundle_path(), "cpu")
        load_seconds = time.perf_counter() - start
        plain = plain_whole if args.plain == "whole" else plain_tiles
        if args.plain == "whole":
            factor = downsampling(bundle.network)
            plain_name = f"whole volume zero-padded to a multiple of {factor} per axis, batch 1"
        else:
            plain_name = f"non-overlapping {bundle.roi_size} tiles in one batch"
        print(
            f"{args.slices}-slice 512x512 CT at 2.5x0.7x0.7 mm, one 12 mm nodule; "
            f"{os.cpu_count()} CPU cores, torch threads {torch.get_num_threads()}"
        )
        print(
            f"bundle {bundle.name} {bundle.version} on {bundle.device}: loaded once in "
            f"{load_seconds:.2f} s; roi_size {bundle.roi_size}, overlap {bundle.overlap}, "
            f"sw_batch_size {bundle.sw_batch_size}, Gaussian"
        )
        print(f"plain forward: {plain_name}\n")

        rows: list[dict[str, float]] = []
        plain_seconds: list[float] = []
        agreement: list[dict[str, float]] = []
        for round_ in range(args.rounds):
            plain_first = round_ % 2 == 1
            seconds, plain_s, prob, plain_prob, analysis = run_round(
                files, bundle, threads, plain, plain_first
            )
            rows.append(seconds)
            plain_seconds.append(plain_s)
            assert analysis.volume is not None  # post-process sets it
            agreement.append(agree(prob, plain_prob, analysis.volume, bundle))
            print(
                f"round {round_ + 1}: "
                + " ".join(f"{s} {seconds[s]:.2f}" for s in STAGES)
                + f" | total {seconds['total']:.2f} s"
            )
            a = agreement[-1]
            print(
                f"  {'plain first' if plain_first else 'sliding first'}: "
                f"sliding {seconds['predict']:.2f} s, plain {plain_s:.2f} s; Dice thresholded "
                f"{a['dice']:.4f}, Dice of findings {a['dice_findings']:.4f}, max |diff| "
                f"{a['max_diff']:.3f}, {a['over_0.1']:.0f} voxels |diff| > 0.1; largest "
                f"finding {a['diameter']:.1f} mm sliding, {a['plain_diameter']:.1f} mm plain"
            )

        medians = {s: statistics.median(r[s] for r in rows) for s in (*STAGES, "total")}
        shares = sum(medians[s] for s in STAGES)
        print(f"\nmedians over {args.rounds} rounds (share of the sum of medians):")
        for s in STAGES:
            print(f"  {s:<12} {medians[s]:6.2f} s  {100 * medians[s] / shares:5.1f} %")
        print(f"  {'total':<12} {medians['total']:6.2f} s")
        print(f"slices/s: {args.slices / medians['total']:.1f}")
        sliding, plain_median = medians["predict"], statistics.median(plain_seconds)
        print(f"\nmedian sliding-window predict: {sliding:.2f} s")
        print(f"median plain forward ({args.plain}): {plain_median:.2f} s")
        print(f"ratio sliding / plain:         {sliding / plain_median:.2f}")
        med = {k: statistics.median(a[k] for a in agreement) for k in agreement[0]}
        print(
            f"agreement (median): Dice thresholded {med['dice']:.4f}, Dice of findings "
            f"{med['dice_findings']:.4f}, max |diff| {med['max_diff']:.3f}, "
            f"{med['over_0.1']:.0f} of {prob.size} voxels |diff| > 0.1"
        )
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"peak RSS of this process: {peak:.0f} MB")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
