"""Write a bundle's reference input distribution (``configs/reference_stats.json``).

    python scripts/reference_stats.py [--out FILE] [--count N]

Model monitoring (docs/monitoring.md) compares the pixel spacing, slice thickness and HU
histogram of the studies a model analyses with those of the data it was trained on. For the
demo bundle the training data are the phantoms of ``scripts/train_demo_bundle.py``: this script
draws the same phantoms (its ``_phantom``, ``SEED`` and ``TRAIN_PHANTOMS``) and describes them
with the same function the inference stage uses (``radpipe.common.drift.input_stats``). Run it
again whenever the bundle is retrained on other data. For another bundle, describe its training
series the same way (``radpipe.common.drift.reference_from``).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from radpipe.common.drift import reference_from  # noqa: E402
from radpipe.inference.bundle import default_bundle_path  # noqa: E402


def _training() -> object:
    spec = importlib.util.spec_from_file_location(
        "train_demo_bundle", ROOT / "scripts" / "train_demo_bundle.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out", type=Path, default=default_bundle_path() / "configs" / "reference_stats.json"
    )
    parser.add_argument(
        "--count", type=int, default=None, help="phantoms (default: the training set)"
    )
    args = parser.parse_args(argv)
    train = _training()
    count = args.count or int(train.TRAIN_PHANTOMS)  # type: ignore[attr-defined]
    volumes = []
    for i in range(count):
        ph = train._phantom(int(train.SEED) + i, low=3.0)  # type: ignore[attr-defined]
        volumes.append((np.asarray(ph.volume, dtype=np.float32), tuple(ph.spacing), None))
    reference = reference_from(
        volumes,
        source=f"scripts/train_demo_bundle.py training phantoms (seed {train.SEED}, {count})",  # type: ignore[attr-defined]
    )
    args.out.write_text(json.dumps(reference, indent=2) + "\n")
    print(f"wrote {args.out} from {count} phantoms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
