"""A second chest CT phantom family with wide variation, for honest generalization tests.

`radpipe.demo.make_phantom` draws one anatomy and one scanner: a model trained and validated on
it is measured on its own generator. This module is a different generator (superellipse body
and lungs with domes, slanted ribs, optional heart, aorta, airways, contrast, kernels, FOV
truncation, off-centre patients; solid, part-solid and ground-glass nodules, free, juxtapleural
and juxtavascular) whose settings are split into families: `TRAIN` is what a model may learn
from, `HELD_OUT` draws settings that `TRAIN` never produces (which axes: `HELD_OUT_AXES`).

Everything is numpy and vectorised: a 64x160x160 study takes ~0.1 s, 512x512x300 ~10 s.
Arrays are indexed (z, y, x) in mm = index * spacing, as in `radpipe.demo`; the result is a
`radpipe.demo.Phantom`, so `phantom_to_datasets` writes it as DICOM.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from radpipe.demo import HU_MAX, HU_MIN, Nodule, Phantom

__all__ = [
    "FAMILIES",
    "HELD_OUT",
    "HELD_OUT_AXES",
    "NODULE_KINDS",
    "NODULE_SITES",
    "TRAIN",
    "Family",
    "make_study",
]

Range = tuple[float, float]
NODULE_KINDS = ("solid", "part-solid", "ground-glass")
NODULE_SITES = ("free", "juxtapleural", "juxtavascular")


@dataclass(frozen=True)
class Family:
    """Ranges a study's settings are drawn from (uniformly unless said otherwise).

    Probabilities (`p_*`) are per study. `thickness_mm` is drawn from one of `thickness_bands`.
    """

    name: str
    matrix: tuple[int, ...] = (256, 320, 384, 512)
    pixel_mm: Range = (0.5, 1.0)
    thickness_bands: tuple[Range, ...] = ((0.6, 5.0),)
    scan_length_mm: Range = (120.0, 330.0)
    max_slices: int = 300
    body_width_mm: Range = (260.0, 420.0)
    body_ap_ratio: Range = (0.55, 0.8)
    body_exponent: Range = (2.0, 4.0)  # 2: ellipse; higher: boxier
    lung_exponent: Range = (2.0, 3.5)
    off_centre_mm: float = 50.0
    p_truncated: float = 0.3  # body wider than the field of view
    p_vessels: float = 0.9
    p_airways: float = 0.7
    p_ribs: float = 0.85
    p_heart: float = 0.85
    p_contrast: float = 0.5
    noise_hu: Range = (5.0, 40.0)
    kernels: tuple[str, ...] = ("smooth", "sharp")
    nodule_kinds: tuple[str, ...] = NODULE_KINDS
    nodule_sites: tuple[str, ...] = NODULE_SITES
    nodule_mm: Range = (4.0, 30.0)
    p_clean: float = 0.3  # studies without any nodule


#: What a model may be trained on: ellipse-like centred bodies, smooth kernels, 1-3 mm slices,
#: noise up to 25 HU. Airways and intravenous contrast are in it (since lung_nodule_demo
#: 0.5.0): every chest CT has airways and most protocol sets use contrast, so holding them out
#: measured a model that had never seen a bronchus, not one facing another scanner or patient.
TRAIN = Family(
    name="train",
    pixel_mm=(0.6, 1.0),
    thickness_bands=((1.0, 3.0),),
    body_exponent=(2.0, 2.6),
    lung_exponent=(2.0, 2.6),
    off_centre_mm=15.0,
    p_truncated=0.0,
    p_airways=0.7,
    p_contrast=0.5,
    noise_hu=(5.0, 25.0),
    kernels=("smooth",),
)

#: Held out of training entirely: every study is drawn from settings `TRAIN` never produces.
HELD_OUT = Family(
    name="held_out",
    pixel_mm=(0.5, 1.0),
    thickness_bands=((0.6, 1.0), (3.0, 5.0)),
    body_exponent=(2.8, 4.0),
    lung_exponent=(2.8, 3.5),
    off_centre_mm=50.0,
    p_truncated=0.4,
    p_airways=1.0,
    p_contrast=0.6,
    noise_hu=(25.0, 40.0),
    kernels=("sharp",),
)

#: The axes on which `HELD_OUT` leaves `TRAIN`'s ranges (nodule kinds and sites, airways and
#: contrast are shared: `HELD_OUT` draws airways always, contrast in 60 %).
HELD_OUT_AXES = (
    "slice thickness 0.6-1.0 or 3.0-5.0 mm (train 1-3 mm)",
    "boxy bodies and lungs, superellipse exponent 2.8-4 (train 2-2.6)",
    "patients off-centre up to 50 mm (train 15 mm), 40% truncated fields of view (train none)",
    "sharp kernel (train smooth), noise 25-40 HU (train 5-25 HU)",
)

FAMILIES = {f.name: f for f in (TRAIN, HELD_OUT)}


def _axes(shape: tuple[int, int, int], spacing: tuple[float, float, float]) -> list[np.ndarray]:
    return [
        (np.arange(n, dtype=np.float32) * s).reshape([-1 if i == a else 1 for i in range(3)])
        for a, (n, s) in enumerate(zip(shape, spacing, strict=True))
    ]


def _box(
    lo_mm: np.ndarray, hi_mm: np.ndarray, sp: np.ndarray, shape: tuple[int, ...]
) -> tuple[slice, slice, slice] | None:
    lo = np.maximum(np.floor(lo_mm / sp).astype(int), 0)
    hi = np.minimum(np.ceil(hi_mm / sp).astype(int) + 1, shape)
    if np.any(hi <= lo):
        return None
    return (slice(lo[0], hi[0]), slice(lo[1], hi[1]), slice(lo[2], hi[2]))


def _box_axes(box: tuple[slice, slice, slice], sp: np.ndarray) -> list[np.ndarray]:
    return [
        (np.arange(b.start, b.stop, dtype=np.float32) * sp[a]).reshape(
            [-1 if i == a else 1 for i in range(3)]
        )
        for a, b in enumerate(box)
    ]


def _soft(dist: np.ndarray, radius: float | np.ndarray, h: float) -> np.ndarray:
    return np.clip(0.5 - (dist - radius) / h, 0.0, 1.0)


def _superellipse(dy: np.ndarray, dx: np.ndarray, ay: float, ax: float, p: float) -> np.ndarray:
    return np.abs(dy / ay) ** p + np.abs(dx / ax) ** p


def _segment(
    weight: np.ndarray, a: np.ndarray, b: np.ndarray, r0: float, r1: float, sp: np.ndarray
) -> None:
    """Max-stamp a tapered tube from a (radius r0) to b (r1), partial-volume edges."""
    reach = max(r0, r1) + 1.0
    box = _box(np.minimum(a, b) - reach, np.maximum(a, b) + reach, sp, weight.shape)
    if box is None:
        return
    zz, yy, xx = _box_axes(box, sp)
    ab = b - a
    t = np.clip(((zz - a[0]) * ab[0] + (yy - a[1]) * ab[1] + (xx - a[2]) * ab[2]) / (ab @ ab), 0, 1)
    dist = np.sqrt(
        (zz - a[0] - t * ab[0]) ** 2 + (yy - a[1] - t * ab[1]) ** 2 + (xx - a[2] - t * ab[2]) ** 2
    )
    w = _soft(dist, r0 + (r1 - r0) * t, float(sp.mean()))
    np.maximum(weight[box], w, out=weight[box])


def _tree(
    rng: np.random.Generator,
    weight: np.ndarray,
    start: np.ndarray,
    direction: np.ndarray,
    radius: float,
    sp: np.ndarray,
    depth: int,
    segments: list[tuple[np.ndarray, np.ndarray, float]],
) -> None:
    """A branching tube: each segment bends a little, splits in two, children ~0.75 radius."""
    stack = [(start, direction, radius, 0)]
    while stack:
        a, d, r, level = stack.pop()
        length = rng.uniform(12.0, 30.0)
        d = d + rng.normal(0.0, 0.25, 3)
        d /= np.linalg.norm(d)
        b = a + d * length
        last = level >= depth or r < 0.8
        _segment(weight, a, b, r, 0.4 if last else r * 0.8, sp)
        segments.append((a, b, r))
        if last:
            continue
        perp = rng.normal(size=3)
        perp -= perp.dot(d) * d
        perp /= np.linalg.norm(perp)
        for side in (1.0, -1.0):
            angle = np.radians(rng.uniform(20.0, 45.0))
            child = np.cos(angle) * d + side * np.sin(angle) * perp
            stack.append((b, child / np.linalg.norm(child), r * rng.uniform(0.65, 0.85), level + 1))


def _blur2d(a: np.ndarray, passes: int) -> np.ndarray:
    """In-plane [1 2 1]/4 binomial blur, `passes` times per axis (sigma ~0.7 px per pass)."""
    for _ in range(passes):
        for axis in (1, 2):
            lo = [slice(None)] * 3
            hi = [slice(None)] * 3
            lo[axis], hi[axis] = slice(None, -1), slice(1, None)
            out = a * 0.5
            out[tuple(hi)] += 0.25 * a[tuple(lo)]
            out[tuple(lo)] += 0.25 * a[tuple(hi)]
            out[tuple(hi)] += 0.0
            a = out
    return a


@dataclass
class _Draw:
    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    kernel: str
    contrast: bool


def _geometry(
    rng: np.random.Generator,
    fam: Family,
    shape: tuple[int, int, int] | None,
    spacing: tuple[float, float, float] | None,
) -> tuple[tuple[int, int, int], tuple[float, float, float]]:
    if spacing is None:
        band = fam.thickness_bands[int(rng.integers(len(fam.thickness_bands)))]
        pixel = float(rng.uniform(*fam.pixel_mm))
        spacing = (float(rng.uniform(*band)), pixel, pixel)
    if shape is None:
        matrix = int(rng.choice(fam.matrix))
        slices = round(rng.uniform(*fam.scan_length_mm) / spacing[0])
        shape = (int(np.clip(slices, 30, fam.max_slices)), matrix, matrix)
    return (int(shape[0]), int(shape[1]), int(shape[2])), (
        float(spacing[0]),
        float(spacing[1]),
        float(spacing[2]),
    )


def make_study(
    seed: int | np.random.Generator,
    family: Family = HELD_OUT,
    *,
    nodules: list[float] | None = None,
    kinds: list[str] | None = None,
    sites: list[str] | None = None,
    shape: tuple[int, int, int] | None = None,
    spacing: tuple[float, float, float] | None = None,
) -> Phantom:
    """One synthetic chest CT from `family`; the same seed and arguments give the same study.

    Parameters
    ----------
    nodules: diameters in mm; None draws 0-4 (none with probability `family.p_clean`).
        A nodule that finds no place is dropped (small fields of view), never shrunk; in a
        truncated field of view one whose centre falls outside the reconstruction circle is
        not in the image, so not in the truth either (the image is the same); where part of
        it shows inside the circle it is kept in `Phantom.cut_nodules`.
    kinds / sites: per nodule (`NODULE_KINDS` / `NODULE_SITES`); None draws from the family.
    shape, spacing: force the geometry (tests use small volumes); None draws it.

    The returned `Phantom.nodules` carry `kind` and `site`; `Phantom.nodule_mask` is the
    truth on the input grid (the whole nodule, ground glass included).
    """
    rng = np.random.default_rng(seed)
    shape, spacing = _geometry(rng, family, shape, spacing)
    sp = np.asarray(spacing, dtype=np.float32)
    z, y, x = _axes(shape, spacing)
    y2, x2 = y[0], x[0]
    fov_y, fov_x, z_len = shape[1] * sp[1], shape[2] * sp[2], shape[0] * sp[0]
    kernel = str(rng.choice(family.kernels))
    contrast = bool(rng.random() < family.p_contrast)

    # Body: a superellipse cylinder, off-centre, wider than the field of view when truncated.
    truncated = rng.random() < family.p_truncated
    ax = rng.uniform(*family.body_width_mm) / 2
    wide = fov_x / 2 * rng.uniform(1.02, 1.2)
    ax = max(ax, wide) if truncated else min(ax, fov_x / 2 * 0.95)
    ay = min(ax * rng.uniform(*family.body_ap_ratio), fov_y / 2 * 0.95)
    off = rng.uniform(-1.0, 1.0, 2) * family.off_centre_mm
    if not truncated:  # an off-centre body still fits
        off[0] = np.clip(off[0], -(fov_y / 2 - ay) * 0.95, (fov_y / 2 - ay) * 0.95)
        off[1] = np.clip(off[1], -(fov_x / 2 - ax) * 0.95, (fov_x / 2 - ax) * 0.95)
    cy, cx = fov_y / 2 + off[0], fov_x / 2 + off[1]
    p_body = rng.uniform(*family.body_exponent)
    fat = rng.uniform(6.0, 25.0)
    dy, dx = y2 - cy, x2 - cx
    vol = np.full(shape, -1000.0, dtype=np.float32)
    body2 = _superellipse(dy, dx, ay, ax, p_body) <= 1.0
    inner2 = _superellipse(dy, dx, ay - fat, ax - fat, p_body) <= 1.0
    vol[:, body2] = rng.uniform(-120.0, -80.0)
    vol[:, inner2] = rng.uniform(25.0, 55.0)
    wall = fat + rng.uniform(6.0, 14.0)
    chest2 = _superellipse(dy, dx, ay - wall, ax - wall, p_body) <= 1.0

    # Lungs: superellipse sections shrinking to domes at apex and base.
    p_lung = rng.uniform(*family.lung_exponent)
    lung_len = rng.uniform(180.0, 280.0)
    zc = z_len * rng.uniform(0.3, 0.7)
    profile = np.sqrt(np.clip(1.0 - ((z[:, 0, 0] - zc) / (lung_len / 2)) ** 2, 0.0, 1.0))
    profile = profile ** rng.uniform(0.4, 0.8)
    lung = np.zeros(shape, dtype=bool)
    lung_centres = []
    for side in (-1.0, 1.0):
        lx = (ax - wall) * rng.uniform(0.34, 0.42)
        ly = (ay - wall) * rng.uniform(0.7, 0.85)
        c = (cy + ay * rng.uniform(-0.05, 0.05), cx + side * (ax - wall) * rng.uniform(0.45, 0.52))
        lung_centres.append(np.array([zc, c[0], c[1]]))
        d2 = _superellipse(y2 - c[0], x2 - c[1], ly, lx, p_lung)
        lung |= d2[None] <= (profile**p_lung)[:, None, None]
    lung &= chest2[None]

    # Mediastinum: heart (anterior, left), aorta, spine; ribs in the chest wall.
    blood = rng.uniform(150.0, 320.0) if contrast else rng.uniform(30.0, 50.0)
    if rng.random() < family.p_heart:
        hc = np.array([zc - lung_len * rng.uniform(0.15, 0.3), cy - ay * 0.2, cx + ax * 0.08])
        hr = np.array([rng.uniform(45.0, 70.0), ay * rng.uniform(0.3, 0.45), ax * 0.28])
        heart = ((z - hc[0]) / hr[0]) ** 2 + ((y - hc[1]) / hr[1]) ** 2 + (
            (x - hc[2]) / hr[2]
        ) ** 2 <= 1.0
        vol[heart] = blood
        lung &= ~heart
    aorta2 = (dy - ay * 0.35) ** 2 + (dx + ax * 0.1) ** 2 <= rng.uniform(10.0, 15.0) ** 2
    vol[:, aorta2] = blood
    lung &= ~aorta2[None]
    bone_hu = rng.uniform(500.0, 1000.0)
    spine2 = (dy - ay * 0.7) ** 2 + dx**2 <= (ay * rng.uniform(0.13, 0.17)) ** 2
    vol[:, spine2] = bone_hu * 0.4
    lung &= ~spine2[None]
    if rng.random() < family.p_ribs:
        ring = _superellipse(dy, dx, ay - fat * 0.5, ax - fat * 0.5, p_body)
        band = (ring <= 1.0) & ~chest2 & (dy > -ay * 0.6)
        period, width = rng.uniform(22.0, 30.0), rng.uniform(7.0, 11.0)
        tilt = rng.uniform(0.2, 0.6)  # ribs descend anteriorly
        phase = (z + tilt * (cy + ay - y)) % period
        ribs = (phase < width) & band[None]
        vol[ribs] = bone_hu
    base = rng.uniform(-880.0, -820.0)
    gradient = rng.uniform(0.0, 70.0)
    parenchyma = base + np.clip((y - (cy - ay)) / (2 * ay), 0.0, 1.0) * gradient
    vol = np.where(lung, parenchyma.astype(np.float32), vol)

    # Vessels and airways grow from each hilum; both are clipped to the lungs.
    vessel_w = np.zeros(shape, dtype=np.float32)
    segments: list[tuple[np.ndarray, np.ndarray, float]] = []
    if rng.random() < family.p_vessels:
        for centre in lung_centres:
            medial = np.sign(cx - centre[2])
            for _ in range(int(rng.integers(4, 8))):
                start = centre + np.array(
                    [rng.uniform(-40, 40), rng.uniform(-20, 20), medial * rng.uniform(10, 25)]
                )
                d = np.array([rng.normal(0, 0.8), rng.normal(0, 0.5), -medial])
                _tree(
                    rng,
                    vessel_w,
                    start,
                    d / np.linalg.norm(d),
                    rng.uniform(2.0, 4.0),
                    sp,
                    4,
                    segments,
                )
        vessel_w *= lung
        vessel_hu = rng.uniform(120.0, 250.0) if contrast else rng.uniform(30.0, 50.0)
        vol += vessel_w * (vessel_hu - vol)
    if rng.random() < family.p_airways:
        outer = np.zeros(shape, dtype=np.float32)
        lumen = np.zeros(shape, dtype=np.float32)
        for centre in lung_centres:
            medial = np.sign(cx - centre[2])
            start = centre + np.array([rng.uniform(-10, 10), -15.0, medial * 12.0])
            for _ in range(2):
                d = np.array([rng.normal(0, 0.6), rng.normal(0, 0.4), -medial])
                d /= np.linalg.norm(d)
                r = rng.uniform(3.0, 5.0)
                seg_o: list[tuple[np.ndarray, np.ndarray, float]] = []
                state = rng.bit_generator.state
                _tree(rng, outer, start, d, r, sp, 3, seg_o)
                rng.bit_generator.state = state  # the lumen follows the same tree
                _tree(rng, lumen, start, d, r * 0.7, sp, 3, [])
        wall_hu = rng.uniform(-200.0, 0.0)
        outer *= lung
        lumen *= lung
        vol += outer * (wall_hu - vol)
        vol += lumen * (-1000.0 - vol)

    placed = _nodules(rng, family, nodules, kinds, sites, lung, segments, sp)
    masks = [_render_nodule(rng, vol, n, sp) for n in placed]  # (box, truth in it) each

    # Scanner: kernel and noise (white noise shaped by the kernel, scaled to the drawn sigma).
    sigma = rng.uniform(*family.noise_hu)
    noise: np.ndarray = rng.standard_normal(shape, dtype=np.float32)
    if kernel == "smooth":
        vol = _blur2d(vol, int(rng.integers(1, 3)))
        noise = _blur2d(noise, 1)
    else:
        vol = vol + np.float32(rng.uniform(0.4, 1.0)) * (vol - _blur2d(vol, 1))  # edge overshoot
        noise = noise - np.float32(0.5) * _blur2d(noise, 1)
    noise *= np.float32(sigma / max(float(noise[:, ::7, ::7].std()), 1e-6))
    vol += noise
    fov_r = min(fov_x, fov_y) / 2  # the reconstruction circle
    fov_circle = (y2 - fov_y / 2) ** 2 + (x2 - fov_x / 2) ** 2 > fov_r**2
    cut: list[Nodule] = []
    if truncated:
        vol[:, fov_circle] = HU_MIN  # outside the reconstruction circle
        # A nodule whose centre lies outside the circle is not truth: no reader could find
        # or measure it whole (the image itself is unchanged).
        inside = [
            (n.center_mm[1] - fov_y / 2) ** 2 + (n.center_mm[2] - fov_x / 2) ** 2 <= fov_r**2
            for n in placed
        ]
        # One cut by the circle still shows its inner part: a reader (and a model) sees
        # nodule tissue there, so a study holding one is not a clean study.
        cut = [
            n
            for n, m, keep in zip(placed, masks, inside, strict=True)
            if not keep and m is not None and bool((m[1] & ~fov_circle[m[0][1:]]).any())
        ]
        placed = [n for n, keep in zip(placed, inside, strict=True) if keep]
        masks = [m for m, keep in zip(masks, inside, strict=True) if keep]
        lung[:, fov_circle] = False
    truth = np.zeros(shape, dtype=bool)
    for m in masks:
        if m is not None:
            truth[m[0]] |= m[1]
    if truncated:
        truth[:, fov_circle] = False
    np.clip(vol, HU_MIN, HU_MAX, out=vol)
    return Phantom(np.rint(vol).astype(np.int16), spacing, truth, placed, lung, cut)


def _nodules(
    rng: np.random.Generator,
    fam: Family,
    diameters: list[float] | None,
    kinds: list[str] | None,
    sites: list[str] | None,
    lung: np.ndarray,
    segments: list[tuple[np.ndarray, np.ndarray, float]],
    sp: np.ndarray,
) -> list[Nodule]:
    if diameters is None:
        count = 0 if rng.random() < fam.p_clean else int(rng.integers(1, 5))
        lo, hi = np.log(fam.nodule_mm[0]), np.log(fam.nodule_mm[1])
        diameters = [float(np.exp(rng.uniform(lo, hi))) for _ in range(count)]
    for label, given, allowed in (("kind", kinds, NODULE_KINDS), ("site", sites, NODULE_SITES)):
        if given is not None and (len(given) != len(diameters) or set(given) - set(allowed)):
            raise ValueError(f"need one {label} from {allowed} per nodule, got {given}")
    placed: list[Nodule] = []
    lung_idx = np.argwhere(lung[:, ::2, ::2]) * np.array([1, 2, 2])
    if not len(lung_idx):
        return placed
    for i, d in enumerate(sorted(diameters, reverse=True)):
        kind = kinds[i] if kinds else str(rng.choice(fam.nodule_kinds))
        site = sites[i] if sites else str(rng.choice(fam.nodule_sites))
        if site == "juxtavascular" and not segments:
            site = "free"
        centre = _place(rng, d, site, lung, lung_idx, segments, sp, placed)
        if centre is None:
            continue
        if kind == "ground-glass":
            hu = float(rng.uniform(-700.0, -450.0))
        elif kind == "part-solid":
            hu = float(rng.uniform(-650.0, -450.0))
        else:
            hu = float(rng.uniform(-20.0, 80.0))
        c3 = (float(centre[0]), float(centre[1]), float(centre[2]))
        placed.append(Nodule(c3, float(d), hu, kind, site))
    return placed


def _place(
    rng: np.random.Generator,
    d: float,
    site: str,
    lung: np.ndarray,
    lung_idx: np.ndarray,
    segments: list[tuple[np.ndarray, np.ndarray, float]],
    sp: np.ndarray,
    placed: list[Nodule],
    tries: int = 200,
) -> np.ndarray | None:
    """A centre whose ball lies in the lung (free, juxtavascular) or straddles the pleura."""
    r = d / 2
    for _ in range(tries):
        if site == "juxtavascular":
            a, b, vr = segments[int(rng.integers(len(segments)))]
            u = rng.normal(size=3)
            u /= np.linalg.norm(u)
            c = a + (b - a) * rng.uniform(0.2, 0.8) + u * (r + vr * 0.6)
        else:
            c = lung_idx[int(rng.integers(len(lung_idx)))] * sp + rng.uniform(-1, 1, 3) * sp
        if any(
            np.linalg.norm(c - np.array(p.center_mm)) < r + p.diameter_mm / 2 + 2 for p in placed
        ):
            continue
        box = _box(c - r, c + r, sp, lung.shape)
        if box is None or any(
            (s.stop - s.start) * v < 2 * r - 2 * v for s, v in zip(box, sp, strict=True)
        ):
            continue
        zz, yy, xx = _box_axes(box, sp)
        ball = (zz - c[0]) ** 2 + (yy - c[1]) ** 2 + (xx - c[2]) ** 2 <= r * r
        if not ball.any():
            continue
        inside = float(lung[box][ball].mean())
        if site == "juxtapleural" and 0.55 <= inside <= 0.9:
            return c
        if site != "juxtapleural" and inside == 1.0:
            return c
    return None


def _render_nodule(
    rng: np.random.Generator, vol: np.ndarray, n: Nodule, sp: np.ndarray
) -> tuple[tuple[slice, slice, slice], np.ndarray] | None:
    """A mildly ellipsoidal, lobulated ball; part-solid ones get a solid core. Returns the box
    it was drawn in and its truth mask there (None: outside the volume)."""
    c, r = np.asarray(n.center_mm, dtype=np.float32), n.diameter_mm / 2
    box = _box(c - r * 1.2 - 2 * sp.max(), c + r * 1.2 + 2 * sp.max(), sp, vol.shape)
    if box is None:
        return None
    zz, yy, xx = _box_axes(box, sp)
    scale = rng.uniform(0.88, 1.12, 3)
    scale /= np.prod(scale) ** (1 / 3)  # same volume as the sphere of diameter d
    dz, dy, dx = (zz - c[0]) / scale[0], (yy - c[1]) / scale[1], (xx - c[2]) / scale[2]
    dist = np.sqrt(dz**2 + dy**2 + dx**2)
    lobes = 1.0 + rng.uniform(0.0, 0.08) * np.cos(
        rng.integers(2, 5) * np.arctan2(dy, dx) + rng.uniform(0, 6.3)
    )
    w = _soft(dist, r * lobes, float(sp.mean()))
    vol[box] += w * (n.hu - vol[box])
    if n.kind == "part-solid":
        core = r * rng.uniform(0.35, 0.6)
        wc = _soft(dist, core, float(sp.mean()))
        vol[box] += wc * (rng.uniform(0.0, 60.0) - vol[box])
    return box, dist <= r * lobes


def held_out_sample(count: int, seed: int = 7, **kwargs: object) -> list[Phantom]:
    """`count` held-out studies with seeds `seed`, `seed + 1`, ...; kwargs go to `make_study`."""
    return [make_study(seed + i, HELD_OUT, **kwargs) for i in range(count)]  # type: ignore[arg-type]


def with_family(family: Family, **changes: object) -> Family:
    """A copy of `family` with some ranges changed (e.g. a smaller matrix for tests)."""
    return replace(family, **changes)  # type: ignore[arg-type]
