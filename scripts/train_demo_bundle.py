"""Train the demo lung-nodule MONAI bundle on synthetic phantoms, on CPU, deterministically.

    python scripts/train_demo_bundle.py [--out DIR] [--steps N] [--threads N] [--revalidate]

Writes `configs/metadata.json`, `configs/inference.json`, `models/model.pt` and
`docs/README.md` (the model card) in MONAI model-zoo layout (default: the packaged demo
bundle). Training uses the same `pre_process` / `predict` / `post_process` stages as the
inference service, so the bundle is validated exactly as it will run. About 11 minutes on
2 CPU cores. `--revalidate` keeps the weights in `--out` (no training), validates them with
the current post-processing and rewrites the configs and the card: how 0.2.0 was made from
the 0.1.0 weights, which this script with the default arguments reproduces.

The model is a demonstration trained on synthetic phantoms. It is not for diagnosis.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import monai
import numpy as np
import torch
from monai.bundle import ConfigParser
from monai.losses import DiceCELoss
from monai.utils import set_determinism

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from radpipe.demo import Phantom, make_phantom
from radpipe.inference.bundle import Bundle, default_bundle_path
from radpipe.inference.findings import ShapeFilter
from radpipe.inference.service import (
    Volume,
    pre_process,
    predict,
    segment_findings,
)

SEED = 20240102
SPACING = (1.5, 1.5, 1.5)  # a 5 mm nodule spans ~3 voxels; 512x512x100 CT -> ~10 M voxels
WINDOW = (-1000.0, 400.0)  # HU mapped to [0, 1]: lung to soft tissue, bone saturates
PATCH = 48  # 72 mm: a 30 mm nodule with context; 3x cheaper than 64^3 on CPU
ROI = (96, 96, 96)
BATCH = 6
TRAIN_PHANTOMS = 36
VAL_PHANTOMS = 6
THRESHOLD = 0.5
# A 4.5 mm sphere. Smaller components are mostly vessel crossings; nodules under 6 mm are
# Lung-RADS 2 (low risk) anyway, and the validation target is every nodule of 5 mm and up.
MIN_VOLUME_MM3 = 48.0
MAX_MEAN_HU = 300.0  # denser components are bone (or calcified, benign), not solid nodules
# Shape and context filters (radpipe.inference.findings.ShapeFilter), chosen on the TRAIN
# family of radpipe.phantoms (never on HELD_OUT): every true nodule there had a shell < 16%
# dense and elongation < 1.4, vessel pieces up to 84% and 14; a pleural nodule keeps >= 0.7
# of its shell contact 1-3 voxels out, vessel pieces <= 0.47.
MAX_CONTACT_FRACTION = 0.16
WALL_RATIO = 0.6
MAX_ELONGATION = 2.5
NETWORK = {
    "_target_": "monai.networks.nets.UNet",
    "spatial_dims": 3,
    "in_channels": 1,
    "out_channels": 1,
    "channels": [16, 32, 64, 128],
    "strides": [2, 2, 2],
    "num_res_units": 1,
    # Batch norm, not instance norm: eval statistics then do not depend on the window size.
    "norm": "BATCH",
}
VERSION = "0.2.0"
CHANGELOG = {
    "0.2.0": "shape and context filters (contact with dense tissue, elongation) in "
    "post-processing; weights of 0.1.0 unchanged",
    "0.1.0": "first demo bundle, trained on synthetic phantoms",
}
DESCRIPTION = (
    "Demonstration model trained on synthetic phantoms. Not for diagnosis. "
    "Segments solid spherical lung nodules in chest CT and reports those of 4.5 mm and above."
)


# The held-out figures come from `bench/froc.py` (run it after training and paste its table).
HELD_OUT_FIGURES = """\
8 studies (seeds 31000-31007, 2 clean, 19 nodules, 9 of them >= 8 mm), 2026-12-02, same
weights with and without the 0.2.0 filters:

| post-processing | S@1/8 | S@1/4 | S@1/2 | S@1 | S@2 | S@4 | S@8 | CPM | FP/scan | FP/clean scan >= 6 mm | >= 8 mm | S >= 8 mm | S >= 8 mm at <= 0.1 FP/scan | diameter MAE |
|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|
| 0.1.0 (no shape filters) | 0.211 | 0.211 | 0.211 | 0.368 | 0.474 | 0.579 | 0.632 | 0.383 | 5.50 | 5.00 | 2.00 | 0.889 | 0.222 | 4.58 mm |
| 0.2.0 (contact, elongation) | 0.526 | 0.526 | 0.526 | 0.579 | 0.579 | 0.579 | 0.579 | 0.556 | 1.12 | 1.00 | 0.50 | 0.778 | 0.333 | 4.81 mm |

**The issue's goal (sensitivity >= 0.9 for nodules >= 8 mm at <= 0.1 FP/scan) is NOT met**
(0.333). Ground-glass nodules are found 1 time in 7 (never trained on), juxtavascular 1 in 4;
clean studies still carry 1 false positive each, half of them >= 8 mm (they page). The filters
cut false positives five-fold and raise CPM 1.45x, but drop one >= 8 mm solid nodule (8/9 to
7/9). The cure is retraining with hard negatives from a wider family (`radpipe.phantoms.TRAIN`),
not done yet. The sample is small: treat every figure as +- 0.1.
"""  # noqa: E501 (a markdown table)
MODEL_CARD = """\
# lung_nodule_demo {version}

{description}

## Must not be used for

- **Diagnosis, screening, triage or any clinical decision.** It has never seen a real CT.
- Anything but pipeline demonstrations and tests: it was trained on **synthetic phantoms
  only** (spheres in ellipsoid lungs), and its figures below are measured on synthetic
  phantoms only. They say nothing about patients.
- Calcified, cavitary, spiculated or sub-4.5 mm nodules, or nodules in lungs with disease
  (emphysema, fibrosis, consolidation): none is in its training data.

## Training data

`scripts/train_demo_bundle.py` (seed {seed}, deterministic on CPU; rerunning it with the
default arguments reproduces `models/model.pt`) on 36 phantoms from `radpipe.demo`: 1-3 mm
slices (a third 0.6-1.8 mm pixels), 256-512 matrices, one body and lung shape (ellipses),
vessels, ribs, spine and heart, 8-30 HU of white noise, no kernel, no contrast, no airways;
0-4 solid spherical nodules of 3-30 mm, always fully inside the lung. Patches are drawn
half on nodules, a third on dense lung voxels (vessels: hard negatives), the rest anywhere
in the body. 3-D UNet (16-128 channels), 1.5 mm grid, HU window -1000..400.

Post-processing (`configs/inference.json`, `radpipe.inference.findings`): components of
probability >= 0.5 of at least 48 mm3, mean HU <= 300, a shell at most 16 % denser than
-400 HU unless the band 1-3 voxels out keeps >= 0.6 of that (a nodule on the pleura), and
elongation <= 2.5. These limits were chosen on the `TRAIN` family of `radpipe.phantoms`,
never on the held-out family.

## Validation on its own generator (`radpipe.demo`, 6 fresh phantoms)

Dice {val_dice:.3f}, sensitivity {val_sensitivity:.3f} ({val_nodules} nodules of 5-30 mm),
{val_false_positives_per_volume:.2f} false positives per volume, diameter error
{val_diameter_mae_mm:.2f} mm mean / {val_diameter_max_error_mm:.2f} mm max. Measured on the
generator it was trained on: an optimistic figure.

## Held out: another generator, settings never trained on (`bench/froc.py`)

`radpipe.phantoms.HELD_OUT`: 0.6-1.0 or 3-5 mm slices, boxy off-centre bodies, truncated
fields of view, airways, intravenous contrast in 60 %, sharp kernel, 25-40 HU of noise;
solid, part-solid and ground-glass nodules of 4-30 mm, free, juxtapleural and
juxtavascular; a quarter of the studies clean. Sensitivity at 1/8 ... 8 false positives per
scan, their mean (CPM, as LUNA16), FP per clean scan at >= 6 and >= 8 mm:

{held_out}
"""


@dataclass
class Sample:
    image: np.ndarray  # (z, y, x) float32 in [0, 1], padded by PATCH // 2
    label: np.ndarray  # (z, y, x) float32 {0, 1}, padded
    nodules: list[np.ndarray]  # per nodule, (n, 3) voxels inside it
    dense_idx: np.ndarray  # (n, 3) dense voxels inside the lungs (vessels): hard negatives
    body_idx: np.ndarray  # (n, 3) any voxel inside the body


def _diameters(rng: np.random.Generator, low: float) -> list[float]:
    # Log-uniform sizes so that small nodules, the hard ones, are well represented.
    count = int(rng.choice([0, 1, 2, 3, 4], p=[0.1, 0.25, 0.3, 0.2, 0.15]))
    return [float(math.exp(rng.uniform(math.log(low), math.log(30.0)))) for _ in range(count)]


def _phantom(seed: int, low: float) -> Phantom:
    rng = np.random.default_rng(seed)
    shape: tuple[int, int, int] | None = None
    spacing: tuple[float, float, float] | None = None
    if rng.random() < 1 / 3:
        # Pixels up to 1.8 mm, coarser than the phantom default (0.6-1.0 mm): their noise is
        # not averaged away by the resampling, so the model also meets full-strength noise.
        pixel, thickness = rng.uniform(0.6, 1.8), rng.uniform(1.0, 3.0)
        matrix = round(rng.uniform(240.0, 400.0) / pixel)
        slices = int(np.clip(round(rng.uniform(80.0, 250.0) / thickness), 24, 140))
        shape, spacing = (slices, matrix, matrix), (thickness, pixel, pixel)
    for _ in range(5):
        try:
            return make_phantom(rng, nodules=_diameters(rng, low), shape=shape, spacing=spacing)
        except ValueError:  # a large nodule did not fit this geometry: draw another
            continue
    return make_phantom(rng, nodules=[], shape=shape, spacing=spacing)


def _volume(ph: Phantom) -> Volume:
    return Volume(ph.volume.astype(np.float32), ph.spacing, [])


def _sample(ph: Phantom, bundle: Bundle) -> Sample:
    image = pre_process(_volume(ph), bundle)[0].numpy()
    label = ph.nodule_mask_on_grid(image.shape)  # type: ignore[arg-type]
    index = [
        np.clip(np.floor((np.arange(m) + 0.5) * n / m).astype(int), 0, n - 1)
        for m, n in zip(image.shape, ph.volume.shape, strict=True)
    ]
    lung = ph.lung_mask[np.ix_(*index)]
    dense = (-400.0 - WINDOW[0]) / (WINDOW[1] - WINDOW[0])  # vessels; lung is ~ -850 HU
    pad = PATCH // 2
    return Sample(
        image=np.pad(image, pad),
        label=np.pad(label.astype(np.float32), pad),
        nodules=[
            np.argwhere(ph.nodule_mask_on_grid(image.shape, [n])) + pad  # type: ignore[arg-type]
            for n in ph.nodules
        ],
        dense_idx=np.argwhere(lung & (image > dense) & ~label) + pad,
        body_idx=np.argwhere(image > 0.5) + pad,
    )


def _batch(samples: list[Sample], rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = [], []
    half = PATCH // 2
    with_nodules = [s for s in samples if any(len(n) for n in s.nodules)]
    for _ in range(BATCH):
        kind = rng.choice(3, p=[0.5, 0.3, 0.2])
        if kind == 0:
            # One nodule at a time, whatever its size: sampling voxels would favour the
            # largest nodules by their volume and leave the small ones, the hard ones, unseen.
            s = with_nodules[int(rng.integers(len(with_nodules)))]
            voxels = [n for n in s.nodules if len(n)]
            pool = voxels[int(rng.integers(len(voxels)))]
        else:
            s = samples[int(rng.integers(len(samples)))]
            pool = s.dense_idx if kind == 1 and len(s.dense_idx) else s.body_idx
        c = pool[int(rng.integers(len(pool)))] + rng.integers(-half // 2, half // 2 + 1, size=3)
        c = np.clip(c, half, np.array(s.image.shape) - half)
        box = tuple(slice(int(v) - half, int(v) + half) for v in c)
        img, lab = s.image[box], s.label[box]
        for axis in range(3):
            if rng.random() < 0.5:
                img, lab = np.flip(img, axis), np.flip(lab, axis)
        img = img * rng.uniform(0.95, 1.05) + rng.uniform(-0.03, 0.03)
        if rng.random() < 0.5:  # up to ~20 HU of extra noise
            img = img + rng.normal(0.0, rng.uniform(0.0, 0.015), size=img.shape)
        images.append(np.ascontiguousarray(img, dtype=np.float32))
        labels.append(np.ascontiguousarray(lab))
    return torch.from_numpy(np.stack(images)[:, None]), torch.from_numpy(np.stack(labels)[:, None])


def _validate(phantoms: list[Phantom], bundle: Bundle) -> dict[str, float]:
    """Run the service stages on fresh phantoms; Dice, sensitivity, FPs and size error."""
    dices, errors, times = [], [], []
    found = total = false_pos = 0
    for ph in phantoms:
        volume = _volume(ph)
        start = time.perf_counter()
        prob = predict(pre_process(volume, bundle), bundle)
        findings, labels = segment_findings(prob, volume, bundle)
        times.append(time.perf_counter() - start)
        truth = ph.nodule_mask_on_grid(prob.shape)  # type: ignore[arg-type]
        pred = labels > 0
        if truth.any():
            dices.append(2 * (pred & truth).sum() / (pred.sum() + truth.sum()))
        matched = set()
        for n in ph.nodules:
            total += 1
            c = np.array(n.center_mm)
            for f in findings:
                fc = np.array(f.center_voxel_zyx) * np.array(ph.spacing)
                if np.linalg.norm(fc - c) <= max(n.diameter_mm / 2, 3.0):
                    found += 1
                    matched.add(f.label)
                    errors.append(abs(f.diameter_mm - n.diameter_mm))
                    break
        false_pos += sum(f.label not in matched for f in findings)
    return {
        "val_dice": float(np.mean(dices)),
        "val_sensitivity": found / max(total, 1),
        "val_false_positives_per_volume": false_pos / len(phantoms),
        "val_diameter_mae_mm": float(np.mean(errors)) if errors else float("nan"),
        "val_diameter_max_error_mm": float(np.max(errors)) if errors else float("nan"),
        "val_nodules": total,
        "val_seconds_per_volume": float(np.mean(times)),
    }


def _write_bundle(
    out: Path, net: torch.nn.Module, metrics: dict[str, float], args: argparse.Namespace
) -> None:
    (out / "configs").mkdir(parents=True, exist_ok=True)
    (out / "models").mkdir(parents=True, exist_ok=True)
    (out / "docs").mkdir(parents=True, exist_ok=True)
    if not args.revalidate:
        torch.save(net.state_dict(), out / "models" / "model.pt")
    inference = {
        "imports": ["$import torch"],
        "bundle_root": ".",
        "device": "$torch.device('cuda' if torch.cuda.is_available() else 'cpu')",
        "spacing": list(SPACING),
        "intensity_range": list(WINDOW),
        "roi_size": list(ROI),
        "sw_batch_size": 1,
        "overlap": 0.25,
        "threshold": THRESHOLD,
        "min_volume_mm3": MIN_VOLUME_MM3,
        "max_mean_hu": MAX_MEAN_HU,
        "max_contact_fraction": MAX_CONTACT_FRACTION,
        "wall_ratio": WALL_RATIO,
        "max_elongation": MAX_ELONGATION,
        "network_def": NETWORK,
        "network": "$@network_def.to(@device)",
    }
    metadata = {
        "schema": "https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/"
        "0.8.1/meta_schema_20220324.json",
        "name": "lung_nodule_demo",
        "version": VERSION,
        "changelog": CHANGELOG,
        "monai_version": monai.__version__,
        "pytorch_version": torch.__version__.split("+")[0],
        "numpy_version": np.__version__,
        "required_packages_version": {},
        "task": "Lung nodule segmentation in chest CT (demonstration)",
        "description": DESCRIPTION,
        "authors": "Radpipe contributors",
        "copyright": "Copyright (c) Radpipe contributors",
        "license": "Apache-2.0",
        "intended_use": "Demonstration and pipeline testing only. Not for diagnosis.",
        # Which series Radpipe routes to this bundle (services/inference/registry.py).
        "radpipe_routing": [
            {
                "modality": ["CT"],
                "sop_class": ["1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.5.1.4.1.1.2.1"],
                "body_part": ["CHEST", "LUNG", "THORAX", ""],
                "min_instances": 3,
            }
        ],
        "data_source": "Synthetic chest CT phantoms (services/demo.py)",
        "data_type": "dicom",
        "image_classes": "single channel CT, HU windowed to [0, 1]",
        "label_classes": "single channel, 1 = nodule, 0 = everything else (sigmoid output)",
        "pred_classes": "single channel logits; sigmoid >= threshold = nodule",
        "network_data_format": {
            "inputs": {
                "image": {
                    "type": "image",
                    "format": "hounsfield",
                    "modality": "CT",
                    "num_channels": 1,
                    "spatial_shape": list(ROI),
                    "dtype": "float32",
                    "value_range": [0, 1],
                    "is_patch_data": True,
                    "channel_def": {"0": "image"},
                }
            },
            "outputs": {
                "pred": {
                    "type": "image",
                    "format": "segmentation",
                    "num_channels": 1,
                    "spatial_shape": list(ROI),
                    "dtype": "float32",
                    "value_range": [],
                    "is_patch_data": True,
                    "channel_def": {"0": "nodule (logit)"},
                }
            },
        },
        "training": {
            "spacing_zyx_mm": list(SPACING),
            "intensity_window_hu": list(WINDOW),
            "seed": SEED,
            "steps": args.steps,
            "batch_size": BATCH,
            "patch_size": [PATCH] * 3,
            "train_phantoms": TRAIN_PHANTOMS,
            "val_phantoms": VAL_PHANTOMS,
            "threads": args.threads,
            "loss": "DiceCE (sigmoid, Dice per patch)",
            "optimizer": "Adam lr 2e-3, cosine decay",
            "platform": f"{platform.machine()} CPU",
            "metrics": metrics,
        },
    }
    (out / "configs" / "inference.json").write_text(json.dumps(inference, indent=2) + "\n")
    (out / "configs" / "metadata.json").write_text(json.dumps(metadata, indent=2) + "\n")
    card = MODEL_CARD.format(
        description=DESCRIPTION,
        version=VERSION,
        seed=SEED,
        held_out=HELD_OUT_FIGURES.strip(),
        **metrics,
    )
    (out / "docs" / "README.md").write_text(card)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=default_bundle_path())
    parser.add_argument("--steps", type=int, default=1400)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--revalidate", action="store_true", help="keep the weights in --out, no training"
    )
    args = parser.parse_args(argv)

    set_determinism(SEED)
    torch.manual_seed(SEED)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(SEED)
    started = time.perf_counter()

    net = ConfigParser({"network_def": NETWORK}).get_parsed_content("network_def")
    assert isinstance(net, torch.nn.Module)
    bundle = Bundle(
        name="lung_nodule_demo",
        version="training",
        sha256="",
        path=args.out,
        network=net,
        spacing=SPACING,
        roi_size=ROI,
        intensity_range=WINDOW,
        threshold=THRESHOLD,
        device=torch.device("cpu"),
        min_volume_mm3=MIN_VOLUME_MM3,
        max_mean_hu=MAX_MEAN_HU,
    )
    # Validation must use the filters this bundle will declare, not whatever config is in --out.
    bundle.shape_filter = ShapeFilter(  # type: ignore[attr-defined]
        MAX_CONTACT_FRACTION, MAX_ELONGATION, WALL_RATIO
    )
    if args.revalidate:
        net.load_state_dict(torch.load(args.out / "models" / "model.pt", weights_only=True))
        net.eval()
        old = json.loads((args.out / "configs" / "metadata.json").read_text())["training"]
        metrics = _validate(
            [_phantom(SEED + 100_000 + i, low=5.0) for i in range(VAL_PHANTOMS)], bundle
        )
        metrics = {k: round(v, 4) if isinstance(v, float) else v for k, v in metrics.items()}
        # Timings and threads stay those of the training run that made the weights.
        for key in ("train_seconds", "final_train_loss", "val_seconds_per_volume"):
            metrics[key] = old["metrics"][key]
        args.threads = old["threads"]
        print("validation:", json.dumps(metrics), flush=True)
        _write_bundle(args.out, net, metrics, args)
        return 0
    samples = []
    for i in range(TRAIN_PHANTOMS):
        samples.append(_sample(_phantom(SEED + i, low=3.0), bundle))
    val = [_phantom(SEED + 100_000 + i, low=5.0) for i in range(VAL_PHANTOMS)]
    print(
        f"data: {TRAIN_PHANTOMS} train phantoms in {time.perf_counter() - started:.0f} s",
        flush=True,
    )

    optimizer = torch.optim.Adam(net.parameters(), lr=2e-3)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=args.steps)
    # Dice per patch, not over the batch: a patch on a 5 mm nodule then weighs as much as one
    # on a 30 mm nodule, which would otherwise dominate the overlap.
    loss_fn = DiceCELoss(sigmoid=True, batch=False)
    net.train()
    running = 0.0
    for step in range(1, args.steps + 1):
        x, y = _batch(samples, rng)
        loss = loss_fn(net(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        value = loss.item()
        running = 0.9 * running + 0.1 * value if step > 1 else value
        if step % 50 == 0 or step == args.steps:
            elapsed = time.perf_counter() - started
            print(f"step {step}/{args.steps} loss {running:.4f} ({elapsed:.0f} s)", flush=True)
    train_seconds = time.perf_counter() - started

    net.eval()
    metrics = _validate(val, bundle)
    metrics = {k: round(v, 4) if isinstance(v, float) else v for k, v in metrics.items()}
    metrics["train_seconds"] = round(train_seconds, 1)
    metrics["final_train_loss"] = round(running, 4)
    print("validation:", json.dumps(metrics), flush=True)
    _write_bundle(args.out, net, metrics, args)
    print(f"validation Dice {metrics['val_dice']:.3f}; bundle written to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
