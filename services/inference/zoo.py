"""MONAI Model Zoo bundles run unchanged: their own ``configs/inference.json`` through
``monai.bundle.ConfigParser``, with overrides only for I/O.

A zoo bundle (``configs/metadata.json``, ``configs/inference.json``, ``models/model.pt`` or
``models/model.ts``, ``docs/``, optionally ``scripts/``) is read as the zoo's own ``run`` reads
it; what Radpipe instantiates from it is ``network_def`` (weights from ``models/``),
``preprocessing``, ``inferer`` and ``postprocessing``, plus whatever its ``evaluator`` requires
(``_requires_``, e.g. the detection bundles' ``detector_ops``). Overridden, and only these:

* every ``LoadImage``/``LoadImaged`` of ``preprocessing`` becomes :class:`LoadVolumed`, which
  hands over the in-memory de-identified volume as ``LoadImaged(reader="ITKReader")`` would
  have read it (channel-less (x, y, z) ``MetaTensor``, RAS affine);
* every ``SaveImage``/``SaveImaged`` of ``postprocessing`` is dropped (results are DICOM);
* ``device`` is the worker's device; ``dataset``/``dataloader``/``evaluator``/``handlers``
  are never instantiated (they read files and need ignite), so their data lists are not read.

The output decides the kind: a dict of boxes and scores (the zoo's RetinaNet detection
format: ``box``, ``label``, ``label_scores``) is a **detection**, a 3-D label map a
**segmentation**, a vector of class scores a **classification**. Label names come from the
sidecar ``radpipe.json`` (see :class:`Sidecar`) or from the metadata's
``network_data_format.outputs.pred.channel_def``.

Nothing is downloaded: a network that asks ``torch.hub`` or ``monai.apps`` for weights while
it is built is refused with the fix (the weights go in ``models/``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import sys
import threading
from collections.abc import Hashable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.bundle import ConfigParser
from monai.data import MetaTensor
from monai.transforms import MapTransform
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from radpipe.common.digest import file_sha256
from radpipe.common.report import CATEGORY, LUNG, NODULE

from .bundle import Bundle, load_bundle
from .findings import Finding
from .risk import Risk, assess_risk
from .volume import Vec3, Volume

__all__ = [
    "MANIFEST",
    "SIDECAR",
    "BundleError",
    "LoadVolumed",
    "Sidecar",
    "ZooBundle",
    "ZooFinding",
    "ZooResult",
    "bundle_info",
    "check_integrity",
    "compute_manifest",
    "finding_codes",
    "finding_label",
    "is_native",
    "load_model",
    "run_zoo",
    "verify_manifest",
    "write_manifest",
]

SIDECAR = "radpipe.json"
MANIFEST = "radpipe-manifest.json"
WEIGHTS = ("models/model.pt", "models/model.ts")
_LOADERS = ("LoadImage", "LoadImaged")
_SAVERS = ("SaveImage", "SaveImaged")
ANATOMY = codes.SCT.AnatomicalStructure
_lock = threading.Lock()  # sys.path and sys.modules["scripts"] are process-wide


class BundleError(ValueError):
    """A bundle that cannot be loaded; the message names the fix."""


# --- integrity ---------------------------------------------------------------------------


def _hashed_files(root: Path) -> list[Path]:
    """Weights, configs and bundle scripts (code that runs): what the manifest covers."""
    files = [root / w for w in WEIGHTS if (root / w).is_file()]
    for folder, patterns in (("configs", ("*.json", "*.yaml", "*.yml")), ("scripts", ("*.py",))):
        for pattern in patterns:
            files.extend(p for p in (root / folder).rglob(pattern) if p.is_file())
    return sorted(set(files))


def compute_manifest(root: Path) -> dict[str, str]:
    """sha256 of every weights, config and script file, by path relative to the bundle."""
    return {p.relative_to(root).as_posix(): file_sha256(p) for p in _hashed_files(root)}


def write_manifest(root: Path) -> dict[str, str]:
    """Record the manifest (``radpipe-manifest.json``) that :func:`check_integrity` holds to."""
    files = compute_manifest(root)
    (root / MANIFEST).write_text(json.dumps({"files": files}, indent=2, sort_keys=True) + "\n")
    return files


def verify_manifest(root: Path) -> list[str] | None:
    """What differs from the recorded manifest ([] when nothing); None without a manifest."""
    path = root / MANIFEST
    if not path.is_file():
        return None
    try:
        recorded = json.loads(path.read_text())["files"]
    except (ValueError, KeyError, TypeError):
        return [f"{MANIFEST} is unreadable"]
    now = compute_manifest(root)
    problems = []
    for rel in sorted(set(recorded) | set(now)):
        if rel not in now:
            problems.append(f"{rel} is missing")
        elif rel not in recorded:
            problems.append(f"{rel} was added")
        elif recorded[rel] != now[rel]:
            problems.append(
                f"{rel} changed (sha256 {now[rel][:12]}…, recorded {recorded[rel][:12]}…)"
            )
    return problems


def check_integrity(root: Path) -> None:
    """Refuse a bundle whose files differ from the manifest ``radpipe models add`` recorded."""
    problems = verify_manifest(root)
    if problems:
        raise BundleError(
            f"bundle {root} differs from the sha256 manifest recorded when it was added "
            f"({'; '.join(problems)}); run `radpipe models verify` to see every bundle's state "
            "and re-add the approved bundle with `radpipe models add PATH`"
        )


# --- sidecar -----------------------------------------------------------------------------

_SIDECAR_KEYS = ("kind", "routing", "score_threshold", "max_findings", "risk", "labels")
KINDS = ("segmentation", "detection", "classification")
RISKS = ("none", "nodule_size", "max_score")


@dataclass(frozen=True)
class LabelSpec:
    name: str
    category: tuple[str, str, str] | None = None  # (scheme, value, meaning)
    type: tuple[str, str, str] | None = None


@dataclass(frozen=True)
class Sidecar:
    """``radpipe.json`` beside ``configs/``: what the zoo's metadata cannot say.

    ``kind``: segmentation | detection | classification (else read from the output);
    ``routing``: rules as in ``radpipe_routing`` (see ``radpipe.common.routing``);
    ``score_threshold``: boxes (detection) kept at or above (default 0.5);
    ``max_findings``: at most this many boxes, best first (default 20);
    ``risk``: ``none`` (default), ``nodule_size`` (Lung-RADS-like on the largest diameter) or
    ``max_score`` (highest box score or non-background class probability);
    ``labels``: ``{"1": {"name": ..., "category": [scheme, value, meaning], "type": [...]}}``.
    """

    kind: str | None = None
    routing: tuple[dict[str, Any], ...] = ()
    score_threshold: float = 0.5
    max_findings: int = 20
    risk: str = "none"
    labels: Mapping[int, LabelSpec] = field(default_factory=dict)

    @classmethod
    def read(cls, root: Path) -> Sidecar:
        path = root / SIDECAR
        if not path.is_file():
            return cls()
        where = str(path)
        try:
            data = json.loads(path.read_text())
        except ValueError as exc:
            raise BundleError(f"{where} is not JSON ({exc})") from None
        if not isinstance(data, dict):
            raise BundleError(f"{where}: an object with the keys {', '.join(_SIDECAR_KEYS)}")
        unknown = sorted(set(data) - set(_SIDECAR_KEYS))
        if unknown:
            raise BundleError(
                f"{where}: unknown key(s) {', '.join(unknown)} (known: {', '.join(_SIDECAR_KEYS)})"
            )
        kind = data.get("kind")
        if kind is not None and kind not in KINDS:
            raise BundleError(f"{where}: kind {kind!r}; use one of {', '.join(KINDS)}")
        risk = data.get("risk", "none")
        if risk not in RISKS:
            raise BundleError(f"{where}: risk {risk!r}; use one of {', '.join(RISKS)}")
        routing = data.get("routing", [])
        if not isinstance(routing, list):
            raise BundleError(f"{where}: routing is a list of rules")
        labels: dict[int, LabelSpec] = {}
        for key, spec in (data.get("labels") or {}).items():
            if not str(key).isdigit() or not isinstance(spec, dict) or "name" not in spec:
                raise BundleError(f"{where}: labels maps a label number to {{'name': ...}}")
            codes = []
            for part in ("category", "type"):
                code = spec.get(part)
                if code is not None and (
                    not isinstance(code, list) or len(code) != 3 or not all(code)
                ):
                    raise BundleError(f"{where}: label {key} {part} is [scheme, value, meaning]")
                codes.append(tuple(str(c) for c in code) if code else None)
            labels[int(key)] = LabelSpec(str(spec["name"]), codes[0], codes[1])  # type: ignore[arg-type]
        try:
            threshold = float(data.get("score_threshold", 0.5))
            most = int(data.get("max_findings", 20))
        except (TypeError, ValueError):
            raise BundleError(
                f"{where}: score_threshold is a number, max_findings an integer"
            ) from None
        return cls(kind, tuple(routing), threshold, most, risk, labels)


# --- loading -----------------------------------------------------------------------------


class LoadVolumed(MapTransform):
    """Stands in for ``LoadImaged``: the in-memory :class:`Volume` under each key becomes what
    ``LoadImaged(reader="ITKReader")`` makes of the series: a channel-less (x, y, z)
    ``MetaTensor`` of HU with its RAS affine (ITK's LPS with x and y negated)."""

    def __init__(self, keys: Any, allow_missing_keys: bool = False, **_: Any) -> None:
        super().__init__(keys, allow_missing_keys)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        out = dict(data)
        for key in self.key_iterator(out):
            out[key] = volume_to_metatensor(out[key])
        return out


def volume_affine_lps(volume: Volume) -> np.ndarray:
    """4x4 from the (x, y, z)-ordered array index (i, j, k) to patient LPS mm."""
    affine = np.eye(4)
    for column, axis in enumerate((2, 1, 0)):
        affine[:3, column] = np.asarray(volume.axes[axis]) * volume.spacing[axis]
    affine[:3, 3] = volume.origin
    return affine


def volume_to_metatensor(volume: Volume) -> MetaTensor:
    ras = np.diag([-1.0, -1.0, 1.0, 1.0]) @ volume_affine_lps(volume)
    array = np.ascontiguousarray(volume.array.transpose(2, 1, 0), dtype=np.float32)
    meta = {
        "affine": torch.as_tensor(ras, dtype=torch.float64),
        "original_affine": torch.as_tensor(ras, dtype=torch.float64),
        "spatial_shape": np.asarray(array.shape),
        "original_channel_dim": float("nan"),
        "space": "RAS",
        "filename_or_obj": "radpipe-volume",
    }
    return MetaTensor(torch.from_numpy(array), meta=meta)


@contextlib.contextmanager
def _no_downloads(root: Path) -> Iterator[None]:
    """While a bundle is built, any weight download is an error naming the fix."""
    import monai.apps.utils as apps_utils
    import torch.hub as hub

    def refuse(url: Any = "", *_: Any, **__: Any) -> Any:
        raise BundleError(
            f"bundle {root} tried to download {url} while it was built; a model never downloads "
            "at run time: put the weights in the bundle's models/ folder and set any "
            "'pretrained' option of its network_def to false"
        )

    saved = (hub.download_url_to_file, hub.load_state_dict_from_url, apps_utils.download_url)
    hub.download_url_to_file = refuse
    hub.load_state_dict_from_url = refuse
    apps_utils.download_url = refuse  # type: ignore[assignment]
    try:
        yield
    finally:
        hub.download_url_to_file, hub.load_state_dict_from_url = saved[0], saved[1]
        apps_utils.download_url = saved[2]  # type: ignore[assignment]


@contextlib.contextmanager
def _bundle_scripts(root: Path) -> Iterator[None]:
    """The bundle's own ``scripts`` package importable (as the zoo's ``run`` does), then
    forgotten, so two bundles' ``scripts`` do not shadow each other."""

    def forget() -> None:
        for name in [n for n in sys.modules if n == "scripts" or n.startswith("scripts.")]:
            del sys.modules[name]

    forget()
    sys.path.insert(0, str(root))
    try:
        yield
    finally:
        sys.path.remove(str(root))
        forget()


def _target_name(item: Any) -> str:
    if not isinstance(item, dict):
        return ""
    return str(item.get("_target_", "")).rsplit(".", 1)[-1]


def _io_overrides(parser: ConfigParser, device: torch.device) -> None:
    """Replace the file loaders with :class:`LoadVolumed`, drop the savers, set the device."""
    for component, names in (("preprocessing", _LOADERS), ("postprocessing", _SAVERS)):
        transforms = parser.get(f"{component}#transforms")
        if not isinstance(transforms, list):
            continue
        kept = []
        for item in transforms:
            if _target_name(item) not in names:
                kept.append(item)
            elif component == "preprocessing":
                loader = {"_target_": f"{__name__}.LoadVolumed", "keys": item.get("keys", "image")}
                if "_disabled_" in item:
                    loader["_disabled_"] = item["_disabled_"]
                kept.append(loader)
        parser[f"{component}#transforms"] = kept
    if "device" in parser:
        parser["device"] = f"$torch.device('{device}')"
    if "bundle_root" in parser:
        parser["bundle_root"] = str(parser.get("_radpipe_root_"))


@dataclass
class ZooBundle:
    """A zoo bundle's instantiated components and what Radpipe needs to read their output."""

    name: str
    version: str
    sha256: str
    path: Path
    device: torch.device
    network: torch.nn.Module
    preprocessing: Any
    inferer: Any
    postprocessing: Any
    sidecar: Sidecar
    labels: dict[int, str]
    image_key: str = "image"
    pred_key: str = "pred"
    list_input: bool = False
    box_mode: str = "xyzxyz"
    box_world: str | None = None  # "LPS" | "RAS" when postprocessing maps boxes to the world

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "sha256": self.sha256,
            "path": str(self.path),
            "format": "monai-zoo",
            "kind": self.sidecar.kind,
            "labels": {str(k): v for k, v in sorted(self.labels.items())},
            "device": str(self.device),
        }

    def label_spec(self, value: int) -> LabelSpec:
        return self.sidecar.labels.get(value) or LabelSpec(
            self.labels.get(value) or f"label {value}"
        )


INFERENCE_CONFIGS = ("inference.json", "inference.yaml", "inference.yml")


def inference_config(root: Path) -> Path | None:
    """The bundle's inference config: ``configs/inference.json`` or, as some zoo bundles
    ship it, ``configs/inference.yaml``."""
    return next(
        (root / "configs" / n for n in INFERENCE_CONFIGS if (root / "configs" / n).is_file()), None
    )


def is_native(root: Path) -> bool:
    """A Radpipe-format bundle (the demo's): its inference.json names the windowing and
    threshold itself and has no ``preprocessing`` component."""
    try:
        config = json.loads((root / "configs" / "inference.json").read_text())
    except (OSError, ValueError):  # a zoo bundle's YAML config is never Radpipe's format
        return False
    return "preprocessing" not in config and {"intensity_range", "threshold"} <= set(config)


def load_model(path: str | Path, device: torch.device) -> Bundle | ZooBundle:
    """Either kind of bundle, after its manifest (if recorded) is checked."""
    root = Path(path)
    check_integrity(root)
    if is_native(root):
        return load_bundle(root, device)
    return load_zoo_bundle(root, device)


def _channel_def(meta: Mapping[str, Any]) -> dict[int, str]:
    outputs = (meta.get("network_data_format") or {}).get("outputs") or {}
    pred: dict[str, Any] = outputs.get("pred") or next(iter(outputs.values()), {})
    channels = (pred or {}).get("channel_def") or {}
    return {int(k): str(v) for k, v in channels.items() if str(k).isdigit()}


def _load_weights(network: torch.nn.Module, weights: Path, device: torch.device) -> None:
    state = torch.load(weights, map_location=device, weights_only=True)
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]  # a CheckpointSaver checkpoint: {"model": state_dict, ...}
    network.load_state_dict(state)


def load_zoo_bundle(path: str | Path, device: torch.device) -> ZooBundle:
    """Instantiate a zoo bundle's inference components; ~seconds for zoo-sized networks.

    Raises
    ------
    BundleError: a required file or component is missing, or building it failed.
    """
    root = Path(path).resolve()
    config = inference_config(root)
    if not (root / "configs" / "metadata.json").is_file() or config is None:
        raise BundleError(
            f"bundle {root} is incomplete: it needs configs/metadata.json and "
            "configs/inference.json (or inference.yaml)"
        )
    weights = next((root / w for w in WEIGHTS if (root / w).is_file()), None)
    if weights is None:
        raise BundleError(f"bundle {root} has no weights: models/model.pt or models/model.ts")
    sidecar = Sidecar.read(root)
    parser = ConfigParser()
    parser.read_meta(str(root / "configs" / "metadata.json"))
    parser.read_config(str(config))
    missing = [k for k in ("preprocessing", "inferer", "postprocessing") if k not in parser]
    if weights.suffix == ".pt" and "network_def" not in parser:
        missing.insert(0, "network_def")
    if missing:
        raise BundleError(f"bundle {root}: configs/{config.name} lacks {', '.join(missing)}")
    parser["_radpipe_root_"] = str(root)
    _io_overrides(parser, device)
    meta = parser.get("_meta_", {}) or {}
    with _lock, _no_downloads(root), _bundle_scripts(root):
        try:
            if weights.suffix == ".pt":
                network = parser.get_parsed_content("network_def", instantiate=True)
                _load_weights(network, weights, device)
            else:
                network = torch.jit.load(str(weights), map_location=device)
                parser["network_def"] = network
            network.to(device).eval()
            evaluator = parser.get("evaluator")
            required = evaluator.get("_requires_") if isinstance(evaluator, dict) else None
            for ref in [required] if isinstance(required, str) else required or []:
                if isinstance(ref, str) and ref.startswith("@"):
                    parser.get_parsed_content(ref[1:])
            preprocessing = parser.get_parsed_content("preprocessing")
            inferer = parser.get_parsed_content("inferer")
            postprocessing = parser.get_parsed_content("postprocessing")
        except Exception as exc:
            cause: BaseException | None = exc  # ours (a refused download), however wrapped
            while cause is not None:
                if isinstance(cause, BundleError):
                    raise BundleError(str(cause)) from None
                cause = cause.__cause__ or cause.__context__
            raise BundleError(
                f"bundle {root}: building its inference components failed "
                f"({type(exc).__name__}: {exc}); run it with `python -m monai.bundle run "
                f"--config_file configs/{config.name}` to see the bundle's own error"
            ) from None
    collate = str(parser.get("dataloader#collate_fn", ""))
    post = parser.get("postprocessing#transforms") or []
    box_mode, box_world = "xyzxyz", None
    for item in post:
        if _target_name(item) == "ConvertBoxModed":
            box_mode = str(item.get("dst_mode", box_mode))
        if _target_name(item) == "AffineBoxToWorldCoordinated":
            box_world = "LPS" if item.get("affine_lps_to_ras") else "RAS"
    image_key = parser.get("image_key", "image")
    return ZooBundle(
        name=str(meta.get("name", root.name)),
        version=str(meta.get("version", "0")),
        sha256=file_sha256(weights),
        path=root,
        device=device,
        network=network,
        preprocessing=preprocessing,
        inferer=inferer,
        postprocessing=postprocessing,
        sidecar=sidecar,
        labels=_channel_def(meta),
        image_key=image_key if isinstance(image_key, str) else "image",
        list_input="no_collation" in collate or "detector" in parser,
        box_mode=box_mode,
        box_world=box_world,
    )


def bundle_info(root: Path) -> dict[str, Any]:
    """What ``radpipe models list`` shows, read without building the network."""
    meta = json.loads((root / "configs" / "metadata.json").read_text())
    sidecar = Sidecar.read(root)
    kind = sidecar.kind
    if is_native(root):
        fmt, kind = "radpipe", kind or "segmentation"
    else:
        fmt = "monai-zoo"
        path = inference_config(root)
        config = ConfigParser.load_config_file(str(path)) if path else {}
        if kind is None and "detector" in config:
            kind = "detection"
    state = verify_manifest(root)
    return {
        "name": str(meta.get("name", root.name)),
        "version": str(meta.get("version", "0")),
        "format": fmt,
        "kind": kind or "from its output",
        "path": str(root),
        "files": compute_manifest(root),
        "integrity": "unrecorded" if state is None else ("ok" if not state else "; ".join(state)),
        "routing": list(meta.get("radpipe_routing") or sidecar.routing),
    }


# --- running -----------------------------------------------------------------------------


@dataclass
class ZooFinding(Finding):
    """A finding of a zoo bundle: named from its label, with optional codes and box."""

    name: str = ""
    kind: str = "segmentation"
    concept: str = ""  # the label's name (``name`` numbers detections: "nodule 2")
    category: tuple[str, str, str] | None = None
    property_type: tuple[str, str, str] | None = None
    box_mm: Vec3 | None = None  # detection: extent along patient x, y, z

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        out["name"] = self.name
        out["kind"] = self.kind
        if self.box_mm is not None:
            out["box_mm"] = [round(v, 2) for v in self.box_mm]
        return out


@dataclass
class Evaluation:
    """One class of a classification bundle and its score."""

    label: int
    name: str
    probability: float
    selected: bool

    def to_dict(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "name": self.name,
            "probability": round(self.probability, 4),
            "selected": self.selected,
        }


@dataclass
class ZooResult:
    kind: str
    findings: list[Finding]
    label_map: np.ndarray
    evaluations: list[Evaluation]
    risk: Risk


PRIVATE_SCHEME = "99RADPIPE"  # PS3.16 8.2: a private coding scheme designator starts with 99


def private_code(meaning: str) -> Code:
    """A code for a label the bundle names but codes nowhere (its sidecar may give SCT codes):
    value ``L`` + 15 hex digits of the name's SHA-256 (SH, 16 characters at most)."""
    digest = hashlib.sha256(meaning.encode()).hexdigest()[:15]
    return Code(f"L{digest}", PRIVATE_SCHEME, meaning[:64])


def finding_label(finding: Finding, number: int) -> str:
    """The name a finding goes by in SEG, SR and key images ("Nodule n" for the demo's)."""
    return (getattr(finding, "name", "") or f"Nodule {number}")[:64]


def finding_codes(finding: Finding) -> tuple[Code, Code, list[Code]]:
    """Category, type and finding sites of a finding (PS3.16 CID 7150/7151 or the sidecar's;
    the demo's nodules: Morphologically Abnormal Structure, Nodule, in the Lung)."""
    if not isinstance(finding, ZooFinding):
        return CATEGORY, NODULE, [LUNG]
    default = ANATOMY if finding.kind == "segmentation" else CATEGORY
    category = Code(*reversed_code(finding.category)) if finding.category else default
    kind = (
        Code(*reversed_code(finding.property_type))
        if finding.property_type
        else private_code(finding.concept or finding.name or "finding")
    )
    return category, kind, []


def reversed_code(code: tuple[str, str, str]) -> tuple[str, str, str]:
    """(scheme, value, meaning) as the sidecar writes it, to pydicom's (value, scheme, meaning)."""
    return code[1], code[0], code[2]


def _as_numpy(value: Any) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        value = value.detach().float().cpu()
        if isinstance(value, MetaTensor):
            value = value.as_tensor()
        return np.asarray(value.numpy())
    return np.asarray(value)


def run_zoo(volume: Volume, bundle: ZooBundle, *, threads: int | None = None) -> ZooResult:
    """Pre-process, infer and post-process one volume with the bundle's own components.

    Expected time: the bundle's (its inferer dominates); memory: a few copies of the volume.
    """
    if threads:
        torch.set_num_threads(threads)
    use_amp = bundle.device.type == "cuda"
    with torch.no_grad():
        data = bundle.preprocessing({bundle.image_key: volume})
        image = data[bundle.image_key]
        with torch.autocast("cuda", enabled=use_amp):
            if bundle.list_input:
                raw = bundle.inferer([image.to(bundle.device)], bundle.network)
            else:
                raw = bundle.inferer(image[None].to(bundle.device), bundle.network)
        if isinstance(raw, list | tuple) and raw and isinstance(raw[0], dict):
            item = {**data, **raw[0]}
        else:
            item = {**data, bundle.pred_key: (raw[0] if isinstance(raw, torch.Tensor) else raw)}
        out = bundle.postprocessing(item)
    if isinstance(out, list):  # a transform that splits (e.g. decollation) gives one item
        out = out[0]
    kind = bundle.sidecar.kind
    if kind is None:
        if "box" in out or (isinstance(raw, list | tuple) and raw and isinstance(raw[0], dict)):
            kind = "detection"
        else:
            pred = out[bundle.pred_key]
            kind = "segmentation" if np.ndim(pred) >= 3 else "classification"
    if kind == "detection":
        findings, labels = _detections(out, image, volume, bundle)
    elif kind == "segmentation":
        findings, labels = _segments(out[bundle.pred_key], data, volume, bundle)
    else:
        evaluations = _classes(out[bundle.pred_key], raw, bundle)
        risk = _risk(bundle, [], evaluations)
        empty = np.zeros(volume.array.shape, dtype=np.uint8)
        return ZooResult("classification", [], empty, evaluations, risk)
    return ZooResult(kind, findings, labels, [], _risk(bundle, findings, []))


def _segments(
    pred: Any, data: Mapping[Hashable, Any], volume: Volume, bundle: ZooBundle
) -> tuple[list[Finding], np.ndarray]:
    """A label map on the input grid, one finding per label present (label 0 = background)."""
    if isinstance(pred, MetaTensor) and tuple(pred.shape[-3:]) != volume.array.shape[::-1]:
        # The postprocessing did not invert the resampling: resample onto the input grid.
        from monai.transforms import ResampleToMatch

        reference = volume_to_metatensor(volume)[None]
        pred = ResampleToMatch(mode="nearest")(pred, img_dst=reference)
    array = _as_numpy(pred)
    if array.ndim == 4:
        array = array[0] if array.shape[0] == 1 else np.argmax(array, axis=0)
    if array.shape != volume.array.shape[::-1]:
        raise BundleError(
            f"bundle {bundle.name}: its postprocessing gave a label map of shape {array.shape}, "
            f"not the input's {volume.array.shape[::-1]} (x, y, z); add an Invertd of "
            "preprocessing to its postprocessing"
        )
    if array.dtype.kind == "f" and not np.array_equal(array, np.rint(array)):
        array = array >= 0.5  # probabilities of a single label
    labels_xyz = np.rint(array).astype(np.int32)
    labels = np.ascontiguousarray(labels_xyz.transpose(2, 1, 0))
    voxel_mm3 = float(np.prod(volume.spacing))
    findings: list[Finding] = []
    out = np.zeros(labels.shape, dtype=np.uint8)
    for value in sorted(int(v) for v in np.unique(labels) if v > 0):
        mask = labels == value
        count = int(mask.sum())
        spec = bundle.label_spec(value)
        number = len(findings) + 1
        out[mask] = min(number, 255)
        center = tuple(float(c.mean()) for c in np.nonzero(mask))
        zyx: Vec3 = (center[0], center[1], center[2])
        volume_mm3 = count * voxel_mm3
        k = int(np.clip(round(zyx[0]), 0, len(volume.sop_instance_uids) - 1))
        findings.append(
            ZooFinding(
                label=number,
                diameter_mm=(6.0 * volume_mm3 / math.pi) ** (1.0 / 3.0),
                volume_mm3=volume_mm3,
                center_voxel_zyx=zyx,
                center_patient_xyz=volume.index_to_patient(zyx),
                probability=1.0,
                center_sop_instance_uid=volume.sop_instance_uids[k],
                mean_hu=float(volume.array[mask].mean()),
                name=spec.name,
                kind="segmentation",
                concept=spec.name,
                category=spec.category,
                property_type=spec.type,
            )
        )
    return findings, out


def _patient_to_index(volume: Volume, xyz: np.ndarray) -> np.ndarray:
    """Fractional (z, y, x) indices of patient LPS points (n, 3)."""
    affine = volume_affine_lps(volume)
    ijk = (np.linalg.inv(affine) @ np.c_[xyz, np.ones(len(xyz))].T)[:3].T
    return ijk[:, ::-1]


def _detections(
    out: Mapping[Hashable, Any], image: Any, volume: Volume, bundle: ZooBundle
) -> tuple[list[Finding], np.ndarray]:
    """Boxes at or above the score threshold, best first, as findings with an ellipsoid
    (inscribed in the box) on the input grid."""
    from monai.data.box_utils import convert_box_mode

    boxes = _as_numpy(out.get("box", np.zeros((0, 6)))).reshape(-1, 6)
    scores = _as_numpy(out.get("label_scores", out.get("scores", np.ones(len(boxes))))).reshape(-1)
    classes = _as_numpy(out.get("label", np.zeros(len(boxes)))).reshape(-1).astype(int)
    cccwhd = _as_numpy(
        convert_box_mode(
            torch.as_tensor(boxes, dtype=torch.float64),
            src_mode=bundle.box_mode,
            dst_mode="cccwhd",
        )
    ).astype(np.float64)
    centers, sizes = cccwhd[:, :3], cccwhd[:, 3:]
    if bundle.box_world is None:  # voxel coordinates of the pre-processed image: to RAS mm
        affine = np.asarray(getattr(image, "affine", np.eye(4)), dtype=float)
        centers = (affine @ np.c_[centers, np.ones(len(centers))].T)[:3].T
        sizes = sizes * np.linalg.norm(affine[:3, :3], axis=0)
        world = "RAS"
    else:
        world = bundle.box_world
    if world == "RAS":
        centers = centers * np.array([-1.0, -1.0, 1.0])
    order = [i for i in np.argsort(-scores) if scores[i] >= bundle.sidecar.score_threshold]
    order = order[: bundle.sidecar.max_findings]
    labels = np.zeros(volume.array.shape, dtype=np.uint8)
    findings: list[Finding] = []
    for number, i in enumerate(order, start=1):
        w, h, d = (float(v) for v in np.abs(sizes[i]))
        center = centers[i]
        inside = _ellipsoid(volume, center, (w / 2.0, h / 2.0, d / 2.0))
        labels[inside & (labels == 0)] = min(number, 255)
        zyx_arr = _patient_to_index(volume, center[None])[0]
        zyx: Vec3 = (float(zyx_arr[0]), float(zyx_arr[1]), float(zyx_arr[2]))
        k = int(np.clip(round(zyx[0]), 0, len(volume.sop_instance_uids) - 1))
        spec = bundle.label_spec(int(classes[i]))  # the detector's class, from 0
        findings.append(
            ZooFinding(
                label=number,
                diameter_mm=(w + h + d) / 3.0,
                volume_mm3=math.pi / 6.0 * w * h * d,
                center_voxel_zyx=zyx,
                center_patient_xyz=(float(center[0]), float(center[1]), float(center[2])),
                probability=float(scores[i]),
                center_sop_instance_uid=volume.sop_instance_uids[k],
                mean_hu=float(volume.array[inside].mean()) if inside.any() else 0.0,
                name=f"{spec.name} {number}",
                kind="detection",
                concept=spec.name,
                category=spec.category,
                property_type=spec.type,
                box_mm=(w, h, d),
            )
        )
    return findings, labels


def _ellipsoid(volume: Volume, center: np.ndarray, radii: tuple[float, float, float]) -> np.ndarray:
    """Input-grid mask of the axis-aligned (patient x, y, z) ellipsoid; only the voxels of its
    bounding box are visited."""
    mask = np.zeros(volume.array.shape, dtype=bool)
    c = _patient_to_index(volume, center[None])[0]
    axes = np.asarray(volume.axes, dtype=float)  # (array axis, patient xyz)
    reach = np.abs(axes) @ np.asarray(radii) / np.asarray(volume.spacing)
    lo = np.clip(np.floor(c - reach), 0, np.asarray(mask.shape) - 1).astype(int)
    hi = np.clip(np.ceil(c + reach) + 1, 0, np.asarray(mask.shape)).astype(int)
    if np.any(hi <= lo):
        return mask
    index = np.stack(
        np.meshgrid(*(np.arange(a, b) for a, b in zip(lo, hi, strict=True)), indexing="ij"), -1
    ).astype(float)
    offset = (index - c) * np.asarray(volume.spacing)  # mm along the array axes
    patient = offset @ axes  # mm along patient x, y, z
    inside = ((patient / np.maximum(np.asarray(radii), 1e-6)) ** 2).sum(-1) <= 1.0
    mask[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]] = inside
    return mask


def _classes(pred: Any, raw: Any, bundle: ZooBundle) -> list[Evaluation]:
    """Class probabilities: the postprocessed vector when it is one, else the softmax of the
    network's output with the postprocessed class index selected."""
    values = _as_numpy(pred).reshape(-1)
    logits = _as_numpy(raw).reshape(-1)
    if values.size > 1 and values.size == logits.size and np.all((values >= 0) & (values <= 1)):
        probabilities = values
        chosen = int(np.argmax(values))
    else:
        shifted = np.exp(logits - logits.max())
        probabilities = shifted / shifted.sum()
        chosen = int(values[0]) if values.size == 1 else int(np.argmax(probabilities))
    return [
        Evaluation(i, bundle.label_spec(i).name, float(p), i == chosen)
        for i, p in enumerate(probabilities)
    ]


def _risk(bundle: ZooBundle, findings: list[Finding], evaluations: list[Evaluation]) -> Risk:
    rule = bundle.sidecar.risk
    if rule == "nodule_size":
        return assess_risk(findings)
    if rule == "max_score":
        scores = [f.probability for f in findings] + [
            e.probability for e in evaluations if e.label > 0
        ]
        score = max(scores, default=0.0)
        category = "high" if score >= 0.5 else ("low" if scores else "none")
        return Risk(score, category, f"highest score {score:.3f} ({bundle.name})", {})
    return Risk(0.0, "none", f"bundle {bundle.name} declares no risk rule", {})
