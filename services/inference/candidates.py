"""Stage 4b, candidate classification: a second network scores each nodule candidate.

A segmentation network that finds nodules well also marks round-looking pieces of other
things (a vessel cut obliquely, a wall smeared over a thick slice). As in the LUNA16
systems, a small classifier then looks at a cube of the image around each candidate's centre
and says how much it looks like a nodule. A bundle declares it in `configs/inference.json`:

    "candidate_classifier": {
        "network_def": {"_target_": "monai.networks.nets.Classifier", ...},
        "weights": "models/candidates.pt",
        "patch_size": 32,
        "threshold": 0.2,
        "test_time_flips": false
    }

The cube is cut from the pre-processed image (bundle grid and window), so the classifier sees
what the segmentation network saw. Candidates scoring below `threshold` are dropped (and a
bundle may exempt those scoring at least `contact_exempt_score` or `air_exempt_score` from
its contact or aerated-lung limit: `findings.ShapeFilter`); the score is kept on the finding
(`candidate_score`), whose `probability` stays the segmentation network's; a bundle may rank
by both (`rank_with_candidate_score`).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.bundle import ConfigParser

from radpipe.common.digest import file_sha256

__all__ = ["CONFIG_KEY", "CandidateClassifier", "crop", "load_candidate_classifier", "score"]

CONFIG_KEY = "candidate_classifier"


@dataclass
class CandidateClassifier:
    """A loaded candidate classifier (`network` in eval mode, one logit per cube)."""

    network: torch.nn.Module
    patch_size: int
    threshold: float
    weights: Path
    sha256: str = ""
    # Score each cube as it is and flipped along every combination of its three axes (eight
    # passes), and average: a nodule's score then does not hang on its orientation.
    test_time_flips: bool = False


def load_candidate_classifier(
    parser: ConfigParser, root: Path, device: torch.device
) -> CandidateClassifier | None:
    """The bundle's `candidate_classifier`, or None where its config declares none.

    Raises
    ------
    ValueError: the section lacks a key, or its weights file is missing.
    """
    if CONFIG_KEY not in parser:
        return None
    section: dict[str, Any] = parser[CONFIG_KEY]
    missing = [k for k in ("network_def", "weights", "patch_size", "threshold") if k not in section]
    if missing:
        raise ValueError(
            f"bundle {root}: configs/inference.json {CONFIG_KEY} lacks {', '.join(missing)}"
        )
    weights = root / str(section["weights"])
    if not weights.is_file():
        raise ValueError(
            f"bundle {root}: {CONFIG_KEY} weights {section['weights']} are missing; "
            "copy the whole bundle folder"
        )
    flips = section.get("test_time_flips", False)
    if not isinstance(flips, bool):
        raise ValueError(
            f"bundle {root}: {CONFIG_KEY} test_time_flips must be true or false, got {flips!r}"
        )
    network = parser.get_parsed_content(f"{CONFIG_KEY}#network_def", instantiate=True)
    network.load_state_dict(torch.load(weights, map_location=device, weights_only=True))
    network.to(device).eval()
    return CandidateClassifier(
        network=network,
        patch_size=int(section["patch_size"]),
        threshold=float(section["threshold"]),
        weights=weights,
        sha256=file_sha256(weights),
        test_time_flips=flips,
    )


def crop(image: np.ndarray, centre: np.ndarray, size: int) -> np.ndarray:
    """The `size`^3 cube of `image` (z, y, x) centred on voxel `centre`; zero (the bottom of
    the window: air) outside the image."""
    lo = np.round(np.asarray(centre, dtype=np.float64)).astype(int) - size // 2
    out = np.zeros((size, size, size), dtype=np.float32)
    src = tuple(slice(max(a, 0), min(a + size, n)) for a, n in zip(lo, image.shape, strict=True))
    dst = tuple(slice(s.start - a, s.stop - a) for s, a in zip(src, lo, strict=True))
    if all(s.stop > s.start for s in src):
        out[dst] = image[src]
    return out


def score(
    classifier: CandidateClassifier,
    image: np.ndarray,
    centres: list[np.ndarray],
    device: torch.device,
) -> np.ndarray:
    """Sigmoid score per candidate centre (bundle-grid voxels), the mean over the eight flips
    of each cube where the classifier declares `test_time_flips`. ~10 ms per candidate and
    pass on CPU."""
    if not centres:
        return np.zeros(0, dtype=np.float32)
    cubes = np.stack([crop(image, c, classifier.patch_size) for c in centres])[:, None]
    batch = torch.from_numpy(cubes).to(device)
    flips = (
        [dims for n in range(4) for dims in itertools.combinations((2, 3, 4), n)]
        if classifier.test_time_flips
        else [()]
    )
    with torch.inference_mode():
        scores = [
            torch.sigmoid(
                torch.as_tensor(classifier.network(batch.flip(dims) if dims else batch)).float()
            ).reshape(-1)
            for dims in flips
        ]
    return torch.stack(scores).mean(dim=0).cpu().numpy()
