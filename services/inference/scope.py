"""A bundle's validated input: the acquisitions its figures hold for, checked per study.

A model measured on 1-3 mm slices says little about a 5 mm reconstruction: the held-out runs
of the demo bundle (docs/benchmarks.md) put most of its false positives on 3-5 mm slices. A
bundle may declare the range its validation covers in `configs/inference.json`:

    "validated_input": {"slice_thickness_mm": [0.5, 3.0], "pixel_spacing_mm": [0.4, 1.0]}

Each analysed series is checked against it (slice thickness: the DICOM attribute, else the
slice spacing; pixel spacing: the mean of rows and columns, as model monitoring describes a
volume). A study outside it is analysed and shown as usual, but its alert is opened silenced
(nobody is paged) unless the alert configuration says `page_outside_validated_input = true`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from radpipe.common.drift import geometry

__all__ = ["FEATURES", "check_input", "geometry", "parse_validated_input"]

#: The features a bundle may bound, with the words a reader sees.
FEATURES = {"slice_thickness_mm": "slice thickness", "pixel_spacing_mm": "pixel spacing"}

Ranges = dict[str, tuple[float, float]]


def parse_validated_input(value: Any, where: str) -> Ranges:
    """The `validated_input` of a bundle config; raises ValueError naming the fix."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ValueError(f"{where}: validated_input must be an object of feature: [low, high]")
    ranges: Ranges = {}
    for key, bounds in value.items():
        if key not in FEATURES:
            raise ValueError(
                f"{where}: validated_input has an unknown feature {key!r} "
                f"(known: {', '.join(FEATURES)})"
            )
        if (
            not isinstance(bounds, Sequence)
            or len(bounds) != 2
            or not all(isinstance(b, int | float) and not isinstance(b, bool) for b in bounds)
            or not 0 < bounds[0] <= bounds[1]
        ):
            raise ValueError(
                f"{where}: validated_input.{key} must be [low, high] in mm with "
                f"0 < low <= high, not {bounds!r}"
            )
        ranges[key] = (float(bounds[0]), float(bounds[1]))
    return ranges


def check_input(ranges: Ranges, measured: Mapping[str, float]) -> dict[str, Any] | None:
    """`{"within", "measured", "validated", "reasons"}` for the analysis; None when the
    bundle declares no range."""
    if not ranges:
        return None
    reasons = []
    for key, (low, high) in ranges.items():
        value = measured.get(key)
        if value is not None and not low <= value <= high:
            reasons.append(
                f"{FEATURES[key]} {value:g} mm is outside the {low:g}-{high:g} mm "
                "this model was validated on"
            )
    return {
        "within": not reasons,
        "measured": {key: measured.get(key) for key in ranges},
        "validated": {key: [low, high] for key, (low, high) in ranges.items()},
        "reasons": reasons,
    }
