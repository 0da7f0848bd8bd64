"""MONAI bundles (model-zoo layout: `configs/` + `models/`) loaded for inference.

A bundle is read with `monai.bundle.ConfigParser`; `network_def` is instantiated from
`configs/inference.json` and the weights come from `models/model.pt` (a state_dict). Nothing
is downloaded: a bundle is a folder on disk.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from monai.bundle import ConfigParser

from radpipe.common.digest import file_sha256

from .candidates import CandidateClassifier, load_candidate_classifier
from .scope import parse_validated_input

__all__ = ["REQUIRED_FILES", "Bundle", "default_bundle_path", "load_bundle", "select_device"]

REQUIRED_FILES = ("configs/metadata.json", "configs/inference.json", "models/model.pt")


@dataclass
class Bundle:
    """A loaded model with the pre/post-processing parameters its config declares.

    `spacing` and `roi_size` are in array axis order (z, y, x); `intensity_range` is the HU
    window mapped to [0, 1]. Post-processing drops components under `min_volume_mm3` and,
    when set, those whose mean HU exceeds `max_mean_hu` (bone, calcified = benign).
    """

    name: str
    version: str
    sha256: str
    path: Path
    network: torch.nn.Module
    spacing: tuple[float, float, float]
    roi_size: tuple[int, int, int]
    intensity_range: tuple[float, float]
    threshold: float
    device: torch.device
    min_volume_mm3: float = 0.0
    max_mean_hu: float | None = None
    overlap: float = 0.25
    sw_batch_size: int = 1
    # Second stage: a classifier of candidate cubes (`candidates.py`); None: the segmentation
    # network's components are the findings.
    candidates: CandidateClassifier | None = None
    # The acquisitions its validation covers (`scope.py`); empty: none declared.
    validated_input: dict[str, tuple[float, float]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Provenance for a result document (everything but the network)."""
        return (
            {
                "name": self.name,
                "version": self.version,
                "sha256": self.sha256,
                "path": str(self.path),
                "spacing": list(self.spacing),
                "roi_size": list(self.roi_size),
                "intensity_range": list(self.intensity_range),
                "threshold": self.threshold,
                "min_volume_mm3": self.min_volume_mm3,
                "max_mean_hu": self.max_mean_hu,
                "device": str(self.device),
            }
            | (
                {}
                if not self.validated_input
                else {"validated_input": {k: list(v) for k, v in self.validated_input.items()}}
            )
            | (
                {}
                if self.candidates is None
                else {
                    "candidate_classifier": {
                        "sha256": self.candidates.sha256,
                        "threshold": self.candidates.threshold,
                        "test_time_flips": self.candidates.test_time_flips,
                    }
                }
            )
        )


def default_bundle_path() -> Path:
    """The demo bundle shipped in this package (trained by scripts/train_demo_bundle.py)."""
    return Path(__file__).resolve().parent / "bundles" / "lung_nodule_demo"


def select_device(prefer: str = "auto") -> torch.device:
    """`auto`: CUDA when available, else CPU; `cpu` or `cuda` force one.

    Raises
    ------
    ValueError: `cuda` asked for where torch sees no GPU, or an unknown choice.
    """
    if prefer == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if prefer == "cpu":
        return torch.device("cpu")
    if prefer.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError(
                f"device {prefer!r} requested but torch.cuda.is_available() is False; "
                "install a CUDA build of torch or use 'auto' or 'cpu'"
            )
        return torch.device(prefer)
    raise ValueError(f"unknown device {prefer!r}; use 'auto', 'cpu' or 'cuda[:N]'")


def load_bundle(path: str | Path, device: torch.device | str | None = None) -> Bundle:
    """Read configs, build `network_def`, load the weights; the network is in eval mode.

    Expected time: ~0.1 s on CPU for the demo bundle (~2.5 MB weights).

    Raises
    ------
    ValueError: a required file is missing, the config lacks a required key, or a
    post-processing key (`findings.ShapeFilter`) has a value of the wrong type.
    """
    root = Path(path)
    for rel in REQUIRED_FILES:
        if not (root / rel).is_file():
            raise ValueError(
                f"bundle {root} is incomplete: {rel} is missing "
                f"(a bundle needs {', '.join(REQUIRED_FILES)})"
            )
    if device is None:
        dev = select_device()
    elif isinstance(device, str):
        dev = select_device(device)
    else:
        dev = device

    parser = ConfigParser()
    parser.read_meta(str(root / "configs" / "metadata.json"))
    parser.read_config(str(root / "configs" / "inference.json"))
    missing = [
        k
        for k in ("network_def", "spacing", "roi_size", "intensity_range", "threshold")
        if k not in parser
    ]
    if missing:
        raise ValueError(f"bundle {root}: configs/inference.json lacks {', '.join(missing)}")

    network = parser.get_parsed_content("network_def", instantiate=True)
    weights = root / "models" / "model.pt"
    state = torch.load(weights, map_location=dev, weights_only=True)
    network.load_state_dict(state)
    network.to(dev).eval()

    meta = parser.get("_meta_", {})
    spacing = [float(v) for v in parser["spacing"]]
    roi = [int(v) for v in parser["roi_size"]]
    low, high = (float(v) for v in parser["intensity_range"])
    max_hu = parser.get("max_mean_hu")
    bundle = Bundle(
        name=str(meta.get("name", root.name)),
        version=str(meta.get("version", "0")),
        sha256=file_sha256(weights),
        path=root,
        network=network,
        spacing=(spacing[0], spacing[1], spacing[2]),
        roi_size=(roi[0], roi[1], roi[2]),
        intensity_range=(low, high),
        threshold=float(parser["threshold"]),
        device=dev,
        min_volume_mm3=float(parser.get("min_volume_mm3", 0.0)),
        max_mean_hu=None if max_hu is None else float(max_hu),
        overlap=float(parser.get("overlap", 0.25)),
        sw_batch_size=int(parser.get("sw_batch_size", 1)),
        candidates=load_candidate_classifier(parser, root, dev),
        validated_input=parse_validated_input(
            parser.get("validated_input"), f"bundle {root}: configs/inference.json"
        ),
    )
    from .findings import post_processing  # findings imports this module

    post_processing(root)  # a malformed post-processing key is refused here, not at a study
    return bundle
