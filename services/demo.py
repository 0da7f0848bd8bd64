"""Demo data: synthetic chest CT phantoms with spherical lung nodules, as arrays and as DICOM.

The phantoms feed the demo (`radpipe demo`), the test suites (de-identification, inference),
the benchmarks and `scripts/train_demo_bundle.py`; no service imports this module, which is
why it is not part of the shared `common` library. Only numpy and pydicom are used so that
importing it stays cheap.

Coordinates: arrays are indexed (z, y, x); `y` grows towards the patient's posterior and `x`
towards the patient's left, matching the DICOM patient frame (LPS) with an axial
ImageOrientationPatient of (1, 0, 0, 0, 1, 0).
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pydicom
from pydicom.dataset import FileMetaDataset
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    CTImageStorage,
    ExplicitVRLittleEndian,
    generate_uid,
)

if TYPE_CHECKING:
    from radpipe.common.auth import AuthService, Principal

__all__ = [
    "DEMO_ROLES",
    "Nodule",
    "Phantom",
    "demo_tokens",
    "make_phantom",
    "phantom_to_datasets",
    "write_series",
]

HU_MIN, HU_MAX = -1024, 3071  # what RescaleIntercept -1024 and 12 stored bits can carry
_MATRICES = (256, 320, 384, 512)
_MIN_FOV_MM = 220.0  # below this a 30 mm nodule may not fit inside the smaller lung
_NODULE_MARGIN_MM = 1.5  # lung parenchyma kept around every nodule and between structures


@dataclass
class Nodule:
    """A solid spherical nodule; `center_mm` is (z, y, x) in volume mm (index * spacing)."""

    center_mm: tuple[float, float, float]
    diameter_mm: float
    hu: float
    kind: str = "solid"  # radpipe.phantoms also makes "part-solid" and "ground-glass"
    site: str = "free"  # radpipe.phantoms also makes "juxtapleural" and "juxtavascular"

    def to_dict(self) -> dict[str, Any]:
        return {
            "center_mm": list(self.center_mm),
            "diameter_mm": self.diameter_mm,
            "hu": self.hu,
            "kind": self.kind,
            "site": self.site,
        }


@dataclass
class Phantom:
    """A synthetic chest CT: int16 HU volume (z, y, x), spacing (z, y, x) mm, truth masks."""

    volume: np.ndarray
    spacing: tuple[float, float, float]
    nodule_mask: np.ndarray
    nodules: list[Nodule]
    lung_mask: np.ndarray = field(repr=False, default_factory=lambda: np.zeros(0, dtype=bool))
    # Nodules in the image but not in the truth: in a truncated field of view, one whose centre
    # lies outside the reconstruction circle while part of it shows inside (radpipe.phantoms).
    # A finding on one is neither a hit nor a false positive (radpipe.inference.froc).
    cut_nodules: list[Nodule] = field(default_factory=list)

    def nodule_mask_on_grid(
        self, shape: tuple[int, int, int], nodules: list[Nodule] | None = None
    ) -> np.ndarray:
        """Exact sphere truth (of all or the given nodules) on a `shape` grid, same field of view.

        Grid voxel j on an axis of n input voxels lies at input index (j + 0.5) * n / m - 0.5,
        the convention of torch's `interpolate(align_corners=False)` and MONAI `Resize`.
        """
        axes = [
            (((np.arange(m) + 0.5) * n / m - 0.5) * s).reshape(
                [-1 if i == a else 1 for i in range(3)]
            )
            for a, (m, n, s) in enumerate(zip(shape, self.volume.shape, self.spacing, strict=True))
        ]
        mask = np.zeros(shape, dtype=bool)
        for nod in self.nodules if nodules is None else nodules:
            c, r = nod.center_mm, nod.diameter_mm / 2
            mask |= (axes[0] - c[0]) ** 2 + (axes[1] - c[1]) ** 2 + (axes[2] - c[2]) ** 2 <= r * r
        return mask

    def to_dict(self) -> dict[str, Any]:
        return {
            "shape": list(self.volume.shape),
            "spacing": list(self.spacing),
            "nodules": [n.to_dict() for n in self.nodules],
        }


@dataclass
class _Ellipsoid:
    center: np.ndarray  # (z, y, x) mm
    radii: np.ndarray  # (z, y, x) mm

    def inside(self, z: np.ndarray, y: np.ndarray, x: np.ndarray) -> np.ndarray:
        c, r = self.center, self.radii
        return ((z - c[0]) / r[0]) ** 2 + ((y - c[1]) / r[1]) ** 2 + ((x - c[2]) / r[2]) ** 2 <= 1


def _geometry(
    rng: np.random.Generator,
    shape: tuple[int, int, int] | None,
    spacing: tuple[float, float, float] | None,
) -> tuple[tuple[int, int, int], tuple[float, float, float]]:
    thickness = float(spacing[0]) if spacing else float(rng.uniform(1.0, 3.0))
    if shape is None:
        matrix = int(rng.choice(_MATRICES))
        slices = int(np.clip(round(rng.uniform(80.0, 300.0) / thickness), 30, 160))
        shape = (slices, matrix, matrix)
    if spacing is None:
        pixel = float(rng.uniform(min(1.0, max(0.6, _MIN_FOV_MM / shape[2])), 1.0))
        spacing = (thickness, pixel, pixel)
    z, y, x = (int(n) for n in shape)
    return (z, y, x), (float(spacing[0]), float(spacing[1]), float(spacing[2]))


def _grid(shape: tuple[int, int, int], spacing: tuple[float, float, float]) -> list[np.ndarray]:
    """Broadcastable mm coordinate axes (z, y, x) of the voxel centres."""
    return [
        (np.arange(n, dtype=np.float32) * s).reshape([-1 if i == a else 1 for i in range(3)])
        for a, (n, s) in enumerate(zip(shape, spacing, strict=True))
    ]


def _soft_weight(dist: np.ndarray, radius: np.ndarray | float, h: np.ndarray | float) -> np.ndarray:
    """Partial-volume fraction of a voxel whose centre lies `dist - radius` mm outside an edge."""
    return np.clip(0.5 - (dist - radius) / h, 0.0, 1.0)


def _box(
    lo_mm: np.ndarray, hi_mm: np.ndarray, spacing: np.ndarray, shape: tuple[int, ...]
) -> tuple[slice, slice, slice] | None:
    lo = np.maximum(np.floor(lo_mm / spacing).astype(int), 0)
    hi = np.minimum(np.ceil(hi_mm / spacing).astype(int) + 1, shape)
    if np.any(hi <= lo):
        return None
    return (slice(lo[0], hi[0]), slice(lo[1], hi[1]), slice(lo[2], hi[2]))


def _box_coords(box: tuple[slice, slice, slice], spacing: np.ndarray) -> list[np.ndarray]:
    return [
        (np.arange(b.start, b.stop, dtype=np.float32) * spacing[a]).reshape(
            [-1 if i == a else 1 for i in range(3)]
        )
        for a, b in enumerate(box)
    ]


def _anatomy(
    rng: np.random.Generator, shape: tuple[int, int, int], spacing: tuple[float, float, float]
) -> tuple[np.ndarray, np.ndarray, list[_Ellipsoid]]:
    """Body, lungs, heart, spine and ribs; returns (HU float32, lung mask, lung ellipsoids)."""
    z, y, x = _grid(shape, spacing)
    fov_y, fov_x = shape[1] * spacing[1], shape[2] * spacing[2]
    z_len = shape[0] * spacing[0]
    cy = fov_y / 2 + rng.uniform(-0.03, 0.03) * fov_y
    cx = fov_x / 2
    ax = fov_x / 2 * rng.uniform(0.72, 0.9)
    ay = min(ax * rng.uniform(0.6, 0.75), fov_y / 2 * 0.92)
    fat = rng.uniform(8.0, 22.0)

    # In-plane masks are 2-D and broadcast along z: the trunk is a cylinder.
    r2 = ((y[0] - cy) / ay) ** 2 + ((x[0] - cx) / ax) ** 2
    body = r2 <= 1.0
    inner = ((y[0] - cy) / (ay - fat)) ** 2 + ((x[0] - cx) / (ax - fat)) ** 2 <= 1.0
    vol = np.full(shape, -1000.0, dtype=np.float32)
    vol[:, body] = rng.uniform(-115.0, -85.0)  # subcutaneous fat
    vol[:, inner] = rng.uniform(30.0, 50.0)  # muscle and mediastinum

    lz = rng.uniform(90.0, 140.0)
    zc = z_len * rng.uniform(0.4, 0.6)
    lungs = []
    lung = np.zeros(shape, dtype=bool)
    for side in (-1.0, 1.0):
        lx = (ax - fat) * rng.uniform(0.3, 0.36)
        center = np.array([zc, cy + ay * rng.uniform(-0.02, 0.08), cx + side * ax * 0.46])
        e = _Ellipsoid(center, np.array([lz, (ay - fat) * rng.uniform(0.62, 0.72), lx]))
        lungs.append(e)
        lung |= e.inside(z, y, x)
    heart = _Ellipsoid(
        np.array([zc - 0.35 * lz, cy - ay * rng.uniform(0.12, 0.25), cx + ax * 0.1]),
        np.array([rng.uniform(50.0, 70.0), ay * rng.uniform(0.35, 0.45), ax * 0.3]),
    )
    lung &= ~heart.inside(z, y, x)
    # Keep a layer of chest wall between lungs and fat whatever the random proportions.
    wall = fat + 5.0
    lung &= (((y[0] - cy) / (ay - wall)) ** 2 + ((x[0] - cx) / (ax - wall)) ** 2 <= 1.0)[None]

    # Spine: a cortical ring with marrow inside, discs every vertebra; ribs every ~25 mm.
    sy, sr = cy + ay * 0.62, ay * rng.uniform(0.14, 0.18)
    d_spine = np.sqrt((y[0] - sy) ** 2 + (x[0] - cx) ** 2)
    period = rng.uniform(22.0, 28.0)
    disc = (z[:, :, 0] % period) < 5.0
    cortex, marrow = rng.uniform(600.0, 800.0), rng.uniform(200.0, 300.0)
    rib_ring = (r2 <= 0.93**2) & (r2 >= 0.86**2) & (y[0] > cy - 0.4 * ay)
    ribs = ((z[:, :, 0] + period / 2) % period) < rng.uniform(7.0, 10.0)
    bone = (d_spine <= sr)[None] & ~disc[:, :, None] | rib_ring[None] & ribs[:, :, None]
    vol[bone] = cortex
    vol[(d_spine <= sr - 2.5)[None] & ~disc[:, :, None]] = marrow
    lung &= ~bone

    # Lung parenchyma is denser posteriorly (gravity-dependent), as on a supine scan.
    base, gradient = rng.uniform(-880.0, -830.0), rng.uniform(0.0, 60.0)
    dependent = np.clip((y - (cy - ay)) / (2 * ay), 0.0, 1.0) * gradient
    vol = np.where(lung, (base + dependent).astype(np.float32), vol)
    return vol, lung, lungs


def _place_nodules(
    rng: np.random.Generator,
    diameters: list[float],
    lung: np.ndarray,
    lungs: list[_Ellipsoid],
    spacing: tuple[float, float, float],
    *,
    required: bool,
) -> list[Nodule]:
    sp = np.asarray(spacing, dtype=np.float32)
    placed: list[Nodule] = []
    for diameter in sorted(diameters, reverse=True):
        d = float(diameter)
        while True:
            nodule = _try_place(rng, d, lung, lungs, sp, placed)
            if nodule is not None:
                placed.append(nodule)
                break
            if required:
                raise ValueError(
                    f"cannot place a {d:.1f} mm nodule fully inside the lungs of this phantom; "
                    "ask for a larger matrix or pixel spacing, or a smaller nodule"
                )
            if d <= 3.0:
                break
            d = max(3.0, d * 0.7)  # random nodules shrink until they fit
    return placed


def _try_place(
    rng: np.random.Generator,
    diameter: float,
    lung: np.ndarray,
    lungs: list[_Ellipsoid],
    sp: np.ndarray,
    placed: list[Nodule],
    tries: int = 300,
) -> Nodule | None:
    r = diameter / 2
    reach = r + _NODULE_MARGIN_MM
    for _ in range(tries):
        e = lungs[int(rng.integers(len(lungs)))]
        u = rng.normal(size=3)
        u *= rng.uniform() ** (1 / 3) / np.linalg.norm(u)
        c = e.center + u * np.maximum(e.radii - reach, 0.0)
        if any(
            np.linalg.norm(c - np.array(p.center_mm)) < reach + p.diameter_mm / 2 for p in placed
        ):
            continue
        box = _box(c - reach, c + reach, sp, lung.shape)
        if box is None or any(
            (b.stop - b.start) < (2 * reach / s) for b, s in zip(box, sp, strict=True)
        ):
            continue  # clipped by the volume edge
        zz, yy, xx = _box_coords(box, sp)
        ball = (zz - c[0]) ** 2 + (yy - c[1]) ** 2 + (xx - c[2]) ** 2 <= reach**2
        if lung[box][ball].all():
            hu = float(rng.uniform(0.0, 60.0))
            return Nodule((float(c[0]), float(c[1]), float(c[2])), float(diameter), hu)
    return None


def _render_vessels(
    rng: np.random.Generator,
    vol: np.ndarray,
    lung: np.ndarray,
    lungs: list[_Ellipsoid],
    nodules: list[Nodule],
    spacing: tuple[float, float, float],
) -> None:
    """Branching tapered tubes (~40 HU) entering each lung at its hilum: dense, not spherical.

    No tube may end bluntly inside a lung: roots start outside it (the lung mask clips their
    caps) and leaves taper to 0.5 mm, so the only round dense things are the nodules.
    """
    sp = np.asarray(spacing, dtype=np.float32)
    hu = rng.uniform(30.0, 50.0)
    weight = np.zeros(vol.shape, dtype=np.float32)
    for e in lungs:
        medial = -np.sign(e.center[2] - vol.shape[2] * sp[2] / 2)
        for _ in range(int(rng.integers(4, 8))):
            dz, dy = rng.uniform(-0.45, 0.45), rng.uniform(-0.3, 0.3)
            half_width = e.radii[2] * np.sqrt(max(0.0, 1.0 - dz**2 - dy**2))
            start = e.center + np.array(
                [dz * e.radii[0], dy * e.radii[1], medial * (half_width + 3.0)]
            )
            direction = np.array([rng.normal(0, 0.9), rng.normal(0, 0.6), -medial])
            direction /= np.linalg.norm(direction)
            radius, length = rng.uniform(2.0, 3.5), rng.uniform(15.0, 35.0) + 3.0
            if any(_near_segment(start, start + direction * length, n, radius) for n in nodules):
                continue
            stack: list[_Branch] = [(start, direction, radius, 0, length)]
            while stack:
                a, d, r0, depth, length = stack.pop()
                b = a + d * length
                children = _branches(rng, b, d, r0 * 0.8, depth, nodules)
                _stamp_segment(weight, a, b, r0, r0 * 0.8 if children else 0.5, sp)
                stack.extend(children)
    weight *= lung
    vol += weight * (hu - vol)


_Branch = tuple[np.ndarray, np.ndarray, float, int, float]


def _branches(
    rng: np.random.Generator,
    start: np.ndarray,
    d: np.ndarray,
    radius: float,
    depth: int,
    nodules: list[Nodule],
) -> list[_Branch]:
    """Two children at 15-40 degrees each side in one plane, as vessels bifurcate; random
    turns would fold branches onto each other into round, nodule-like knots."""
    if depth >= 4 or radius <= 0.6:
        return []
    perp = rng.normal(size=3)
    perp -= perp.dot(d) * d
    perp /= np.linalg.norm(perp)
    out: list[_Branch] = []
    for side in (1.0, -1.0):
        for _ in range(3):  # steer around nodules rather than stop next to one
            angle = np.radians(rng.uniform(15.0, 40.0))
            child = np.cos(angle) * d + side * np.sin(angle) * perp
            child /= np.linalg.norm(child)
            length = rng.uniform(15.0, 35.0)
            if not any(_near_segment(start, start + child * length, n, radius) for n in nodules):
                out.append((start, child, radius, depth + 1, length))
                break
    return out


def _near_segment(a: np.ndarray, b: np.ndarray, nodule: Nodule, radius: float) -> bool:
    c = np.asarray(nodule.center_mm)
    t = np.clip(np.dot(c - a, b - a) / np.dot(b - a, b - a), 0.0, 1.0)
    gap = np.linalg.norm(c - (a + t * (b - a)))
    return bool(gap < nodule.diameter_mm / 2 + radius + 2 * _NODULE_MARGIN_MM)


def _stamp_segment(
    weight: np.ndarray, a: np.ndarray, b: np.ndarray, r0: float, r1: float, sp: np.ndarray
) -> None:
    box = _box(np.minimum(a, b) - r0 - 1, np.maximum(a, b) + r0 + 1, sp, weight.shape)
    if box is None:
        return
    zz, yy, xx = _box_coords(box, sp)
    ab = b - a
    t = ((zz - a[0]) * ab[0] + (yy - a[1]) * ab[1] + (xx - a[2]) * ab[2]) / float(ab @ ab)
    t = np.clip(t, 0.0, 1.0)
    dist = np.sqrt(
        (zz - a[0] - t * ab[0]) ** 2 + (yy - a[1] - t * ab[1]) ** 2 + (xx - a[2] - t * ab[2]) ** 2
    )
    w = _soft_weight(dist, r0 + (r1 - r0) * t, float(sp.mean()))
    np.maximum(weight[box], w, out=weight[box])


def _render_nodules(
    vol: np.ndarray, nodules: list[Nodule], spacing: tuple[float, float, float]
) -> np.ndarray:
    sp = np.asarray(spacing, dtype=np.float32)
    mask = np.zeros(vol.shape, dtype=bool)
    for n in nodules:
        c, r = np.asarray(n.center_mm, dtype=np.float32), n.diameter_mm / 2
        box = _box(c - r - 2 * sp.max(), c + r + 2 * sp.max(), sp, vol.shape)
        if box is None:
            continue
        zz, yy, xx = _box_coords(box, sp)
        dz, dy, dx = zz - c[0], yy - c[1], xx - c[2]
        dist = np.sqrt(dz**2 + dy**2 + dx**2)
        # Partial volume: a voxel's extent along the surface normal is sum(|n_i| * s_i).
        safe = np.maximum(dist, 1e-3)
        h = (np.abs(dz) * sp[0] + np.abs(dy) * sp[1] + np.abs(dx) * sp[2]) / safe
        w = _soft_weight(dist, r, np.maximum(h, sp.min()))
        vol[box] += w * (n.hu - vol[box])
        mask[box] |= dist <= r
    return mask


def make_phantom(
    rng_or_seed: int | np.random.Generator,
    *,
    nodules: list[float] | None = None,
    shape: tuple[int, int, int] | None = None,
    spacing: tuple[float, float, float] | None = None,
) -> Phantom:
    """Build a synthetic chest CT; the same seed and arguments give the same phantom.

    Parameters
    ----------
    rng_or_seed: seed or numpy Generator.
    nodules: nodule diameters in mm (3-30 mm); None draws 0-3 random nodules.
    shape: (slices, rows, columns); None draws a 256-512 matrix and 30-160 slices.
    spacing: (slice thickness, row spacing, column spacing) mm; None draws 1-3 mm slices and
        0.6-1.0 mm pixels (at least 220 mm field of view).

    Raises
    ------
    ValueError: a requested nodule does not fit inside the lungs of this geometry.
    """
    rng = np.random.default_rng(rng_or_seed)
    shape, spacing = _geometry(rng, shape, spacing)
    vol, lung, lungs = _anatomy(rng, shape, spacing)
    required = nodules is not None
    diameters = (
        list(nodules)
        if nodules is not None
        else [float(rng.uniform(3.0, 30.0)) for _ in range(int(rng.integers(0, 4)))]
    )
    placed = _place_nodules(rng, diameters, lung, lungs, spacing, required=required)
    _render_vessels(rng, vol, lung, lungs, placed, spacing)
    mask = _render_nodules(vol, placed, spacing)
    sigma = rng.uniform(8.0, 30.0)
    vol += rng.standard_normal(shape, dtype=np.float32) * np.float32(sigma)
    np.clip(vol, HU_MIN, HU_MAX, out=vol)
    return Phantom(np.rint(vol).astype(np.int16), spacing, mask, placed, lung)


def phantom_to_datasets(
    phantom: Phantom,
    *,
    patient_name: str = "Doe^Jane",
    patient_id: str = "MRN0001",
    accession: str = "ACC0001",
    study_uid: str | None = None,
    series_uid: str | None = None,
    frame_of_reference_uid: str | None = None,
    study_date: str = "20240102",
    study_time: str = "101500",
    patient_birth_date: str = "19610407",
    patient_sex: str = "F",
    institution: str = "General Hospital",
    referring: str = "Smith^John",
    operator: str = "Tech^Terry",
    study_description: str = "CT CHEST",
    series_description: str = "CT CHEST PHANTOM",
    series_number: int = 1,
    study_id: str = "1",
) -> list[pydicom.Dataset]:
    """One CT Image Storage instance per slice (PS3.3 A.3), Explicit VR Little Endian.

    Pixel values are stored unsigned as HU + 1024 (RescaleIntercept -1024, 12 bits stored).
    The identifying values are carried verbatim, also inside RequestAttributesSequence, so
    de-identification tests can look for them at any depth. Runs in ~10 ms per 512x512 slice.
    """
    study_uid = study_uid or generate_uid()
    series_uid = series_uid or generate_uid()
    frame_uid = frame_of_reference_uid or generate_uid()
    nz, ny, nx = phantom.volume.shape
    dz, dy, dx = phantom.spacing
    # Centre the field of view on the isocentre, as scanners do.
    x0, y0 = -(nx - 1) * dx / 2, -(ny - 1) * dy / 2
    z0 = -(nz - 1) * dz / 2
    now = _dt.datetime.now()
    stored = (phantom.volume.astype(np.int32) - HU_MIN).clip(0, 4095).astype(np.uint16)
    out = []
    for k in range(nz):
        sop_uid = generate_uid()
        ds = pydicom.Dataset()
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = sop_uid
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
        meta.ImplementationVersionName = "RADPIPE_PHANTOM"
        ds.file_meta = meta
        ds.SpecificCharacterSet = "ISO_IR 100"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.InstanceCreationDate = now.strftime("%Y%m%d")
        ds.InstanceCreationTime = now.strftime("%H%M%S")
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = sop_uid
        ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = study_date
        ds.StudyTime = ds.SeriesTime = ds.AcquisitionTime = ds.ContentTime = study_time
        ds.AccessionNumber = accession
        ds.Modality = "CT"
        ds.Manufacturer = "Radpipe"
        ds.InstitutionName = institution
        ds.ReferringPhysicianName = referring
        ds.StationName = "PHANTOM01"
        ds.StudyDescription = study_description
        ds.SeriesDescription = series_description
        ds.OperatorsName = operator
        ds.ManufacturerModelName = "Synthetic Phantom"
        ds.PatientName = patient_name
        ds.PatientID = patient_id
        ds.PatientBirthDate = patient_birth_date
        ds.PatientSex = patient_sex
        ds.BodyPartExamined = "CHEST"
        ds.SliceThickness = f"{dz:.4g}"
        ds.KVP = "120"
        ds.DeviceSerialNumber = "PH-0001"
        ds.SoftwareVersions = "radpipe-phantom"
        ds.PatientPosition = "HFS"
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.StudyID = study_id
        ds.SeriesNumber = series_number
        ds.AcquisitionNumber = 1
        ds.InstanceNumber = k + 1
        ds.ImagePositionPatient = [f"{x0:.4f}", f"{y0:.4f}", f"{z0 + k * dz:.4f}"]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.FrameOfReferenceUID = frame_uid
        ds.PositionReferenceIndicator = ""
        ds.SliceLocation = f"{z0 + k * dz:.4f}"
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows, ds.Columns = ny, nx
        ds.PixelSpacing = [f"{dy:.6g}", f"{dx:.6g}"]
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
        ds.PixelRepresentation = 0
        ds.WindowCenter, ds.WindowWidth = -600, 1500
        ds.RescaleIntercept, ds.RescaleSlope = HU_MIN, 1
        ds.RescaleType = "HU"
        request = pydicom.Dataset()
        request.AccessionNumber = accession
        request.RequestedProcedureID = accession
        request.ScheduledProcedureStepID = accession
        ds.RequestAttributesSequence = [request]
        ds.PixelData = stored[k].tobytes()
        out.append(ds)
    return out


def write_series(datasets: list[pydicom.Dataset], folder: str | Path) -> list[Path]:
    """Write each dataset as a PS3.10 file named after its InstanceNumber; returns the paths."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, ds in enumerate(datasets):
        path = folder / f"CT{int(getattr(ds, 'InstanceNumber', i + 1)):05d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


#: The roles ``radpipe demo`` acts in: a modality pushes, a radiologist reads. Never admin.
DEMO_ROLES = ("modality", "radiologist")
#: Where the demo keeps its own tokens between runs (mode 0600, beside ``secret.key``).
DEMO_TOKENS_FILE = "demo-tokens.json"


def demo_tokens(auth: AuthService, data_dir: Path, actor: Principal) -> dict[str, str]:
    """One token per role in ``DEMO_ROLES`` (named ``demo-<role>``), created once and reused.

    The store keeps only their SHA-256, like every token; the values stay in
    ``<data dir>/demo-tokens.json`` (mode 0600, the folder that holds the secret key), so the
    next run finds them instead of adding tokens. A token that no longer authenticates
    (revoked, expired, another store) is replaced: the old ``demo-<role>`` is revoked and a
    new one written (audited ``token.create`` by ``actor``)."""
    import contextlib
    import json
    import os

    from radpipe.common.errors import NotFound, Unauthorized

    path = data_dir / DEMO_TOKENS_FILE
    try:
        saved = json.loads(path.read_text()) if path.exists() else {}
    except (OSError, ValueError):
        saved = {}
    tokens: dict[str, str] = {}
    for role in DEMO_ROLES:
        value = saved.get(role) if isinstance(saved, dict) else None
        try:
            if isinstance(value, str) and auth.authenticate_token(value).role == role:
                tokens[role] = value
                continue
        except Unauthorized:
            pass
        name = f"demo-{role}"
        with contextlib.suppress(NotFound):  # none left valid: nothing to revoke
            auth.revoke_token(name)
        tokens[role] = auth.create_token(name, role)
        auth.audit(actor, "token.create", name, role=role, demo=True)
    if tokens != saved:
        data_dir.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".tmp")
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            json.dump(tokens, handle)
        os.replace(partial, path)
    return tokens
