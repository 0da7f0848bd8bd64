"""Write a bundle's reference input distribution (``configs/reference_stats.json``).

    python scripts/reference_stats.py [--out FILE] [--count N]

Model monitoring (docs/monitoring.md) compares the pixel spacing, slice thickness and HU
histogram of the studies a model analyses with those of the data it was trained on. For the
demo bundle the training data are the volumes of ``scripts/train_demo_bundle.py``: this script
draws the same ones (its ``_phantom`` x ``TRAIN_PHANTOMS`` and ``_train_study`` x
``TRAIN_STUDIES``, from its ``SEED``) and describes them
with the same function the inference stage uses (``radpipe.common.drift.input_stats``). Run it
again whenever the bundle is retrained on other data. For another bundle, describe its training
series the same way (``radpipe.common.drift.reference_from``).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from collections.abc import Iterator
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
        "--count", type=int, default=None, help="volumes of each kind (default: the training set)"
    )
    args = parser.parse_args(argv)
    train = _training()
    seed = int(train.SEED)  # type: ignore[attr-defined]
    phantoms = args.count or int(train.TRAIN_PHANTOMS)  # type: ignore[attr-defined]
    studies = args.count or int(train.TRAIN_STUDIES)  # type: ignore[attr-defined]
    count = phantoms + studies

    def volumes() -> Iterator[tuple[np.ndarray, tuple[float, ...], None]]:
        for i in range(count):  # one at a time: a 512 x 512 x 300 study is 300 MB
            ph = (
                train._phantom(seed + i, low=3.0)  # type: ignore[attr-defined]
                if i < phantoms
                else train._train_study(seed + 300_000 + i - phantoms)  # type: ignore[attr-defined]
            )
            yield np.asarray(ph.volume, dtype=np.float32), tuple(ph.spacing), None

    reference = reference_from(
        volumes(),
        source=(
            f"scripts/train_demo_bundle.py training volumes (seed {seed}: {phantoms} "
            f"radpipe.demo phantoms, {studies} radpipe.phantoms.TRAIN studies)"
        ),
    )
    args.out.write_text(json.dumps(reference, indent=2) + "\n")
    print(f"wrote {args.out} from {count} training volumes")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
