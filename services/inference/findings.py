"""Stage 4, findings: the probability map cut into nodule candidates (post-processing).

Components are found on the bundle grid (see `model.bundle_grid`) and measured there; centres
are mapped back to input voxel indices and patient coordinates.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .bundle import Bundle
from .candidates import score
from .model import bundle_grid, pre_process
from .volume import Vec3, Volume

__all__ = [
    "AIR_HU",
    "CONTACT_HU",
    "Finding",
    "ShapeFilter",
    "label_components",
    "label_map_on_input",
    "post_process",
    "segment_findings",
]


@dataclass
class Finding:
    """One nodule candidate.

    `diameter_mm` is the equivalent-sphere diameter (6 V / pi)^(1/3) of the segmented volume,
    which equals the diameter for a sphere and averages the axes of an ellipsoid.
    `center_voxel_zyx` indexes the input volume; `center_patient_xyz` is in patient mm (LPS).
    """

    label: int
    diameter_mm: float
    volume_mm3: float
    center_voxel_zyx: Vec3
    center_patient_xyz: Vec3
    probability: float
    center_sop_instance_uid: str = ""
    mean_hu: float = 0.0
    # Shape and context (not in `to_dict`): share of the one-voxel shell around the component
    # denser than `CONTACT_HU` (a vessel or wall it is part of), the same share over the band
    # 1-3 voxels out (`contact_far`), and sqrt of the largest over the smallest second moment
    # of its voxels in mm (1 for a sphere, ~3 for a tube piece).
    contact: float = 0.0
    contact_far: float = 0.0
    elongation: float = 1.0
    # Share of the one-voxel shell that is aerated lung (below `AIR_HU`): a nodule, even one on
    # the pleura, is partly ringed by lung; a blob in fat, muscle or mediastinum is not.
    air: float = 1.0
    # The candidate classifier's score (None: the bundle has none). It filters, may exempt
    # from the contact and aerated-lung limits (`ShapeFilter.contact_exempt_score`,
    # `air_exempt_score`), and ranks where the bundle
    # declares `rank_with_candidate_score` (`rank_score`); `probability` stays the
    # segmentation network's mean probability either way.
    candidate_score: float | None = None
    # Where the bundle ranks by both stages: `probability` x `candidate_score` (None: it
    # ranks by `probability`).
    score: float | None = None

    @property
    def rank_score(self) -> float:
        """What orders findings from most to least likely a nodule (FROC operating points)."""
        return self.probability if self.score is None else self.score

    def to_dict(self) -> dict[str, Any]:
        out = {
            "label": self.label,
            "diameter_mm": round(self.diameter_mm, 2),
            "volume_mm3": round(self.volume_mm3, 1),
            "center_voxel_zyx": [round(v, 2) for v in self.center_voxel_zyx],
            "center_patient_xyz": [round(v, 2) for v in self.center_patient_xyz],
            "probability": round(self.probability, 4),
            "center_sop_instance_uid": self.center_sop_instance_uid,
            "mean_hu": round(self.mean_hu, 1),
        }
        if self.candidate_score is not None:
            out["candidate_score"] = round(self.candidate_score, 4)
        if self.score is not None:
            out["score"] = round(self.score, 4)
        return out


#: HU above which a shell voxel counts as contact: soft tissue, vessel, wall, bone (lung is
#: ~-850 HU, ground glass -750 to -450 HU).
CONTACT_HU = -400.0
#: HU below which a shell voxel counts as aerated lung (parenchyma is ~-850 HU; ground glass
#: from -750 HU up is not counted, fat at ~-100 HU never is).
AIR_HU = -600.0


@dataclass(frozen=True)
class ShapeFilter:
    """Context and shape limits a bundle may declare in `configs/inference.json`.

    `max_contact_fraction`: drop components whose shell is denser than `CONTACT_HU` over more
    than this share (a bright piece of a vessel keeps going into the tissue around it; a
    nodule in lung is ringed by parenchyma), unless `wall_ratio` is set and the band 2-3
    voxels further out is still dense over at least `wall_ratio` times that share: a nodule on
    the pleura leans on a wall that goes on, a vessel leaving a component thins out relative
    to the growing shell. `max_elongation`: drop components longer than this many times their
    shortest axis (tube pieces). `min_air_fraction`: drop components whose shell is aerated
    lung (below `AIR_HU`) over less than this share: they lie in fat, muscle, mediastinum or
    bone, not in the lung. `max_diameter_mm`: drop components larger than this (a lesion over
    30 mm is a mass, not a nodule; larger components are organs or merged structures).
    `min_diameter_slice_thickness_ratio`: drop components whose equivalent diameter is below
    this multiple of the study's slice thickness (`Volume.thickness_mm`): on thick slices
    partial volume makes a vessel cut obliquely or an airway wall as round and bright as a
    nodule of about the slice thickness, and such a nodule cannot be measured there either.
    `air_exempt_contact`: `min_air_fraction` does not apply to a component whose shell is
    denser than `CONTACT_HU` over at most this share: it is ringed by lung, only not by
    aerated lung (the solid core of a part-solid nodule lies in its own ground glass).
    `contact_exempt_score`: `max_contact_fraction` does not apply to a candidate the bundle's
    candidate classifier scores at least this (a nodule touching a vessel or the wall over
    much of its surface that the classifier is sure of; no classifier: no exemption).
    `air_exempt_score`: `min_air_fraction` does not apply to a candidate the classifier scores
    at least this (a nodule on the pleura whose shell is wall and its own ground glass, little
    of it aerated lung; no classifier: no exemption).
    None: no limit (or no exemption). `rank_with_candidate_score` is not a limit: findings are
    ranked by the product of the segmentation network's mean probability and the candidate
    classifier's score (`Finding.score`) instead of the former alone (no classifier: no
    change); the first stage's probability is near 1 for a true nodule and for a round piece
    of a vessel alike, the classifier tells them apart. `min_score`: drop findings ranked
    below this (`Finding.rank_score`: the product with `rank_with_candidate_score`, else the
    mean probability): the operating point of what is reported, and so of what pages.
    """

    max_contact_fraction: float | None = None
    max_elongation: float | None = None
    wall_ratio: float | None = None
    min_air_fraction: float | None = None
    max_diameter_mm: float | None = None
    min_diameter_slice_thickness_ratio: float | None = None
    air_exempt_contact: float | None = None
    contact_exempt_score: float | None = None
    air_exempt_score: float | None = None
    rank_with_candidate_score: bool = False
    min_score: float | None = None

    def keeps_contact(self, contact: float, far: float, score: float | None = None) -> bool:
        """The contact limit, with its wall exception, on a component's shell shares, and
        with its exemption for a candidate classifier `score` (None: not scored)."""
        if self.max_contact_fraction is None:
            return True
        exempt = self.contact_exempt_score
        if exempt is not None and score is not None and score >= exempt:
            return True
        wall = math.inf if self.wall_ratio is None else self.wall_ratio
        return contact <= self.max_contact_fraction or far >= wall * contact

    def keeps_air(self, air: float, contact: float, score: float | None = None) -> bool:
        """The aerated-lung limit, with its exemptions for components hardly touching tissue
        and for a candidate classifier `score` (None: not scored)."""
        if self.min_air_fraction is None or air >= self.min_air_fraction:
            return True
        exempt = self.air_exempt_score
        if exempt is not None and score is not None and score >= exempt:
            return True
        return self.air_exempt_contact is not None and contact <= self.air_exempt_contact

    def smallest_diameter_mm(self, thickness_mm: float) -> float:
        """The smallest reported diameter on slices this thick (0: no such limit)."""
        ratio = self.min_diameter_slice_thickness_ratio
        return 0.0 if ratio is None else ratio * thickness_mm


@lru_cache(maxsize=32)
def _filter_from(config: Path, mtime_ns: int) -> ShapeFilter:
    del mtime_ns  # part of the cache key: an edited config is read again
    try:
        data = json.loads(config.read_text())
    except (OSError, ValueError):
        return ShapeFilter()
    keys = (
        "max_contact_fraction",
        "max_elongation",
        "wall_ratio",
        "min_air_fraction",
        "max_diameter_mm",
        "min_diameter_slice_thickness_ratio",
        "air_exempt_contact",
        "contact_exempt_score",
        "air_exempt_score",
        "min_score",
    )
    limits: dict[str, float] = {}
    for k in keys:
        v = data.get(k)
        if v is None:
            continue
        try:
            if isinstance(v, bool):
                raise TypeError(k)
            limits[k] = float(v)
        except (TypeError, ValueError):
            raise ValueError(f"{config}: {k} must be a number, got {v!r}") from None
    rank = data.get("rank_with_candidate_score")
    rank = False if rank is None else rank
    if not isinstance(rank, bool):
        raise ValueError(f"{config}: rank_with_candidate_score must be true or false, got {rank!r}")
    return ShapeFilter(**limits, rank_with_candidate_score=rank)


def post_processing(root: Path) -> ShapeFilter:
    """The `ShapeFilter` a Radpipe-format bundle at `root` declares in
    `configs/inference.json` (none readable: no limits).

    Raises
    ------
    ValueError: a key has a value of the wrong type (the message names it).
    """
    config = Path(root) / "configs" / "inference.json"
    try:
        mtime = config.stat().st_mtime_ns
    except OSError:
        return ShapeFilter()
    return _filter_from(config, mtime)


def shape_filter(bundle: Bundle) -> ShapeFilter:
    """The bundle's `ShapeFilter` (its keys in `configs/inference.json`; none declared: none)."""
    declared = getattr(bundle, "shape_filter", None)
    if isinstance(declared, ShapeFilter):
        return declared
    return post_processing(Path(bundle.path))


def _max3(a: np.ndarray) -> np.ndarray:
    """3x3x3 maximum filter (the 26-neighbourhood) as three separable 1-D passes."""
    for axis in range(3):
        src, a = a, a.copy()
        lo = tuple(slice(None, -1) if i == axis else slice(None) for i in range(3))
        hi = tuple(slice(1, None) if i == axis else slice(None) for i in range(3))
        np.maximum(a[hi], src[lo], out=a[hi])
        np.maximum(a[lo], src[hi], out=a[lo])
    return a


def label_components(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """26-connected components of a 3-D mask: labels 1..n (int32, largest-index order) and n.

    Every voxel starts with its own id and repeatedly takes the neighbourhood maximum, then
    jumps to the label that its label's voxel holds (pointer jumping), so long components
    converge in a few passes. ~0.1 s per pass on 10 M voxels; scipy is not a dependency here.
    """
    labels = np.zeros(mask.shape, dtype=np.int32)
    if not mask.any():
        return labels, 0
    box = tuple(slice(int(i.min()), int(i.max()) + 1) for i in np.nonzero(mask))
    sub = np.ascontiguousarray(mask[box])
    fg = np.flatnonzero(sub)
    ids = np.zeros(sub.shape, dtype=np.int32)
    flat = ids.reshape(-1)
    flat[fg] = fg + 1
    current = flat[fg]
    while True:
        grown = _max3(ids).reshape(-1)
        values = grown[fg]
        values = np.maximum(values, grown[values - 1])  # labels name voxels of the same component
        if np.array_equal(values, current):
            break
        flat[fg] = current = values
    _, inverse = np.unique(current, return_inverse=True)
    flat[fg] = inverse.reshape(-1) + 1
    labels[box] = ids
    return labels, int(inverse.max()) + 1


def _to_input_index(j: np.ndarray, n_in: int, n_out: int) -> np.ndarray:
    return (j + 0.5) * (n_in / n_out) - 0.5


def segment_findings(
    prob: np.ndarray,
    volume: Volume,
    bundle: Bundle,
    image: torch.Tensor | np.ndarray | None = None,
) -> tuple[list[Finding], np.ndarray]:
    """`post_process` plus the bundle-grid label map (finding i has label i, 0 elsewhere).

    `image` is the pre-processed input (`pre_process`: (1, z, y, x) or (z, y, x)) that the
    bundle's candidate classifier looks at; computed again when not given.
    """
    _, grid_spacing = bundle_grid(volume.array.shape, volume.spacing, bundle.spacing)
    voxel_mm3 = float(np.prod(grid_spacing))
    labels, n = label_components(prob >= bundle.threshold)
    if n == 0:
        return [], labels
    fg = labels > 0
    lab = labels[fg]
    counts = np.bincount(lab, minlength=n + 1)
    prob_sum = np.bincount(lab, weights=prob[fg], minlength=n + 1)
    coords = np.nonzero(fg)
    centroids = [
        np.bincount(lab, weights=c, minlength=n + 1) / np.maximum(counts, 1) for c in coords
    ]

    # HU of each bundle voxel from its nearest input voxel: the filter sees real densities,
    # not the window that saturates at its top.
    source = [
        np.clip(((c + 0.5) * (n_in / n_out)).astype(np.intp), 0, n_in - 1)
        for c, n_in, n_out in zip(coords, volume.array.shape, prob.shape, strict=True)
    ]
    hu_sum = np.bincount(lab, weights=volume.array[tuple(source)], minlength=n + 1)
    mean_hu = hu_sum / np.maximum(counts, 1)
    max_hu = math.inf if bundle.max_mean_hu is None else bundle.max_mean_hu
    kept = [
        i
        for i in range(1, n + 1)
        if counts[i] * voxel_mm3 >= bundle.min_volume_mm3 and mean_hu[i] <= max_hu
    ]
    contact, far, elongation, air = _shape(labels, coords, lab, counts, volume, grid_spacing)
    limits = shape_filter(bundle)
    # Components the aerated-lung or contact limit drops go on to the classifier where the
    # bundle exempts those it is sure of (`air_exempt_score`, `contact_exempt_score`).
    airless = {i for i in kept if not limits.keeps_air(float(air[i]), float(contact[i]))}
    if bundle.candidates is None or limits.air_exempt_score is None:
        kept = [i for i in kept if i not in airless]
    if limits.max_diameter_mm is not None:
        largest = math.pi / 6.0 * limits.max_diameter_mm**3
        kept = [i for i in kept if counts[i] * voxel_mm3 <= largest]
    if limits.min_diameter_slice_thickness_ratio is not None:
        smallest = math.pi / 6.0 * limits.smallest_diameter_mm(volume.thickness_mm) ** 3
        kept = [i for i in kept if counts[i] * voxel_mm3 >= smallest]
    touching = {i for i in kept if not limits.keeps_contact(float(contact[i]), float(far[i]))}
    if bundle.candidates is None or limits.contact_exempt_score is None:
        kept = [i for i in kept if i not in touching]
    if limits.max_elongation is not None:
        kept = [i for i in kept if elongation[i] <= limits.max_elongation]
    second: dict[int, float] = {}
    if bundle.candidates is not None and kept:
        grid = pre_process(volume, bundle) if image is None else image
        cube_source = np.asarray(grid, dtype=np.float32).reshape(prob.shape)
        centres = [np.array([centroids[a][i] for a in range(3)]) for i in kept]
        values = score(bundle.candidates, cube_source, centres, bundle.device)
        second = {i: float(v) for i, v in zip(kept, values, strict=True)}
        kept = [
            i
            for i in kept
            if second[i] >= bundle.candidates.threshold
            and (
                i not in touching
                or limits.keeps_contact(float(contact[i]), float(far[i]), second[i])
            )
            and (i not in airless or limits.keeps_air(float(air[i]), float(contact[i]), second[i]))
        ]
    mean_probability = prob_sum / np.maximum(counts, 1)
    # Where the bundle ranks by both stages, each scored candidate's product (`Finding.score`).
    product = (
        {i: float(mean_probability[i]) * v for i, v in second.items()}
        if limits.rank_with_candidate_score
        else {}
    )
    if limits.min_score is not None:
        floor = limits.min_score
        kept = [i for i in kept if product.get(i, float(mean_probability[i])) >= floor]
    kept.sort(key=lambda i: -counts[i])
    remap = np.zeros(n + 1, dtype=np.int32)
    findings = []
    for new_label, i in enumerate(kept, start=1):
        remap[i] = new_label
        vol_mm3 = float(counts[i] * voxel_mm3)
        center = tuple(
            float(_to_input_index(centroids[a][i], volume.array.shape[a], prob.shape[a]))
            for a in range(3)
        )
        center_zyx: Vec3 = (center[0], center[1], center[2])
        slice_index = int(np.clip(round(center_zyx[0]), 0, len(volume.sop_instance_uids) - 1))
        findings.append(
            Finding(
                label=new_label,
                diameter_mm=(6.0 * vol_mm3 / math.pi) ** (1.0 / 3.0),
                volume_mm3=vol_mm3,
                center_voxel_zyx=center_zyx,
                center_patient_xyz=volume.index_to_patient(center_zyx),
                probability=float(mean_probability[i]),
                center_sop_instance_uid=(
                    volume.sop_instance_uids[slice_index] if volume.sop_instance_uids else ""
                ),
                mean_hu=float(mean_hu[i]),
                contact=float(contact[i]),
                contact_far=float(far[i]),
                elongation=float(elongation[i]),
                air=float(air[i]),
                candidate_score=second.get(i),
                score=product.get(i),
            )
        )
    return findings, remap[labels]


def _shape(
    labels: np.ndarray,
    coords: tuple[np.ndarray, ...],
    lab: np.ndarray,
    counts: np.ndarray,
    volume: Volume,
    grid_spacing: Vec3,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per label: contact share of its shell, of the band 1-3 voxels out, elongation, and the
    aerated-lung share of its shell."""
    n = len(counts) - 1
    box = tuple(
        slice(max(int(c.min()) - 3, 0), min(int(c.max()) + 4, size))
        for c, size in zip(coords, labels.shape, strict=True)
    )
    sub = labels[box]
    shares = []
    grown = sub
    for passes in (1, 2):
        for _ in range(passes):
            grown = _max3(grown)
        shell = (sub == 0) & (grown > 0)  # 1 voxel out, then 1-3 voxels out
        owner = grown[shell]
        where = [w + b.start for w, b in zip(np.nonzero(shell), box, strict=True)]
        source = [
            np.clip(((c + 0.5) * (n_in / n_out)).astype(np.intp), 0, n_in - 1)
            for c, n_in, n_out in zip(where, volume.array.shape, labels.shape, strict=True)
        ]
        hu = volume.array[tuple(source)]
        shell_n = np.maximum(np.bincount(owner, minlength=n + 1), 1)
        shares.append(np.bincount(owner, weights=hu > CONTACT_HU, minlength=n + 1) / shell_n)
        if passes == 1:
            air = np.bincount(owner, weights=hu < AIR_HU, minlength=n + 1) / shell_n

    mm = [c.astype(np.float64) * s for c, s in zip(coords, grid_spacing, strict=True)]
    c_n = np.maximum(counts, 1)
    mean = [np.bincount(lab, weights=m, minlength=n + 1) / c_n for m in mm]
    cov = np.zeros((n + 1, 3, 3))
    for a in range(3):
        for b in range(a, 3):
            e = np.bincount(lab, weights=mm[a] * mm[b], minlength=n + 1) / c_n
            cov[:, a, b] = cov[:, b, a] = e - mean[a] * mean[b]
    # A voxel of size s adds s^2 / 12 along its axis: single-voxel components stay finite.
    cov += np.diag([s * s / 12 for s in grid_spacing])[None]
    eig = np.linalg.eigvalsh(cov)
    elongation = np.sqrt(eig[:, 2] / np.maximum(eig[:, 0], 1e-9))
    return shares[0], shares[1], elongation, air


def post_process(
    prob: np.ndarray,
    volume: Volume,
    bundle: Bundle,
    image: torch.Tensor | np.ndarray | None = None,
) -> list[Finding]:
    """Threshold, 26-connected components on the bundle grid, one Finding per component.

    Components below `bundle.min_volume_mm3`, or denser on average than `bundle.max_mean_hu`
    (bone; calcified nodules, which Lung-RADS calls benign), or beyond the bundle's
    `ShapeFilter` (contact with dense tissue, elongation), or scored below its candidate
    classifier's threshold (`candidates.py`), are dropped; findings are sorted largest first.
    Expected time: <0.2 s for a 10 M-voxel probability map with a few candidates.
    """
    return segment_findings(prob, volume, bundle, image)[0]


def label_map_on_input(labels: np.ndarray, input_shape: tuple[int, ...]) -> np.ndarray:
    """Nearest-neighbour copy of a bundle-grid label map onto the input grid (uint8, labels
    above 255 saturate). ~0.2 s for a 512x512x100 input."""
    if not labels.any():
        return np.zeros(input_shape, dtype=np.uint8)
    index = [
        np.clip(np.floor((np.arange(n_in) + 0.5) * (n_out / n_in)).astype(np.intp), 0, n_out - 1)
        for n_in, n_out in zip(input_shape, labels.shape, strict=True)
    ]
    small = np.minimum(labels, 255).astype(np.uint8)
    return small[np.ix_(*index)]
