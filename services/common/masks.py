"""Binary masks of one nodule in the analysed series' voxel grid: the wire encoding the portal
accepts and answers, strict decoding, and the measures taken from a mask.

Wire encoding ``rle-slices-v1`` (JSON), per slice a run-length code of the binary slice::

    {"encoding": "rle-slices-v1",
     "series_uid": "1.2.…",                 # the analysed series (echoed, checked)
     "shape": [slices, rows, columns],      # its voxel grid (echoed, checked)
     "slices": {"12": [start, length, start, length, …], …},
     "empty": false}

``slices`` keys are slice indices from 0 in the analysed series' volume order (the viewer's
order, ``analysis.input_sop_uids``); each value lists the runs of 1-pixels of that slice in
row-major order (index = row × columns + column): ``start`` from 0, ``length`` ≥ 1, runs in
increasing order, each starting after the previous one's end + 1 (maximal runs, so one mask has
one code). Slices without a pixel are left out. A mask without any pixel must say so with
``"empty": true`` (and no slices): an empty mask by accident is refused, not stored.

Bounds: at most ``MAX_RUNS`` runs and ``MAX_VOXELS`` voxels; anything else is a ``MaskError``
whose message names the fix (the portal answers it with 400 and stores nothing).

In memory a mask is sparse (``Mask``: slice index → sorted flat pixel indices), so a 512 × 512 ×
300 series costs what its nodule costs. Measures: volume (voxels × voxel volume), the
equivalent-sphere diameter (6 V / π)^(1/3) the AI reports (``inference/findings.py``), Dice
(2|A∩B| / (|A| + |B|)) and IoU (|A∩B| / |A∪B|), "n/a" when both masks are empty.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "ENCODING",
    "MAX_RUNS",
    "MAX_VOXELS",
    "Geometry",
    "Mask",
    "MaskError",
    "decode",
    "encode",
    "equivalent_diameter",
    "from_dense",
    "overlap",
    "sphere",
    "to_dense_slice",
    "union",
    "voxel_count",
]

ENCODING = "rle-slices-v1"
#: At most this many runs in one mask (a hand-drawn nodule needs a few hundred).
MAX_RUNS = 100_000
#: At most this many voxels in one mask (a 10 cm sphere at 0.5 mm voxels is ~4.2 M: ample).
MAX_VOXELS = 5_000_000

#: slice index -> sorted, unique flat pixel indices (row × columns + column) of that slice.
Mask = dict[int, np.ndarray]


class MaskError(ValueError):
    """A mask that does not decode, or does not fit the series; the message names the fix."""


@dataclass(frozen=True)
class Geometry:
    """The analysed series' voxel grid: slices in volume order, rows, columns, spacing in mm
    (between slices, between rows, between columns)."""

    series_uid: str
    slices: int
    rows: int
    columns: int
    spacing: tuple[float, float, float]

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.slices, self.rows, self.columns)

    @property
    def voxel_mm3(self) -> float:
        return self.spacing[0] * self.spacing[1] * self.spacing[2]

    def to_dict(self) -> dict[str, Any]:
        return {
            "encoding": ENCODING,
            "series_uid": self.series_uid,
            "shape": list(self.shape),
            "spacing_mm": list(self.spacing),
        }


def _int(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise MaskError(f"{what} must be an integer, got {value!r}")
    return value


def decode(payload: Any, geometry: Geometry) -> Mask:
    """The mask ``payload`` (wire encoding ``rle-slices-v1``) carries, checked against
    ``geometry``.

    Raises:
        MaskError: not the encoding, another series or shape, runs out of order, overlapping
            or out of the slice, too many runs or voxels, empty without ``"empty": true``.
    """
    if not isinstance(payload, dict):
        raise MaskError(f'a mask is a JSON object {{"encoding": "{ENCODING}", …}}')
    unknown = sorted(set(payload) - {"encoding", "series_uid", "shape", "slices", "empty"})
    if unknown:
        raise MaskError(f"unknown mask field(s) {', '.join(unknown)}; see encoding {ENCODING}")
    if payload.get("encoding") != ENCODING:
        raise MaskError(f'mask encoding must be "{ENCODING}", got {payload.get("encoding")!r}')
    if payload.get("series_uid") != geometry.series_uid:
        raise MaskError(
            f"the mask is for series {payload.get('series_uid')!r}; draw it on the analysed "
            f"series {geometry.series_uid}"
        )
    shape = payload.get("shape")
    if not isinstance(shape, list) or [_int(v, "shape") for v in shape] != list(geometry.shape):
        raise MaskError(
            f"mask shape {shape!r} is not the analysed series' [slices, rows, columns] "
            f"{list(geometry.shape)}"
        )
    slices = payload.get("slices")
    if not isinstance(slices, dict):
        raise MaskError('mask "slices" must be an object {"<slice>": [start, length, …]}')
    empty = payload.get("empty", False)
    if not isinstance(empty, bool):
        raise MaskError('mask "empty" is true or false')
    size = geometry.rows * geometry.columns
    mask: Mask = {}
    runs_total = voxels = 0
    for key, runs in slices.items():
        if not (isinstance(key, str) and key.isdecimal() and str(int(key)) == key):
            raise MaskError(f"slice key {key!r} must be a slice index from 0 written in decimal")
        k = int(key)
        if k >= geometry.slices:
            raise MaskError(f"slice {k} is outside the series' {geometry.slices} slices")
        if not isinstance(runs, list) or not runs or len(runs) % 2:
            raise MaskError(
                f"slice {k}: runs are a non-empty list [start, length, …] of even length"
            )
        runs_total += len(runs) // 2
        if runs_total > MAX_RUNS:
            raise MaskError(f"the mask has over {MAX_RUNS} runs; send the nodule only")
        end = -1
        parts = []
        for i in range(0, len(runs), 2):
            start = _int(runs[i], f"slice {k} run start")
            length = _int(runs[i + 1], f"slice {k} run length")
            if length < 1:
                raise MaskError(f"slice {k}: run at {start} has length {length}; lengths are ≥ 1")
            if start <= end:
                raise MaskError(
                    f"slice {k}: run at {start} starts at or before the end of the previous "
                    f"run + 1 ({end}); runs are increasing, apart and maximal"
                )
            if start + length > size:
                raise MaskError(
                    f"slice {k}: run {start}+{length} leaves the {geometry.rows}×"
                    f"{geometry.columns} slice"
                )
            parts.append(np.arange(start, start + length, dtype=np.int64))
            end = start + length  # the next run must start after a gap
            voxels += length
        if voxels > MAX_VOXELS:
            raise MaskError(f"the mask has over {MAX_VOXELS} voxels; send the nodule only")
        mask[k] = np.concatenate(parts)
    if not mask and not empty:
        raise MaskError('the mask has no pixel: paint the nodule, or send "empty": true')
    if mask and empty:
        raise MaskError('an "empty": true mask has no slices; drop one or the other')
    return mask


def encode(mask: Mask, geometry: Geometry) -> dict[str, Any]:
    """``mask`` in the wire encoding (``decode(encode(m, g), g) == m``)."""
    slices: dict[str, list[int]] = {}
    for k in sorted(mask):
        flat = mask[k]
        if flat.size == 0:
            continue
        breaks = np.flatnonzero(np.diff(flat) != 1) + 1
        starts = np.concatenate(([0], breaks))
        ends = np.concatenate((breaks, [flat.size]))
        runs: list[int] = []
        for s, e in zip(starts.tolist(), ends.tolist(), strict=True):
            runs += [int(flat[s]), e - s]
        slices[str(k)] = runs
    return {
        "encoding": ENCODING,
        "series_uid": geometry.series_uid,
        "shape": list(geometry.shape),
        "slices": slices,
        "empty": not slices,
    }


def from_dense(frames: dict[int, np.ndarray]) -> Mask:
    """A sparse mask from 2-D boolean slices (slice index -> rows × columns)."""
    mask: Mask = {}
    for k, frame in frames.items():
        flat = np.flatnonzero(np.asarray(frame).reshape(-1)).astype(np.int64)
        if flat.size:
            mask[int(k)] = flat
    return mask


def to_dense_slice(mask: Mask, k: int, geometry: Geometry) -> np.ndarray:
    """Slice ``k`` of ``mask`` as a rows × columns boolean array."""
    frame = np.zeros(geometry.rows * geometry.columns, dtype=bool)
    if k in mask:
        frame[mask[k]] = True
    return frame.reshape(geometry.rows, geometry.columns)


def union(masks: Iterable[Mask]) -> Mask:
    merged: dict[int, list[np.ndarray]] = {}
    for mask in masks:
        for k, flat in mask.items():
            merged.setdefault(k, []).append(flat)
    return {k: np.unique(np.concatenate(parts)) for k, parts in merged.items()}


def voxel_count(mask: Mask) -> int:
    return int(sum(flat.size for flat in mask.values()))


def equivalent_diameter(volume_mm3: float) -> float:
    """The diameter (mm) of the sphere of ``volume_mm3``: (6 V / π)^(1/3)."""
    return (6.0 * volume_mm3 / math.pi) ** (1.0 / 3.0) if volume_mm3 > 0 else 0.0


def overlap(a: Mask, b: Mask) -> dict[str, Any]:
    """Dice and IoU of two masks on one grid, rounded to 4 places; "n/a" when both are empty."""
    size_a, size_b = voxel_count(a), voxel_count(b)
    if size_a + size_b == 0:
        return {"dice": "n/a", "iou": "n/a"}
    inter = sum(
        int(np.intersect1d(a[k], b[k], assume_unique=True).size) for k in a.keys() & b.keys()
    )
    return {
        "dice": round(2 * inter / (size_a + size_b), 4),
        "iou": round(inter / (size_a + size_b - inter), 4),
    }


def sphere(geometry: Geometry, center_zyx: tuple[float, float, float], diameter: float) -> Mask:
    """The voxels whose centres lie within ``diameter / 2`` mm of ``center_zyx`` (a voxel
    index, fractional allowed): the stand-in mask of a read given by size and place only."""
    radius = diameter / 2.0
    dz, dy, dx = geometry.spacing
    cz, cy, cx = center_zyx
    mask: Mask = {}
    if radius <= 0:
        return mask
    ry, rx = radius / dy, radius / dx
    y0, y1 = max(0, math.floor(cy - ry)), min(geometry.rows - 1, math.ceil(cy + ry))
    x0, x1 = max(0, math.floor(cx - rx)), min(geometry.columns - 1, math.ceil(cx + rx))
    if y0 > y1 or x0 > x1:
        return mask
    ys, xs = np.mgrid[y0 : y1 + 1, x0 : x1 + 1]
    planar = ((ys - cy) * dy) ** 2 + ((xs - cx) * dx) ** 2
    rz = radius / dz
    for k in range(max(0, math.floor(cz - rz)), min(geometry.slices - 1, math.ceil(cz + rz)) + 1):
        inside = planar + ((k - cz) * dz) ** 2 <= radius**2
        if inside.any():
            flat = (ys[inside] * geometry.columns + xs[inside]).astype(np.int64)
            mask[k] = np.sort(flat)
    return mask
