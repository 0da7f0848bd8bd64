"""Detection figures of a nodule bundle on phantoms: FROC as LUNA16 reports it, and more.

A finding is a hit when its centre lies within the radius of a true nodule (at least
`MIN_HIT_MM`); a second finding on an already-found nodule is ignored (neither hit nor false
positive), as in the LUNA16 evaluation, and so is one on a nodule in the image but not in
the truth (`cut`: a phantom's nodule cut by a truncated field of view, LUNA16's "irrelevant
finding"); a scan holding such a nodule is not a clean scan. Findings are ranked by
`Finding.rank_score` (the segmentation network's probability, or its product with the
candidate classifier's score where the bundle declares that). Sensitivity at a
false-positive rate is the best sensitivity over score thresholds whose false positives per
scan do not exceed it; CPM is the mean over `FP_RATES`. Used by `bench/froc.py` and the
generalization test.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from .bundle import Bundle
from .findings import Finding, segment_findings
from .model import pre_process, predict
from .volume import Volume

__all__ = [
    "FP_RATES",
    "MIN_HIT_MM",
    "Case",
    "Scores",
    "cut_nodules",
    "evaluate",
    "run_case",
    "scores",
]


class Nodule(Protocol):
    """A true nodule (`radpipe.demo.Nodule` is one; services never import the demo data)."""

    @property
    def center_mm(self) -> tuple[float, float, float]: ...
    @property
    def diameter_mm(self) -> float: ...
    @property
    def kind(self) -> str: ...
    @property
    def site(self) -> str: ...


class Study(Protocol):
    """A synthetic study with its truth (`radpipe.demo.Phantom` is one)."""

    @property
    def volume(self) -> np.ndarray: ...
    @property
    def spacing(self) -> tuple[float, float, float]: ...
    @property
    def nodules(self) -> Sequence[Nodule]: ...


FP_RATES = (0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)
MIN_HIT_MM = 2.5


@dataclass
class Case:
    """One scan: its true nodules, the bundle's findings on it, and nodules to ignore."""

    nodules: Sequence[Nodule]
    findings: list[Finding]
    spacing: tuple[float, float, float]
    cut: Sequence[Nodule] = ()  # in the image, not in the truth: findings on them ignored
    hits: dict[int, int] = field(default_factory=dict)  # finding index -> nodule index

    def __post_init__(self) -> None:
        order = sorted(range(len(self.findings)), key=lambda k: -self.findings[k].rank_score)
        for k in order:
            centre = np.array(self.findings[k].center_voxel_zyx) * np.array(self.spacing)
            for j, n in enumerate(self.nodules):
                if _on(centre, n):
                    # The first (most probable) finding on a nodule hits it; later ones on the
                    # same nodule are ignored (-1).
                    self.hits[k] = -1 if j in self.hits.values() else j
                    break
            else:
                if any(_on(centre, n) for n in self.cut):
                    self.hits[k] = -1

    @property
    def clean(self) -> bool:
        """No nodule in the image: none in the truth and none cut by the field of view."""
        return not self.nodules and not self.cut

    def false_positives(self, min_mm: float = 0.0) -> list[Finding]:
        return [
            f for k, f in enumerate(self.findings) if k not in self.hits and f.diameter_mm >= min_mm
        ]


def _on(centre_mm: np.ndarray, n: Nodule) -> bool:
    return bool(
        np.linalg.norm(centre_mm - np.array(n.center_mm)) <= max(n.diameter_mm / 2, MIN_HIT_MM)
    )


@dataclass
class Scores:
    """The figures of one evaluation (see `scores`)."""

    scans: int
    clean_scans: int
    nodules: int
    froc: dict[float, float]
    cpm: float
    sensitivity_at_threshold: float
    fp_per_scan: float
    fp_per_clean_scan_6mm: float
    fp_per_clean_scan_8mm: float
    sensitivity_8mm: float
    sensitivity_8mm_at_0_1_fp: float
    diameter_mae_mm: float
    diameter_max_error_mm: float
    by_kind: dict[str, tuple[int, int]]

    def to_dict(self) -> dict[str, Any]:
        out = dict(self.__dict__)
        out["froc"] = {str(k): v for k, v in self.froc.items()}
        return out


def run_case(phantom: Study, bundle: Bundle) -> Case:
    """The service stages (`pre_process`, `predict`, `segment_findings`) on one phantom."""
    volume = Volume(phantom.volume.astype(np.float32), phantom.spacing, [])
    image = pre_process(volume, bundle)
    findings, _ = segment_findings(predict(image, bundle), volume, bundle, image)
    return Case(list(phantom.nodules), findings, phantom.spacing, cut_nodules(phantom))


def cut_nodules(phantom: Study) -> list[Nodule]:
    """The phantom's nodules in the image but not in its truth (none where it declares none)."""
    return list(getattr(phantom, "cut_nodules", ()))


def evaluate(phantoms: Iterable[Study], bundle: Bundle) -> list[Case]:
    return [run_case(p, bundle) for p in phantoms]


def _sensitivity_at(
    cases: list[Case], rates: Iterable[float], min_mm: float = 0.0
) -> dict[float, float]:
    """Best sensitivity (nodules >= min_mm) at each false-positive-per-scan budget."""
    events: list[tuple[float, bool, tuple[int, int] | None]] = []  # (score, hit, nodule)
    total = 0
    for c, case in enumerate(cases):
        wanted = {j for j, n in enumerate(case.nodules) if n.diameter_mm >= min_mm}
        total += len(wanted)
        for k, f in enumerate(case.findings):
            j = case.hits.get(k)
            if j is None:
                events.append((f.rank_score, False, None))
            elif j in wanted:
                events.append((f.rank_score, True, (c, j)))
    events.sort(key=lambda e: -e[0])
    curve = [(0.0, 0.0)]
    found: set[tuple[int, int]] = set()
    fps = 0
    for _, hit, key in events:
        if hit and key is not None:
            found.add(key)
        elif not hit:
            fps += 1
        curve.append((fps / max(len(cases), 1), len(found) / max(total, 1)))
    return {r: max(s for fp, s in curve if fp <= r) for r in rates}


def scores(cases: list[Case]) -> Scores:
    """FROC, CPM, false positives (all, and on clean scans at >= 6 / 8 mm), diameter error."""
    froc = _sensitivity_at(cases, FP_RATES)
    nodules = sum(len(c.nodules) for c in cases)
    hit = sum(len({j for j in c.hits.values() if j >= 0}) for c in cases)
    clean = [c for c in cases if c.clean]
    big = [(c, j) for c in cases for j, n in enumerate(c.nodules) if n.diameter_mm >= 8.0]
    big_hit = sum(1 for c, j in big if j in c.hits.values())
    errors = [
        abs(c.findings[k].diameter_mm - c.nodules[j].diameter_mm)
        for c in cases
        for k, j in c.hits.items()
        if j >= 0
    ]
    by_kind: dict[str, tuple[int, int]] = {}
    for c in cases:
        for j, n in enumerate(c.nodules):
            for key in (n.kind, n.site, "8mm+" if n.diameter_mm >= 8 else "<8mm"):
                got, of = by_kind.get(key, (0, 0))
                by_kind[key] = (got + (j in c.hits.values()), of + 1)
    return Scores(
        scans=len(cases),
        clean_scans=len(clean),
        nodules=nodules,
        froc=froc,
        cpm=float(np.mean(list(froc.values()))),
        sensitivity_at_threshold=hit / max(nodules, 1),
        fp_per_scan=sum(len(c.false_positives()) for c in cases) / max(len(cases), 1),
        fp_per_clean_scan_6mm=sum(len(c.false_positives(6.0)) for c in clean) / max(len(clean), 1),
        fp_per_clean_scan_8mm=sum(len(c.false_positives(8.0)) for c in clean) / max(len(clean), 1),
        sensitivity_8mm=big_hit / max(len(big), 1),
        sensitivity_8mm_at_0_1_fp=_sensitivity_at(cases, [0.1], min_mm=8.0)[0.1],
        diameter_mae_mm=float(np.mean(errors)) if errors else float("nan"),
        diameter_max_error_mm=float(np.max(errors)) if errors else float("nan"),
        by_kind=by_kind,
    )
