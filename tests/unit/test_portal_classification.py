"""The classification result the portal reads from a study's stored analysis
(services/portal/classification.py)."""

from __future__ import annotations

from radpipe.portal.classification import classification_of

STORED = {
    "kind": "classification",
    "findings": [],
    "classification": [
        {"label": 0, "name": "no nodule", "probability": 0.2, "selected": False},
        {"label": 1, "name": "nodule", "probability": 0.8, "selected": True},
    ],
    "risk": {"score": 0.8, "category": "high", "rule": "highest score 0.800 (tiny_cls)"},
    "risk_threshold": 0.5,
    "model": {"name": "tiny_cls", "version": "0.1.0", "kind": "classification"},
}


def test_the_selected_class_its_score_the_threshold_and_the_model() -> None:
    shown = classification_of(STORED)
    assert shown is not None
    assert (shown.label, shown.score, shown.threshold) == ("nodule", 0.8, 0.5)
    assert (shown.risk_score, shown.above_threshold) == (0.8, True)
    assert (shown.model, shown.version) == ("tiny_cls", "0.1.0")
    assert [(c.name, c.probability, c.selected) for c in shown.classes] == [
        ("no nodule", 0.2, False),
        ("nodule", 0.8, True),
    ]
    below = classification_of({**STORED, "risk": {"score": 0.3}})
    assert below is not None and below.above_threshold is False


def test_no_classification_for_findings_or_a_study_not_analysed() -> None:
    assert classification_of(None) is None
    assert classification_of({}) is None
    assert classification_of({"kind": "segmentation", "findings": [{"label": 1}]}) is None
    assert classification_of({**STORED, "classification": []}) is None


def test_an_older_analysis_without_threshold_or_selection_still_shows() -> None:
    older = {
        "classification": [{"label": 0, "probability": 0.3}, {"name": "b", "probability": 0.7}]
    }
    shown = classification_of(older)
    assert shown is not None and (shown.label, shown.score) == ("b", 0.7)  # the highest score
    assert shown.classes[0].name == "label 0"
    assert shown.threshold is None and shown.above_threshold is None and shown.model == ""
