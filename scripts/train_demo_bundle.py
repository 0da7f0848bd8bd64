"""Train the demo lung-nodule MONAI bundle on synthetic phantoms, on CPU, deterministically.

    python scripts/train_demo_bundle.py [--out DIR] [--steps N] [--threads N]
        [--candidates-only] [--revalidate]

Writes `configs/metadata.json`, `configs/inference.json`, `models/model.pt`,
`models/candidates.pt` (the second stage, `radpipe.inference.candidates`) and `docs/README.md`
(the model card) in MONAI model-zoo layout (default: the packaged demo bundle). Training uses
the same `pre_process` / `predict` / `post_process` stages as the inference service, so the
bundle is validated exactly as it will run. About 52 minutes on 2 idle CPU cores: ~22 for
the data and the segmentation network, ~30 for mining and training the candidate
classifier. `--candidates-only` keeps the segmentation weights in `--out` and trains the
second stage (how 0.4.0 was made from the 0.3.0 weights); `--revalidate` keeps all
weights, validates them with the current post-processing and rewrites the configs and the
card.

The model is a demonstration trained on synthetic phantoms. It is not for diagnosis.
"""

from __future__ import annotations

import argparse
import dataclasses
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
from radpipe.inference.bundle import Bundle, default_bundle_path, load_bundle
from radpipe.inference.candidates import CandidateClassifier, crop
from radpipe.inference.findings import ShapeFilter, _max3, label_components
from radpipe.inference.froc import MIN_HIT_MM, Case, scores
from radpipe.inference.service import (
    Volume,
    pre_process,
    predict,
    segment_findings,
)
from radpipe.phantoms import TRAIN, make_study

SEED = 20240102
SPACING = (1.5, 1.5, 1.5)  # a 5 mm nodule spans ~3 voxels; 512x512x100 CT -> ~10 M voxels
WINDOW = (-1000.0, 400.0)  # HU mapped to [0, 1]: lung to soft tissue, bone saturates
PATCH = 48  # 72 mm: a 30 mm nodule with context; 3x cheaper than 64^3 on CPU
ROI = (96, 96, 96)
BATCH = 6
TRAIN_PHANTOMS = 12  # from radpipe.demo, the first generator
TRAIN_STUDIES = 132  # from radpipe.phantoms.TRAIN: all nodule kinds and sites, wider anatomy
# (0.4.0-0.5.3: 44; three times as many since 0.9.0, labels kept as uint8 to fit in memory)
VAL_PHANTOMS = 6
VAL_STUDIES = 10  # fresh TRAIN-family seeds: post-processing limits are chosen on these
THRESHOLD = 0.5  # chosen on the TRAIN-family validation studies with FILTER (see its note)
# A 4.5 mm sphere. Smaller components are mostly vessel crossings; nodules under 6 mm are
# Lung-RADS 2 (low risk) anyway, and the validation target is every nodule of 5 mm and up.
MIN_VOLUME_MM3 = 48.0
MAX_MEAN_HU = 300.0  # denser components are bone (or calcified, benign), not solid nodules
# Shape and context filters (radpipe.inference.findings.ShapeFilter) and THRESHOLD, chosen on
# the 10 fresh TRAIN-family validation studies (never on HELD_OUT) by a rule written down
# before the held-out run (sensitivity for >= 8 mm at 0.1 FP/scan first, then FP/scan, then
# CPM) over thresholds 0.5/0.6/0.7 x 8 filter sets: 1.000 at 0.5 with these limits, at 2.0
# FP/scan (no contact limit: 2.8).
FILTER = ShapeFilter(
    max_contact_fraction=0.4,
    max_elongation=2.5,
    wall_ratio=0.6,
    min_air_fraction=0.3,
    max_diameter_mm=40.0,
    # Since 0.5.2 (registered in docs/benchmarks.md before its held-out run): nothing under
    # 1.25 slice thicknesses across is reported. Inert at the 1-3 mm of training and
    # validation (the 4.5 mm floor is larger); on 3.4-5 mm slices vessel and airway pieces of
    # about the slice thickness are where the held-out false positives are. (0.5.1, with 1.5,
    # lost an 8.5 mm part-solid nodule measured at 1.44 slice thicknesses.)
    min_diameter_slice_thickness_ratio=1.25,
    # Since 0.5.3 (registered likewise): the aerated-lung limit spares a component at most 10 %
    # of whose shell is tissue (a part-solid nodule's core, ringed by its own ground glass),
    # and the contact limit spares a candidate the classifier scores >= 0.8.
    air_exempt_contact=0.1,
    contact_exempt_score=0.8,
    # Since 0.9.0 (registered before its training, docs/benchmarks.md): findings rank by both
    # stages (first-stage mean probability x classifier score). With the classifier trained
    # on three times the volumes, ranking so holds validation (TRAIN family 0.938 at 0.1
    # FP/scan; by the first stage alone 0.875) and separates nodules from vessel and airway
    # pieces that the first stage scores alike. 0.5.4 (0.5.3's classifier) failed it: 0.750.
    rank_with_candidate_score=True,
    # Since 0.9.4 (registered in docs/benchmarks.md before its held-out run, chosen on 72
    # TRAIN-family studies no training run used, seeds 50000-50071): the aerated-lung limit
    # spares a candidate the classifier scores >= 0.8, as the contact limit has since 0.5.3
    # (nodules on the pleura ringed by wall and their own ground glass, 24-26 % aerated, scored
    # >= 0.99, were dropped), and findings ranked below 0.3 are not reported: the lowest
    # minimum at which those studies have at most 0.1 false positives per scan (the goal's
    # operating point; every reported finding of 8 mm or more pages).
    air_exempt_score=0.8,
    min_score=0.3,
)
POST_PROCESSING = """\
Post-processing (`configs/inference.json`, `radpipe.inference.findings`): components of
probability >= {threshold} of at least {min_volume:.0f} mm3 and at most 40 mm across (larger
is a mass or an organ, not a nodule), mean HU <= {max_hu:.0f} (bone, calcification), a shell
at least 30 % aerated lung (below -600 HU: drops blobs in fat, muscle or mediastinum), a
shell at most 40 % denser than -400 HU unless the band 1-3 voxels out keeps >= 0.6 of that
(a nodule on the pleura), and elongation <= 2.5 (vessel and airway pieces). The threshold
and these limits were chosen on 10 fresh `TRAIN`-family studies, never on the held-out
family, and written down before the held-out run. Since 0.5.2 a finding must also be at least
1.25 slice thicknesses across (Slice Thickness, else the slice spacing: 6.25 mm on 5 mm
slices, 5 mm on 4 mm slices; nothing changes up to 3.6 mm): on thicker slices partial volume
makes pieces of vessels and airways look like nodules of about the slice thickness, and such
a nodule cannot be measured there either. Since 0.5.3 the aerated-lung limit does not apply
where at most 10 % of the shell is denser than -400 HU (the solid core of a part-solid nodule
lies in its own ground glass, neither aerated nor tissue), nor the contact limit to a
candidate the classifier scores 0.8 or more. These limits were chosen on held-out studies
already spent (docs/benchmarks.md) and confirmed on fresh ones. Since 0.9.4 the aerated-lung
limit does not apply either to a candidate the classifier scores 0.8 or more (a nodule on
the pleura ringed by the wall and its own ground glass), and a finding is reported only if
its ranking score (first-stage probability x classifier score) is at least 0.3: on 72
training-family studies that no training run used, the lowest minimum that leaves at most
0.1 false positives per scan, the operating point of the goal below. Every reported finding
of 8 mm or more pages, so this is what on-call staff are sent.

Second stage (`radpipe.inference.candidates`, since 0.4.0): a small 3-D classifier
(MONAI `Classifier`, 16-128 channels) looks at the 32^3-voxel cube (48 mm) of the
pre-processed image around each remaining candidate and drops those it scores below
{candidate_threshold:g}. It was trained after the segmentation network, on the same volumes:
cubes around that network's own components at probability >= 0.3 on each of the 144 volumes
and on two scanner-augmented copies (positive when the centre lies in a nodule), plus cubes on true
nodules and on dense voxels in and just outside the lung, with thick slices and sharp
kernels drawn twice as often as for the first stage. Its threshold is the lowest of
0.05-0.5 (each loses one of the 23 validation nodules the first stage finds). Since 0.9.0
findings rank by both stages: the segmentation network's mean probability times the
classifier's score (`score` in the results; `probability` stays the first stage's). The
first stage gives nodules and thick-slice vessel or airway pieces alike 0.93-0.98; the
classifier, trained on three times the volumes of 0.4.0-0.5.3, tells them apart. Since 0.9.6
its score is the mean over the eight flips of the cube (each axis flipped or not,
`test_time_flips`): on 72 training-family studies it ranked false positives lower, so the
same 0.3 minimum leaves 0.06 per scan instead of 0.10.
"""
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
# Second stage (radpipe.inference.candidates): a classifier of 32^3 cubes (48 mm) around each
# candidate the segmentation network leaves, trained on the same volumes after it.
CANDIDATE_PATCH = 32
CANDIDATE_NETWORK = {
    "_target_": "monai.networks.nets.Classifier",
    "in_shape": [1, CANDIDATE_PATCH, CANDIDATE_PATCH, CANDIDATE_PATCH],
    "classes": 1,
    "channels": [16, 32, 64, 128],
    "strides": [2, 2, 2, 2],
    "num_res_units": 1,
    "norm": "BATCH",
}
CANDIDATE_STEPS = 8000  # 0.4.0-0.5.3: 3000 on a third of the volumes
# The classifier looks at a candidate's shape in a small cube, which thick slices and sharp
# kernels change most: its augmentation draws them twice as often as the first stage's (the
# first classifier, with the first stage's 0.35 / 0.35, scored solid 9-11 mm nodules on 4 mm
# sharp-kernel slices 0.04-0.09, below the pleura and vessel pieces around them).
CANDIDATE_P_THICK = 0.7
CANDIDATE_P_SHARP = 0.6
CANDIDATE_BATCH = 32
# Since 0.9.6 (registered in docs/benchmarks.md before any run of it): the classifier's score
# is the mean over the eight flips of each cube (`radpipe.inference.candidates`).
CANDIDATE_TEST_TIME_FLIPS = True
# Candidates for the classifier's training are the network's components at this lower
# threshold (more hard negatives than at THRESHOLD), before any shape filter.
CANDIDATE_MINING_THRESHOLD = 0.3
# Written down before any held-out run: the classifier's threshold is the highest of
# CANDIDATE_THRESHOLDS at which the TRAIN-family validation studies lose no nodule that the
# segmentation stage with FILTER finds (the lowest where each loses one). Findings were first
# ranked by the geometric mean of both stages; the held-out run with it (docs/benchmarks.md)
# and the validation studies both ranked >= 8 mm nodules lower than the segmentation network
# alone does (validation: S >= 8 mm at 0.1 FP/scan 0.938 against 1.000, CPM 0.624 against
# 0.586), so by the rule above (that sensitivity first, then FP/scan, then CPM) the classifier
# only filtered and the ranking stayed the segmentation network's mean probability until
# 0.9.0, whose classifier (three times the volumes) holds validation ranking by both stages
# (FILTER's note).
CANDIDATE_THRESHOLDS = (0.05, 0.1, 0.2, 0.3, 0.4, 0.5)
# The slice thicknesses the model was trained (1-3 mm) or measured held out (0.6-1.0 mm) on
# (`radpipe.inference.scope`): a study outside opens its alert silenced. Held out, 3-5 mm
# slices carry most of the false positives (docs/benchmarks.md).
VALIDATED_INPUT = {"slice_thickness_mm": [0.6, 3.0]}
VERSION = "0.9.6"
CHANGELOG = {
    "0.9.6": "the candidate classifier scores each cube under its eight flips and averages "
    "(test_time_flips); post-processing as 0.9.4 (min_score by its rule); weights of 0.9.0",
    "0.9.4": "post-processing: the aerated-lung limit spares a candidate the classifier scores "
    ">= 0.8 (air_exempt_score), and findings ranked below 0.3 are not reported (min_score: "
    "the training family's 0.1 FP/scan point, so what pages); weights of 0.9.0",
    "0.9.0": "both stages retrained on three times the TRAIN-family volumes (132 studies and "
    "12 demo phantoms; 5000 segmentation and 8000 classifier steps); findings rank by both "
    "stages (rank_with_candidate_score); post-processing limits as 0.5.3",
    "0.5.3": "post-processing: the aerated-lung limit spares a component hardly touching tissue "
    "(air_exempt_contact 0.1: a part-solid nodule's core in its own ground glass), the contact "
    "limit a candidate the classifier scores >= 0.8 (contact_exempt_score); weights of 0.5.0",
    "0.5.2": "post-processing: findings under 1.25 slice thicknesses across are not reported "
    "(configs/inference.json min_diameter_slice_thickness_ratio; inert up to 3.6 mm slices); "
    "weights of 0.5.0 (0.5.1, with 1.5, was held back)",
    "0.5.0": "both stages retrained from scratch on a TRAIN family that now has airways (70 %) "
    "and intravenous contrast (50 %), as every chest CT protocol set does; the held-out family "
    "is unchanged (it leaves training on slice thickness, body shape and position, truncation, "
    "kernel and noise); validated input as 0.4.1",
    "0.4.1": "declares its validated input (configs/inference.json validated_input: slice "
    "thickness 0.6-3.0 mm); a study outside it opens its alert silenced; weights of 0.4.0",
    "0.4.0": "second stage: a candidate classifier (32^3 cubes around each candidate, trained "
    "on the segmentation network's own candidates on the training volumes and augmented "
    "copies) scores and drops candidates; segmentation weights of 0.3.0 unchanged",
    "0.3.0": "retrained from scratch on a wider family (radpipe.phantoms.TRAIN: part-solid and "
    "ground-glass, juxtapleural and juxtavascular nodules, heart, ribs; no airways) with hard "
    "negatives (vessels, pleura, mediastinum) and scanner augmentation; "
    "post-processing: aerated-lung share, largest size, contact and elongation limits",
    "0.2.0": "shape and context filters (contact with dense tissue, elongation) in "
    "post-processing; weights of 0.1.0 unchanged",
    "0.1.0": "first demo bundle, trained on synthetic phantoms",
}
DESCRIPTION = (
    "Demonstration model trained on synthetic phantoms. Not for diagnosis. "
    "Segments lung nodules in chest CT, checks each candidate with a second classifier and "
    "reports those of 4.5 mm and above."
)


# The held-out figures come from `bench/froc.py` (run it after training and paste its table).
HELD_OUT_FIGURES = """\
144 studies never drawn before (seeds 46000-46143, 36 clean, 281 nodules, 185 of them >= 8
mm), 2026-12-04, `bench/froc.py --scans 144 --seed 46000` against 0.5.3 on the same studies,
registered before the run (docs/benchmarks.md, 0.9.6):

| bundle | S@1/8 | S@1/4 | S@1/2 | S@1 | S@2 | S@4 | S@8 | CPM | FP/scan | FP/clean scan >= 6 mm | >= 8 mm | S >= 8 mm | S >= 8 mm at <= 0.1 FP/scan | diameter MAE |
|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|
| 0.5.3 | 0.573 | 0.591 | 0.612 | 0.623 | 0.623 | 0.623 | 0.623 | 0.610 | 0.92 | 0.50 | 0.03 | 0.881 | 0.843 | 1.53 mm |
| 0.9.6 | 0.698 | 0.701 | 0.708 | 0.708 | 0.708 | 0.708 | 0.708 | 0.706 | 0.34 | 0.14 | 0.06 | 0.946 | 0.930 | 1.28 mm |

**The issue's goal (sensitivity >= 0.9 for nodules >= 8 mm at <= 0.1 FP/scan) is met on
this set: 0.930** (0.5.3: 0.843). 0.9.6 finds 175 of 185 nodules >= 8 mm (0.5.3: 163, and
none that 0.5.3 finds is lost), nodules under 8 mm 24 of 96 (0.5.3: 12), at a third of the
false positives per scan (0.34 against 0.92). Two clean studies of 36 carry a finding of 8 mm
or more (0.5.3: one), both on 3-5 mm slices outside the validated input. Within its
validated input (63 studies of 0.6-1.0 mm slices) it raises 0.08 false positives per scan,
none >= 8 mm on a clean study, and S >= 8 mm at <= 0.1 FP/scan is 0.926; the 81 studies of
3-5 mm slices (alerts silenced) carry 0.54 per scan. A confirmation on 144 more fresh
studies (seeds 47000-47143), registered after the first:

| bundle | S@1/8 | S@1/4 | S@1/2 | S@1 | S@2 | S@4 | S@8 | CPM | FP/scan | FP/clean scan >= 6 mm | >= 8 mm | S >= 8 mm | S >= 8 mm at <= 0.1 FP/scan | diameter MAE |
|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|
| 0.5.3 | 0.562 | 0.587 | 0.620 | 0.620 | 0.620 | 0.620 | 0.620 | 0.607 | 0.56 | 0.45 | 0.03 | 0.886 | 0.826 | 1.54 mm |
| 0.9.6 | 0.698 | 0.707 | 0.707 | 0.707 | 0.707 | 0.707 | 0.707 | 0.705 | 0.22 | 0.21 | 0.05 | 0.953 | 0.946 | 1.19 mm |

Goal met again: **0.946** (0.5.3: 0.826); 142 of 149 nodules >= 8 mm found (0.5.3: 132,
none of them lost); 0.22 false positives per scan (0.5.3: 0.56). Of 38 clean studies two
carry a finding of 8 mm or more (0.5.3: one): a 16 mm one on 0.88 mm slices, on the same
study where 0.5.3 reports a 15 mm one, and a 10 mm one on 4.65 mm slices, outside the
validated input. Within it (79 studies, 19 clean) S >= 8 mm at <= 0.1 FP/scan is 0.978
(0.5.3: 0.891) at 0.04 false positives per scan (0.5.3: 0.11). The 16 mm finding lies on the
visible part of a 25.6 mm ground-glass nodule whose centre the truncated field of view leaves
out: counted as the benchmark now counts (such a nodule ignored, its study not clean), no
clean study within the validated input carries a finding of 8 mm or more with either bundle,
and over all 37 clean studies 0.9.6 has one, the 10 mm one (0.03).
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

## Validated input

Slice thickness 0.6-3.0 mm (`validated_input` in `configs/inference.json`): the range it was
trained on (1-3 mm) or measured on held out (0.6-1.0 mm). On 3-5 mm slices, held out, it
raises most of its false positives (0.54 per scan against 0.08 on thin slices over the 144
studies below; 0.5.3 raised 1.23 and 0.33 on another 72, 0.5.0 2.17 and 0.13 on a third).
Radpipe still analyses and shows a study outside the range, marks it on the study page and
opens its alert silenced (nobody paged) unless the alert configuration sets
`page_outside_validated_input = true`.

## Training data

`scripts/train_demo_bundle.py` (seed {seed}, deterministic on CPU; rerunning it with the
default arguments reproduces `models/model.pt`), from scratch, on two generators:

- 12 phantoms from `radpipe.demo`: 1-3 mm slices (a third with 0.6-1.8 mm pixels), 256-512
  matrices, ellipse body and lungs, vessels, ribs, spine and heart, 8-30 HU of white noise;
  0-4 solid spherical nodules of 3-30 mm, fully inside the lung.
- 132 studies from `radpipe.phantoms.TRAIN` (44 until 0.5.3): 1-3 mm slices, 0.6-1.0 mm
  pixels, near-ellipse centred bodies and lungs with domes, branching vessels, heart,
  aorta, slanted ribs, spine, smooth kernel, 5-25 HU of noise, airways in 70 %,
  intravenous contrast in half (since 0.5.0; before, neither); one in eight clean, the
  others 1-4 nodules of 4-30 mm, solid, part-solid or ground-glass, free, juxtapleural or
  juxtavascular.

Patches of 48^3 voxels on the 1.5 mm grid: 45 % on a nodule (one nodule at a time, so small
ones weigh as much as large ones), 25 % on dense voxels inside the lung (vessels: hard
negatives), 15 % on dense voxels within 4.5 mm outside it (pleura, chest wall, heart,
mediastinum, ribs), 15 % anywhere in the body. Augmentation for scanner variation in general
(not tuned on the held-out family, which training never sees): flips and in-plane transposes,
thick-slice blur along z, an in-plane sharpening or smoothing kernel, dense tissue scaled
0.8-1.6x (contrast, calibration), gain and offset, white or high-pass noise up to 35 HU.
3-D UNet (16-128 channels), HU window -1000..400, Dice + cross-entropy per patch, Adam with
cosine decay.

{post_processing}

## Validation on its own generator (`radpipe.demo`, 6 fresh phantoms)

Dice {val_dice:.3f}, sensitivity {val_sensitivity:.3f} ({val_nodules} nodules of 5-30 mm),
{val_false_positives_per_volume:.2f} false positives per volume, diameter error
{val_diameter_mae_mm:.2f} mm mean / {val_diameter_max_error_mm:.2f} mm max. Measured on the
generator it was trained on: an optimistic figure.

## Held out: another generator, settings never trained on (`bench/froc.py`)

`radpipe.phantoms.HELD_OUT`: 0.6-1.0 or 3-5 mm slices, boxy off-centre bodies, truncated
fields of view, sharp kernel, 25-40 HU of noise (none of these in training); airways, and
intravenous contrast in 60 % (both in training since 0.5.0);
solid, part-solid and ground-glass nodules of 4-30 mm, free, juxtapleural and
juxtavascular; a quarter of the studies clean. Sensitivity at 1/8 ... 8 false positives per
scan, their mean (CPM, as LUNA16), FP per clean scan at >= 6 and >= 8 mm:

{held_out}
"""


@dataclass
class Sample:
    image: np.ndarray  # (z, y, x) float32 in [0, 1], padded by PATCH // 2
    label: np.ndarray  # (z, y, x) uint8 {0, 1}, padded
    nodules: list[np.ndarray]  # per nodule, (n, 3) voxels inside it
    kinds: list[str]  # per nodule: solid, part-solid, ground-glass
    dense_idx: np.ndarray  # (n, 3) dense voxels inside the lungs (vessels): hard negatives
    wall_idx: np.ndarray  # (n, 3) dense voxels just outside the lungs (pleura, heart, ribs)
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


def _train_study(seed: int) -> Phantom:
    """A `radpipe.phantoms.TRAIN` study: clean one time in eight, else 1-4 nodules of 4-30 mm
    of any kind and site (the family draws them)."""
    rng = np.random.default_rng(seed ^ 0x5EED)
    count = 0 if rng.random() < 0.125 else int(rng.integers(1, 5))
    sizes = [float(math.exp(rng.uniform(math.log(4.0), math.log(30.0)))) for _ in range(count)]
    return make_study(seed, TRAIN, nodules=sizes)


def _volume(ph: Phantom) -> Volume:
    return Volume(ph.volume.astype(np.float32), ph.spacing, [])


def _on_grid(mask: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Nearest-neighbour copy of an input-grid mask onto the bundle grid (same field of view)."""
    index = [
        np.clip(np.floor((np.arange(m) + 0.5) * n / m).astype(int), 0, n - 1)
        for m, n in zip(shape, mask.shape, strict=True)
    ]
    return mask[np.ix_(*index)]


def _sample(ph: Phantom, bundle: Bundle) -> Sample:
    image = pre_process(_volume(ph), bundle)[0].numpy()
    # The phantom's own truth (lobulated, ellipsoidal), not the sphere of its diameter.
    if ph.nodule_mask.shape == ph.volume.shape:
        label = _on_grid(ph.nodule_mask, image.shape)
    else:
        label = ph.nodule_mask_on_grid(image.shape)  # type: ignore[arg-type]
    lung = _on_grid(ph.lung_mask, image.shape)
    dense = (-400.0 - WINDOW[0]) / (WINDOW[1] - WINDOW[0])  # vessels; lung is ~ -850 HU
    near = lung.astype(np.uint8)
    for _ in range(3):
        near = _max3(near)
    pad = PATCH // 2
    return Sample(
        image=np.pad(image, pad),
        label=np.pad(label.astype(np.uint8), pad),
        nodules=[
            np.argwhere(ph.nodule_mask_on_grid(image.shape, [n])) + pad  # type: ignore[arg-type]
            for n in ph.nodules
        ],
        kinds=[n.kind for n in ph.nodules],
        dense_idx=np.argwhere(lung & (image > dense) & ~label) + pad,
        wall_idx=np.argwhere((near > 0) & ~lung & (image > dense) & ~label)[::7] + pad,
        body_idx=np.argwhere(image > 0.5)[::7] + pad,
    )


def _blur(a: np.ndarray, axes: tuple[int, ...]) -> np.ndarray:
    """[1 2 1] / 4 along `axes` (edges repeat)."""
    for axis in axes:
        p = np.pad(a, [(1, 1) if i == axis else (0, 0) for i in range(3)], mode="edge")
        lo = tuple(slice(0, -2) if i == axis else slice(None) for i in range(3))
        mid = tuple(slice(1, -1) if i == axis else slice(None) for i in range(3))
        hi = tuple(slice(2, None) if i == axis else slice(None) for i in range(3))
        a = 0.25 * p[lo] + 0.5 * p[mid] + 0.25 * p[hi]
    return a


def _thick_slices(img: np.ndarray, factor: float) -> np.ndarray:
    """Thicker slices: the patch averaged over z in `factor`-voxel slabs, then linearly
    interpolated back, as a scanner's thick reconstruction resampled to the bundle grid is
    (MONAI's RandSimulateLowResolution along z)."""
    t = torch.from_numpy(np.ascontiguousarray(img, dtype=np.float32))[None, None]
    slabs = max(2, round(img.shape[0] / factor))
    low = torch.nn.functional.interpolate(t, size=(slabs, *img.shape[1:]), mode="area")
    out = torch.nn.functional.interpolate(low, size=img.shape, mode="trilinear")
    return out[0, 0].numpy()


def _augment(
    img: np.ndarray, rng: np.random.Generator, p_thick: float = 0.35, p_sharp: float = 0.35
) -> np.ndarray:
    """Scanner variation in general, on the [0, 1] window (1 HU = 1 / 1400): not tuned on the
    held-out family, whose studies are never seen in training.

    Thick slices (2-5 mm slabs averaged and interpolated back along z), a
    sharp kernel (in-plane unsharp mask) or a smoother one, dense tissue brighter or darker
    (intravenous contrast, calibration: HU above -100 scaled by 0.8-1.6), a small gain and
    offset, then white or high-pass noise of up to 35 HU.
    """
    if rng.random() < p_thick:
        img = _thick_slices(img, rng.uniform(2.0, 5.0) / SPACING[0])
    kernel = rng.random()
    if kernel < p_sharp:
        img = img + rng.uniform(0.3, 1.0) * (img - _blur(img, (1, 2)))
    elif kernel < p_sharp + 0.15:
        img = _blur(img, (1, 2))
    if rng.random() < 0.4:
        soft = (-100.0 - WINDOW[0]) / (WINDOW[1] - WINDOW[0])
        img = np.where(img > soft, soft + (img - soft) * rng.uniform(0.8, 1.6), img)
    img = img * rng.uniform(0.95, 1.05) + rng.uniform(-0.03, 0.03)
    if rng.random() < 0.7:
        noise = rng.normal(0.0, 1.0, size=img.shape)
        if rng.random() < 0.5:
            noise = noise - 0.5 * _blur(noise, (1, 2))
        img = img + noise * (rng.uniform(0.0, 35.0) / 1400.0 / max(float(noise.std()), 1e-6))
    return np.clip(img, -0.1, 1.1)


def _batch(samples: list[Sample], rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = [], []
    half = PATCH // 2
    with_nodules = [s for s in samples if any(len(n) for n in s.nodules)]
    for _ in range(BATCH):
        kind = rng.choice(4, p=[0.45, 0.25, 0.15, 0.15])
        if kind == 0:
            # One nodule at a time, whatever its size: sampling voxels would favour the
            # largest nodules by their volume and leave the small ones, the hard ones, unseen.
            s = with_nodules[int(rng.integers(len(with_nodules)))]
            voxels = [n for n in s.nodules if len(n)]
            pool = voxels[int(rng.integers(len(voxels)))]
        else:
            s = samples[int(rng.integers(len(samples)))]
            pool = {1: s.dense_idx, 2: s.wall_idx}.get(int(kind), s.body_idx)
            if not len(pool):
                pool = s.body_idx
        c = pool[int(rng.integers(len(pool)))] + rng.integers(-half // 2, half // 2 + 1, size=3)
        c = np.clip(c, half, np.array(s.image.shape) - half)
        box = tuple(slice(int(v) - half, int(v) + half) for v in c)
        img, lab = s.image[box], s.label[box]
        for axis in range(3):
            if rng.random() < 0.5:
                img, lab = np.flip(img, axis), np.flip(lab, axis)
        if rng.random() < 0.5:
            img, lab = img.transpose(0, 2, 1), lab.transpose(0, 2, 1)
        img = _augment(img, rng)
        images.append(np.ascontiguousarray(img, dtype=np.float32))
        labels.append(np.ascontiguousarray(lab, dtype=np.float32))
    return torch.from_numpy(np.stack(images)[:, None]), torch.from_numpy(np.stack(labels)[:, None])


@dataclass
class CandidateBank:
    """Cubes around the segmentation network's own candidates on the training volumes."""

    cubes: np.ndarray  # (n, P, P, P) float16, the [0, 1] window
    labels: np.ndarray  # (n,) bool: the candidate's centre lies in a true nodule


def _nodule_centres(s: Sample) -> list[tuple[np.ndarray, float]]:
    """Per nodule of a sample: its centre (unpadded bundle-grid voxels) and hit radius there."""
    pad = PATCH // 2
    return [
        (
            vox.mean(axis=0) - pad,
            max((3 * len(vox) / (4 * math.pi)) ** (1 / 3), MIN_HIT_MM / SPACING[0]),
        )
        for vox in s.nodules
        if len(vox)
    ]


def _mine_candidates(
    samples: list[Sample], bundle: Bundle, rng: np.random.Generator
) -> CandidateBank:
    """Run the segmentation network on every training volume, as it is and on two
    scanner-augmented copies (`_augment`), and keep a cube around each component of at least
    MIN_VOLUME_MM3 at CANDIDATE_MINING_THRESHOLD: positive when its centre lies in a nodule,
    negative when it lies beyond twice the nodule's radius (in between: ambiguous, skipped)."""
    pad = PATCH // 2
    min_voxels = MIN_VOLUME_MM3 / math.prod(SPACING)
    cubes, labels = [], []
    started = time.perf_counter()
    for k, s in enumerate(samples):
        image = s.image[pad:-pad, pad:-pad, pad:-pad]
        nodules = _nodule_centres(s)
        scanner = _augment(image, rng, p_thick=CANDIDATE_P_THICK, p_sharp=CANDIDATE_P_SHARP)
        for variant in (image, _augment(image, rng), scanner):
            variant = np.ascontiguousarray(variant, dtype=np.float32)
            prob = predict(torch.from_numpy(variant)[None], bundle)
            comp, n = label_components(prob >= CANDIDATE_MINING_THRESHOLD)
            if n == 0:
                continue
            fg = comp > 0
            lab = comp[fg]
            counts = np.bincount(lab, minlength=n + 1)
            centres = (
                np.stack(
                    [np.bincount(lab, weights=c, minlength=n + 1) for c in np.nonzero(fg)], axis=1
                )
                / np.maximum(counts, 1)[:, None]
            )
            for i in range(1, n + 1):
                if counts[i] < min_voxels:
                    continue
                distance = [np.linalg.norm(centres[i] - c) / r for c, r in nodules]
                nearest = min(distance, default=math.inf)
                if 1.0 < nearest <= 2.0:
                    continue
                cubes.append(crop(variant, centres[i], CANDIDATE_PATCH).astype(np.float16))
                labels.append(nearest <= 1.0)
        print(
            f"candidates: {k + 1}/{len(samples)} volumes, {len(labels)} cubes, "
            f"{sum(labels)} on nodules ({time.perf_counter() - started:.0f} s)",
            flush=True,
        )
    return CandidateBank(np.stack(cubes), np.array(labels, dtype=bool))


def _flip(cube: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    for axis in range(3):
        if rng.random() < 0.5:
            cube = np.flip(cube, axis)
    if rng.random() < 0.5:
        cube = cube.transpose(0, 2, 1)
    return np.ascontiguousarray(cube, dtype=np.float32)


def _candidate_batch(
    samples: list[Sample], bank: CandidateBank, rng: np.random.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Half positives, half negatives; half of each from the mined bank, half cut around a
    true nodule (jittered by up to 2 voxels) or a dense voxel in or just outside the lung."""
    with_nodules = [s for s in samples if any(len(n) for n in s.nodules)]
    pools = {True: np.flatnonzero(bank.labels), False: np.flatnonzero(~bank.labels)}
    cubes, targets = [], []
    for b in range(CANDIDATE_BATCH):
        positive = b % 2 == 0
        if rng.random() < 0.5 and len(pools[positive]):
            cube = bank.cubes[int(rng.choice(pools[positive]))].astype(np.float32)
            if rng.random() < 0.5:
                cube = _augment(cube, rng, CANDIDATE_P_THICK, CANDIDATE_P_SHARP)
        else:
            if positive:
                s = with_nodules[int(rng.integers(len(with_nodules)))]
                voxels = [n for n in s.nodules if len(n)]
                centre = voxels[int(rng.integers(len(voxels)))].mean(axis=0)
                centre = centre + rng.integers(-2, 3, size=3)
            else:
                s = samples[int(rng.integers(len(samples)))]
                pool = s.dense_idx if rng.random() < 0.6 else s.wall_idx
                if not len(pool):
                    pool = s.body_idx
                centre = pool[int(rng.integers(len(pool)))]
            cube = crop(s.image, centre, CANDIDATE_PATCH)
            cube = _augment(cube, rng, CANDIDATE_P_THICK, CANDIDATE_P_SHARP)
        cubes.append(_flip(cube, rng))
        targets.append(float(positive))
    return (
        torch.from_numpy(np.stack(cubes)[:, None]),
        torch.tensor(targets, dtype=torch.float32)[:, None],
    )


def _train_candidates(
    samples: list[Sample], bank: CandidateBank, steps: int, rng: np.random.Generator
) -> torch.nn.Module:
    net = ConfigParser({"network_def": CANDIDATE_NETWORK}).get_parsed_content("network_def")
    assert isinstance(net, torch.nn.Module)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    net.train()
    running = 0.0
    started = time.perf_counter()
    for step in range(1, steps + 1):
        x, y = _candidate_batch(samples, bank, rng)
        loss = loss_fn(net(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        running = 0.9 * running + 0.1 * loss.item() if step > 1 else loss.item()
        if step % 100 == 0 or step == steps:
            print(
                f"candidate step {step}/{steps} loss {running:.4f} "
                f"({time.perf_counter() - started:.0f} s)",
                flush=True,
            )
    net.eval()
    return net


def _choose_candidate_threshold(studies: list[Phantom], bundle: Bundle) -> tuple[float, str]:
    """CANDIDATE_THRESHOLDS' pick by the rule written beside them, on TRAIN-family studies."""
    assert bundle.candidates is not None
    keep_all = dataclasses.replace(bundle.candidates, threshold=0.0)
    runs = []
    for ph in studies:
        volume = _volume(ph)
        image = pre_process(volume, bundle)
        prob = predict(image, bundle)
        original, bundle.candidates = bundle.candidates, keep_all
        findings, _ = segment_findings(prob, volume, bundle, image)
        bundle.candidates = original
        runs.append((ph, findings))

    def found(t: float) -> tuple[int, int]:
        cases = [
            Case(
                list(ph.nodules),
                [f for f in fs if (f.candidate_score or 0.0) >= t],
                ph.spacing,
            )
            for ph, fs in runs
        ]
        hits = sum(len({j for j in c.hits.values() if j >= 0}) for c in cases)
        return hits, sum(len(c.false_positives()) for c in cases)

    base_hits, base_fps = found(0.0)
    chosen, lines = CANDIDATE_THRESHOLDS[0], []
    for t in CANDIDATE_THRESHOLDS:
        hits, fps = found(t)
        lines.append(f"{t:g}: {hits}/{base_hits} found, {fps} FP (without: {base_fps})")
        if hits == base_hits:
            chosen = t
    return chosen, "; ".join(lines)


def _validate(phantoms: list[Phantom], bundle: Bundle) -> dict[str, float]:
    """Run the service stages on fresh phantoms; Dice, sensitivity, FPs and size error."""
    dices, errors, times = [], [], []
    found = total = false_pos = 0
    for ph in phantoms:
        volume = _volume(ph)
        start = time.perf_counter()
        image = pre_process(volume, bundle)
        findings, labels = segment_findings(predict(image, bundle), volume, bundle, image)
        times.append(time.perf_counter() - start)
        truth = ph.nodule_mask_on_grid(labels.shape)  # type: ignore[arg-type]
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


def _validate_family(studies: list[Phantom], bundle: Bundle) -> dict[str, float]:
    """FROC figures on fresh `TRAIN`-family studies (the post-processing limits are chosen
    here, never on the held-out family)."""
    cases = []
    for ph in studies:
        volume = _volume(ph)
        image = pre_process(volume, bundle)
        findings, _ = segment_findings(predict(image, bundle), volume, bundle, image)
        cases.append(Case(list(ph.nodules), findings, ph.spacing))
    s = scores(cases)
    return {
        "train_family_cpm": s.cpm,
        "train_family_fp_per_scan": s.fp_per_scan,
        "train_family_sensitivity": s.sensitivity_at_threshold,
        "train_family_sensitivity_8mm_at_0_1_fp": s.sensitivity_8mm_at_0_1_fp,
        "train_family_scans": s.scans,
        "train_family_nodules": s.nodules,
    }


def _write_bundle(
    out: Path,
    net: torch.nn.Module,
    metrics: dict[str, float],
    args: argparse.Namespace,
    candidates: CandidateClassifier | None,
) -> None:
    (out / "configs").mkdir(parents=True, exist_ok=True)
    (out / "models").mkdir(parents=True, exist_ok=True)
    (out / "docs").mkdir(parents=True, exist_ok=True)
    if not args.revalidate and not args.candidates_only:
        torch.save(net.state_dict(), out / "models" / "model.pt")
    if candidates is not None and not args.revalidate:
        torch.save(candidates.network.state_dict(), out / "models" / "candidates.pt")
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
        **{k: v for k, v in dataclasses.asdict(FILTER).items() if v is not None},
        "network_def": NETWORK,
        "network": "$@network_def.to(@device)",
        "validated_input": VALIDATED_INPUT,
    }
    if candidates is not None:
        inference["candidate_classifier"] = {
            "network_def": CANDIDATE_NETWORK,
            "weights": "models/candidates.pt",
            "patch_size": CANDIDATE_PATCH,
            "threshold": candidates.threshold,
            "test_time_flips": CANDIDATE_TEST_TIME_FLIPS,
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
                "sop_class": [
                    "1.2.840.10008.5.1.4.1.1.2",
                    "1.2.840.10008.5.1.4.1.1.2.1",
                    "1.2.840.10008.5.1.4.1.1.2.2",
                ],
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
            "candidate_classifier": {
                "steps": CANDIDATE_STEPS,
                "batch_size": CANDIDATE_BATCH,
                "patch_size": [CANDIDATE_PATCH] * 3,
                "mining_threshold": CANDIDATE_MINING_THRESHOLD,
                "loss": "binary cross-entropy, half positives",
            },
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
        post_processing=POST_PROCESSING.format(
            threshold=THRESHOLD,
            min_volume=MIN_VOLUME_MM3,
            max_hu=MAX_MEAN_HU,
            candidate_threshold=candidates.threshold if candidates else float("nan"),
        ).strip(),
        **metrics,
    )
    (out / "docs" / "README.md").write_text(card)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=default_bundle_path())
    parser.add_argument("--steps", type=int, default=5000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--revalidate", action="store_true", help="keep the weights in --out, no training"
    )
    parser.add_argument(
        "--checkpoints", type=Path, default=None, help="also save the weights every 500 steps here"
    )
    parser.add_argument(
        "--candidates-only",
        action="store_true",
        help="keep the segmentation weights in --out, train only the candidate classifier",
    )
    parser.add_argument("--candidate-steps", type=int, default=CANDIDATE_STEPS)
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
    bundle.shape_filter = FILTER  # type: ignore[attr-defined]
    if args.revalidate or args.candidates_only:
        net.load_state_dict(torch.load(args.out / "models" / "model.pt", weights_only=True))
        net.eval()
    old = json.loads((args.out / "configs" / "metadata.json").read_text())["training"]
    if args.revalidate:
        bundle.candidates = load_bundle(args.out, "cpu").candidates
        metrics = _validate(
            [_phantom(SEED + 100_000 + i, low=5.0) for i in range(VAL_PHANTOMS)], bundle
        ) | _validate_family([_train_study(SEED + 200_000 + i) for i in range(VAL_STUDIES)], bundle)
        metrics = {k: round(v, 4) if isinstance(v, float) else v for k, v in metrics.items()}
        # Timings, threads and choices stay those of the training run that made the weights.
        for key, value in old["metrics"].items():
            if key.startswith(("train_seconds", "final_", "val_seconds", "candidate_")):
                metrics[key] = value
        args.threads = old["threads"]
        print("validation:", json.dumps(metrics), flush=True)
        _write_bundle(args.out, net, metrics, args, bundle.candidates)
        return 0
    samples = []
    for i in range(TRAIN_PHANTOMS):
        samples.append(_sample(_phantom(SEED + i, low=3.0), bundle))
    for i in range(TRAIN_STUDIES):
        samples.append(_sample(_train_study(SEED + 300_000 + i), bundle))
        print(f"data: {len(samples)} volumes ({time.perf_counter() - started:.0f} s)", flush=True)
    val = [_phantom(SEED + 100_000 + i, low=5.0) for i in range(VAL_PHANTOMS)]
    val_family = [_train_study(SEED + 200_000 + i) for i in range(VAL_STUDIES)]
    print(
        f"data: {TRAIN_PHANTOMS} + {TRAIN_STUDIES} train volumes in "
        f"{time.perf_counter() - started:.0f} s",
        flush=True,
    )

    if args.candidates_only:
        train_seconds = old["metrics"]["train_seconds"]
        running = old["metrics"]["final_train_loss"]
    else:
        train_seconds, running = _train_segmentation(net, samples, args, rng, started)
        net.eval()

    # Second stage, on the same volumes, from its own seed (the first stage is unchanged by it).
    stage2 = time.perf_counter()
    torch.manual_seed(SEED + 1)
    candidate_rng = np.random.default_rng(SEED + 1)
    bank = _mine_candidates(samples, bundle, candidate_rng)
    classifier = CandidateClassifier(
        network=_train_candidates(samples, bank, args.candidate_steps, candidate_rng),
        patch_size=CANDIDATE_PATCH,
        threshold=0.0,
        weights=args.out / "models" / "candidates.pt",
        test_time_flips=CANDIDATE_TEST_TIME_FLIPS,
    )
    bundle.candidates = classifier
    classifier.threshold, choice = _choose_candidate_threshold(val_family, bundle)
    print(f"candidate threshold {classifier.threshold:g} ({choice})", flush=True)

    metrics = _validate(val, bundle) | _validate_family(val_family, bundle)
    metrics = {k: round(v, 4) if isinstance(v, float) else v for k, v in metrics.items()}
    metrics["train_seconds"] = round(train_seconds, 1)
    metrics["final_train_loss"] = round(running, 4)
    metrics["candidate_train_seconds"] = round(time.perf_counter() - stage2, 1)
    metrics["candidate_cubes"] = len(bank.labels)
    metrics["candidate_cubes_on_nodules"] = int(bank.labels.sum())
    metrics["candidate_threshold_choice"] = choice
    print("validation:", json.dumps(metrics), flush=True)
    _write_bundle(args.out, net, metrics, args, classifier)
    print(f"validation Dice {metrics['val_dice']:.3f}; bundle written to {args.out}")
    return 0


def _train_segmentation(
    net: torch.nn.Module,
    samples: list[Sample],
    args: argparse.Namespace,
    rng: np.random.Generator,
    started: float,
) -> tuple[float, float]:
    """The first stage; returns its seconds (from `started`) and the final running loss."""
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
        if args.checkpoints and step % 500 == 0:
            args.checkpoints.mkdir(parents=True, exist_ok=True)
            torch.save(net.state_dict(), args.checkpoints / f"step{step}.pt")
    return time.perf_counter() - started, running


if __name__ == "__main__":
    raise SystemExit(main())
