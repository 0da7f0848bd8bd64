"""Stage 5, risk: the study-level score and category from the findings."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from .findings import Finding

__all__ = ["Risk", "assess_risk"]


@dataclass
class Risk:
    """Study-level risk: `score` in [0, 1], >= 0.5 exactly when the largest nodule >= high_mm."""

    score: float
    category: str
    rule: str
    thresholds: dict[str, float]

    def to_dict(self) -> dict[str, Any]:
        return {
            "score": self.score,
            "category": self.category,
            "rule": self.rule,
            "thresholds": dict(self.thresholds),
        }


def assess_risk(findings: list[Finding], *, high_mm: float = 8.0, moderate_mm: float = 6.0) -> Risk:
    """Lung-RADS-like size rule on the largest nodule (solid nodules, baseline screen).

    score = logistic((d - high_mm) / 1.5 mm): monotonic in d, exactly 0.5 at d = high_mm.
    """
    if not 0 < moderate_mm < high_mm:
        raise ValueError(f"need 0 < moderate_mm < high_mm, got {moderate_mm} and {high_mm}")
    thresholds = {"high_mm": high_mm, "moderate_mm": moderate_mm}
    if not findings:
        return Risk(0.0, "none", "no nodule detected (Lung-RADS 1-like)", thresholds)
    d = max(f.diameter_mm for f in findings)
    score = 1.0 / (1.0 + math.exp(-(d - high_mm) / 1.5))
    if d < high_mm:
        score = min(score, math.nextafter(0.5, 0.0))  # rounding must not reach the alert line
        if d >= moderate_mm:
            category = "moderate"
            rule = (
                f"largest nodule {d:.1f} mm in [{moderate_mm:g}, {high_mm:g}) mm (Lung-RADS 3-like)"
            )
        else:
            category = "low"
            rule = f"largest nodule {d:.1f} mm < {moderate_mm:g} mm (Lung-RADS 2-like)"
    else:
        category = "high"
        rule = f"largest nodule {d:.1f} mm >= {high_mm:g} mm (Lung-RADS 4A-like)"
    return Risk(score, category, rule, thresholds)
