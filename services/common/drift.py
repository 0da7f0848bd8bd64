"""Pure statistics of model monitoring: binned distributions, their drift, and reader PPV.

Distributions are proportions over fixed bins (``edges``: values under the first edge count in
the first bin, over the last in the last, so every study lands somewhere). Drift between a
reference ``e`` and an observed ``a`` over the same bins:

* the population stability index, ``PSI = sum((a_i - e_i) * ln(a_i / e_i))`` with empty bins
  floored at :data:`PSI_FLOOR` (Siddiqi, *Credit Risk Scorecards*, 2006: < 0.1 stable,
  0.1-0.25 a moderate shift, > 0.25 a significant one);
* the Kolmogorov-Smirnov statistic on the binned distributions, ``max_i |E_i - A_i|`` over the
  cumulative proportions (the two-sample KS statistic at the bins' resolution);
* the share outside the training data: the observed mass in bins where the reference has less
  than :data:`SUPPORT_FLOOR` (a site that scans more narrowly than a broad training set moves
  PSI a lot without leaving the training data; this tells the two apart).

Nothing here touches a store; ``radpipe.common.monitoring`` records and reads the figures.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

#: Bins of the features a model's inputs are described by (a reference may carry its own).
HU_EDGES: list[float] = [float(v) for v in range(-1000, 1001, 100)]
PIXEL_SPACING_EDGES: list[float] = [round(0.3 + 0.1 * i, 1) for i in range(13)]
SLICE_THICKNESS_EDGES: list[float] = [0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0]
DEFAULT_EDGES: dict[str, list[float]] = {
    "pixel_spacing_mm": PIXEL_SPACING_EDGES,
    "slice_thickness_mm": SLICE_THICKNESS_EDGES,
    "hu": HU_EDGES,
}
#: The scalar features (one value per study); ``hu`` is a histogram per study.
SCALARS = ("pixel_spacing_mm", "slice_thickness_mm")
FEATURES = (*SCALARS, "hu")
PSI_FLOOR = 1e-4
#: A bin holding less than this share of the training data is outside it.
SUPPORT_FLOOR = 0.01
#: Voxels the HU histogram of one volume is taken over at most (a regular subsample).
HU_SAMPLE_VOXELS = 500_000


class BadReference(ValueError):
    """A reference distribution that cannot be used; the message names the fix."""


def bin_counts(values: Sequence[float] | np.ndarray, edges: Sequence[float]) -> np.ndarray:
    """Counts of ``values`` per bin, the out-of-range ones in the end bins."""
    bins = len(edges) - 1
    if bins < 1:
        raise ValueError("a histogram needs at least two edges")
    index = np.searchsorted(
        np.asarray(edges, dtype=float), np.asarray(values, dtype=float), "right"
    )
    return np.bincount(np.clip(index - 1, 0, bins - 1), minlength=bins)


def proportions(counts: Sequence[float] | np.ndarray) -> list[float]:
    total = float(np.sum(counts))
    if total <= 0:
        raise ValueError("no value to describe: the distribution is empty")
    return [float(c) / total for c in counts]


def psi(expected: Sequence[float], actual: Sequence[float], floor: float = PSI_FLOOR) -> float:
    """Population stability index of ``actual`` against ``expected`` (proportions, same bins)."""
    if len(expected) != len(actual):
        raise ValueError(f"PSI needs the same bins: {len(expected)} vs {len(actual)}")
    e = np.maximum(np.asarray(expected, dtype=float), floor)
    a = np.maximum(np.asarray(actual, dtype=float), floor)
    e, a = e / e.sum(), a / a.sum()
    return float(np.sum((a - e) * np.log(a / e)))


def ks(expected: Sequence[float], actual: Sequence[float]) -> float:
    """Kolmogorov-Smirnov statistic of two binned distributions (proportions, same bins)."""
    if len(expected) != len(actual):
        raise ValueError(f"KS needs the same bins: {len(expected)} vs {len(actual)}")
    e = np.cumsum(np.asarray(expected, dtype=float))
    a = np.cumsum(np.asarray(actual, dtype=float))
    return float(np.max(np.abs(e / e[-1] - a / a[-1])))


def outside_share(
    expected: Sequence[float], actual: Sequence[float], floor: float = SUPPORT_FLOOR
) -> float:
    """The share of ``actual`` in bins where ``expected`` holds less than ``floor``."""
    if len(expected) != len(actual):
        raise ValueError(f"the share outside needs the same bins: {len(expected)} vs {len(actual)}")
    return float(sum(a for e, a in zip(expected, actual, strict=True) if e < floor))


def ppv(accepted: int, edited: int, rejected: int) -> float | None:
    """Positive predictive value from reader feedback: findings the reader kept (as they were
    or corrected) over every finding decided; ``None`` before the first decision."""
    decided = accepted + edited + rejected
    return None if decided == 0 else (accepted + edited) / decided


def ratio(part: float, whole: float) -> float | None:
    return None if whole <= 0 else part / whole


def hu_histogram(array: np.ndarray, edges: Sequence[float] = HU_EDGES) -> list[float]:
    """The HU distribution of a volume over ``edges``, from a regular subsample of at most
    :data:`HU_SAMPLE_VOXELS` voxels (~0.1 s for 512x512x300 on one core, memory-bound)."""
    if array.size == 0:
        raise ValueError("an empty volume has no HU distribution")
    flat = np.ravel(array)  # a view of a contiguous volume
    sample = flat[:: max(1, math.ceil(flat.size / HU_SAMPLE_VOXELS))]
    bounds = np.asarray(edges, dtype=float)
    widths = np.diff(bounds)
    if np.allclose(widths, widths[0]):  # numpy's fast path for equal bins (the default ones)
        clipped = np.clip(sample, bounds[0], bounds[-1])
        counts, _ = np.histogram(clipped, bins=len(widths), range=(bounds[0], bounds[-1]))
        return proportions(counts)
    return proportions(bin_counts(sample, edges))


def input_stats(
    array: np.ndarray,
    spacing_zyx: Sequence[float],
    slice_thickness: float | None,
    hu_edges: Sequence[float] = HU_EDGES,
) -> dict[str, Any]:
    """What one analysed volume is described by: its in-plane pixel spacing (mean of rows and
    columns), its slice thickness (the DICOM attribute, else the slice spacing) and its HU
    histogram."""
    return {
        **geometry(spacing_zyx, slice_thickness),
        "hu": [round(p, 6) for p in hu_histogram(array, hu_edges)],
    }


def geometry(spacing_zyx: Sequence[float], slice_thickness: float | None) -> dict[str, float]:
    """A series' pixel spacing (mean of rows and columns) and slice thickness (the DICOM
    attribute, else the slice spacing), in mm."""
    thickness = slice_thickness if slice_thickness and slice_thickness > 0 else spacing_zyx[0]
    return {
        "pixel_spacing_mm": round((float(spacing_zyx[1]) + float(spacing_zyx[2])) / 2, 4),
        "slice_thickness_mm": round(float(thickness), 4),
    }


def window_distributions(
    records: Sequence[Mapping[str, Any]], edges: Mapping[str, Sequence[float]]
) -> dict[str, list[float]]:
    """The distribution of each feature over a window of per-study records: scalars binned,
    HU histograms averaged (each study weighs the same); a feature no record carries is left
    out (HU histograms over other bins, say)."""
    found: dict[str, list[float]] = {}
    for name in SCALARS:
        values = [float(r[name]) for r in records if r.get(name) is not None]
        if values:
            found[name] = proportions(bin_counts(values, edges[name]))
    hu = [r["hu"] for r in records if len(r.get("hu") or []) == len(edges["hu"]) - 1]
    if hu:
        found["hu"] = [float(v) for v in np.mean(np.asarray(hu, dtype=float), axis=0)]
    return found


def check_reference(reference: Mapping[str, Any]) -> dict[str, dict[str, list[float]]]:
    """The features of a reference document (``reference_stats.json``), checked.

    Raises:
        BadReference: a feature's edges are not increasing or its proportions do not match
            them (one fewer than the edges, non-negative, summing to 1).
    """
    features = reference.get("features")
    if not isinstance(features, Mapping) or not features:
        raise BadReference(
            'a reference needs "features": {"pixel_spacing_mm"|"slice_thickness_mm"|"hu": '
            '{"edges": [...], "proportions": [...]}} (docs/monitoring.md)'
        )
    checked: dict[str, dict[str, list[float]]] = {}
    for name, feature in features.items():
        if name not in FEATURES:
            raise BadReference(f"unknown feature {name!r}; use {', '.join(FEATURES)}")
        edges = [float(v) for v in feature.get("edges", [])]
        shares = [float(v) for v in feature.get("proportions", [])]
        if len(edges) < 2 or any(b <= a for a, b in itertools.pairwise(edges)):
            raise BadReference(f"{name}: edges must be at least two increasing numbers")
        if len(shares) != len(edges) - 1 or min(shares) < 0 or abs(sum(shares) - 1) > 1e-3:
            raise BadReference(
                f"{name}: proportions must be {len(edges) - 1} non-negative numbers (one per "
                "bin) summing to 1"
            )
        checked[name] = {"edges": edges, "proportions": shares}
    return checked


def compare(
    reference: Mapping[str, Mapping[str, list[float]]], observed: Mapping[str, list[float]]
) -> dict[str, dict[str, float]]:
    """PSI, KS and the share outside the training data of each feature both sides describe."""
    return {
        name: {
            "psi": round(psi(reference[name]["proportions"], observed[name]), 4),
            "ks": round(ks(reference[name]["proportions"], observed[name]), 4),
            "outside": round(outside_share(reference[name]["proportions"], observed[name]), 4),
        }
        for name in FEATURES
        if name in reference and name in observed
    }


def reference_from(
    volumes: Iterable[tuple[np.ndarray, Sequence[float], float | None]], source: str
) -> dict[str, Any]:
    """A reference document (``reference_stats.json``) from training volumes, each
    ``(HU array (z, y, x), spacing (z, y, x) mm, slice thickness or None)``, described exactly
    as the inference stage describes what it analyses; read once (a generator keeps one volume
    in memory at a time)."""
    records = [input_stats(array, spacing, thickness) for array, spacing, thickness in volumes]
    observed = window_distributions(records, DEFAULT_EDGES)
    return {
        "schema": "radpipe-reference-stats-v1",
        "source": source,
        "studies": len(records),
        "features": {
            name: {
                "edges": DEFAULT_EDGES[name],
                "proportions": [round(p, 6) for p in observed[name]],
            }
            for name in FEATURES
        },
    }
