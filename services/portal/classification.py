"""A classification bundle's result as the portal shows it.

A classification bundle (``radpipe.inference.zoo``, kind ``classification``) gives a score per
class and no finding; the inference stage stores them in the study's ``analysis``
(``classification``: name, probability, selected, per class; ``risk`` and ``risk_threshold``:
the score the alert decision used and the threshold it was held to; ``model``: name and
version) and writes them as a TID 1500 SR. The study page and the worklist read them from there,
never from the inference service.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

__all__ = ["ClassScore", "Classification", "classification_of"]


class ClassScore(BaseModel):
    name: str
    probability: float
    selected: bool = False


class Classification(BaseModel):
    """The class the bundle selected (``label``) and its probability (``score``), every class's
    score, the alert threshold the study's risk score (``risk_score``) is held to, and the model
    that classified. ``above_threshold``: whether that risk score reached the threshold (what
    pages the on-call radiologist); ``None`` without a stored threshold."""

    label: str
    score: float
    classes: list[ClassScore]
    threshold: float | None = None
    risk_score: float | None = None
    above_threshold: bool | None = None
    model: str = ""
    version: str = ""


def _number(value: Any) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return None


def classification_of(analysis: dict[str, Any] | None) -> Classification | None:
    """The classification result stored in ``analysis``; ``None`` for a segmentation or
    detection result, or a study not analysed yet."""
    stored = (analysis or {}).get("classification")
    if not isinstance(stored, list) or not stored:
        return None
    classes = [
        ClassScore(
            name=str(item.get("name") or f"label {item.get('label', n)}"),
            probability=_number(item.get("probability")) or 0.0,
            selected=bool(item.get("selected")),
        )
        for n, item in enumerate(stored)
        if isinstance(item, dict)
    ]
    if not classes:
        return None
    chosen = next((c for c in classes if c.selected), max(classes, key=lambda c: c.probability))
    assert analysis is not None
    threshold = _number(analysis.get("risk_threshold"))
    risk_score = _number((analysis.get("risk") or {}).get("score"))
    model = analysis.get("model") or {}
    return Classification(
        label=chosen.name,
        score=chosen.probability,
        classes=classes,
        threshold=threshold,
        risk_score=risk_score,
        above_threshold=(
            risk_score >= threshold if threshold is not None and risk_score is not None else None
        ),
        model=str(model.get("name") or ""),
        version=str(model.get("version") or ""),
    )
