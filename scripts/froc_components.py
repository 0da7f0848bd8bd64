"""Every candidate of the demo bundle on held-out studies, for development looks on spent seeds.

A development look asks what another post-processing limit would have done on held-out
studies that a registered run has already spent (docs/benchmarks.md records each look); it is
never a decision, and its seeds are never the ones a registered run will use.

`dump` runs the bundle's first stage once per study (the studies of `bench/froc.py`) and keeps
every component that its size, density, diameter and elongation filters keep, with the
contact filter, the aerated-lung limit, the slice-thickness limit and `min_score` off and the
candidate classifier scoring but not dropping, together with the measures those use. `look`
applies limits to a dump offline and scores the result with `radpipe.inference.froc.scores`,
as `bench/froc.py` does (the bundle's own limits reproduce its figures on those studies).
`dump --family train` draws the same studies from the training family's settings instead, to
choose an operating point where a model may be tuned (with seeds no training run used).

    .venv/bin/python scripts/froc_components.py dump --seed 36000 [--scans 72] \\
        [--bundle DIR | --rev REV] [--family train] --out FILE
    .venv/bin/python scripts/froc_components.py look FILE [--ratio 1.0 1.25 1.5] \\
        [--classifier 0.05] [--no-contact] [--air-exempt-contact 0.1] \\
        [--contact-exempt-score 0.8] [--air-exempt-score 0.8] [--rank declared|probability|both]
        [--min-score 0.2 0.4]

About 10 s a study on one core (72 studies: ~12 minutes); `look` takes a second.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import shutil
import sys
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from froc import _anchor_from_git, held_out_study_args  # noqa: E402

from radpipe.inference.bundle import default_bundle_path, load_bundle  # noqa: E402
from radpipe.inference.findings import (  # noqa: E402
    Finding,
    ShapeFilter,
    segment_findings,
    shape_filter,
)
from radpipe.inference.froc import Case, Scores, scores  # noqa: E402
from radpipe.inference.model import pre_process, predict  # noqa: E402
from radpipe.inference.volume import Volume  # noqa: E402
from radpipe.phantoms import FAMILIES, HELD_OUT, Family, make_study  # noqa: E402

#: Limits `dump` turns off so that `look` can try others.
RELAXED = (
    "max_contact_fraction",
    "min_diameter_slice_thickness_ratio",
    "min_air_fraction",
    "min_score",
)


@dataclass(frozen=True)
class TrueNodule:
    center_mm: tuple[float, float, float]
    diameter_mm: float
    kind: str
    site: str


@dataclass(frozen=True)
class Limits:
    """What `look` applies: None turns a limit off."""

    classifier: float | None
    max_contact_fraction: float | None
    wall_ratio: float | None
    ratio: float | None
    min_air_fraction: float | None = None
    air_exempt_contact: float | None = None
    contact_exempt_score: float | None = None
    rank_with_candidate_score: bool = False
    min_score: float | None = None
    air_exempt_score: float | None = None

    def score(self, c: dict[str, Any]) -> float | None:
        """The dumped component's ranking score under these rules (`Finding.score`)."""
        if not self.rank_with_candidate_score or c["candidate_score"] is None:
            return None
        return float(c["probability"]) * float(c["candidate_score"])

    def keep(self, c: dict[str, Any], thickness: float) -> bool:
        """The bundle's own rules (`ShapeFilter`, the classifier's threshold) on one dumped
        component."""
        if self.classifier is not None and (c["candidate_score"] or 0.0) < self.classifier:
            return False
        if self.min_score is not None:
            ranked = self.score(c)
            if (float(c["probability"]) if ranked is None else ranked) < self.min_score:
                return False
        rules = ShapeFilter(
            max_contact_fraction=self.max_contact_fraction,
            wall_ratio=self.wall_ratio,
            min_air_fraction=self.min_air_fraction,
            min_diameter_slice_thickness_ratio=self.ratio,
            air_exempt_contact=self.air_exempt_contact,
            contact_exempt_score=self.contact_exempt_score,
            air_exempt_score=self.air_exempt_score,
        )
        return (
            c["diameter_mm"] >= rules.smallest_diameter_mm(thickness)
            and rules.keeps_air(c["air"], c["contact"], c["candidate_score"])
            and rules.keeps_contact(c["contact"], c["contact_far"], c["candidate_score"])
        )


def dump(seed: int, scans: int, bundle_dir: Path, out: Path, family: Family = HELD_OUT) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "bundle"
        shutil.copytree(bundle_dir, root)
        config_path = root / "configs" / "inference.json"
        config = json.loads(config_path.read_text())
        declared = shape_filter(load_bundle(bundle_dir, "cpu"))
        for key in RELAXED:
            config.pop(key, None)
        config_path.write_text(json.dumps(config))
        bundle = load_bundle(root, "cpu")
        classifier = bundle.candidates
        if classifier is not None:
            bundle = dataclasses.replace(
                bundle, candidates=dataclasses.replace(classifier, threshold=0.0)
            )
        studies = []
        started = time.perf_counter()
        for i in range(scans):
            study = make_study(seed + i, family, **held_out_study_args(seed + i))  # type: ignore[arg-type]
            volume = Volume(study.volume.astype(np.float32), study.spacing, [])
            image = pre_process(volume, bundle)
            findings, _ = segment_findings(predict(image, bundle), volume, bundle, image)
            studies.append(
                {
                    "seed": seed + i,
                    "spacing": list(study.spacing),
                    "thickness_mm": volume.thickness_mm,
                    "nodules": [dataclasses.asdict(_nodule(n)) for n in study.nodules],
                    "components": [dataclasses.asdict(f) for f in findings],
                }
            )
            print(
                f"  study {i + 1}/{scans} seed {seed + i}: {len(findings)} components "
                f"({time.perf_counter() - started:.0f} s)",
                flush=True,
            )
    out.write_text(
        json.dumps(
            {
                "bundle": {"name": bundle.name, "version": bundle.version},
                "family": family.name,
                "declared": {
                    "classifier": None if classifier is None else classifier.threshold,
                    "max_contact_fraction": declared.max_contact_fraction,
                    "wall_ratio": declared.wall_ratio,
                    "ratio": declared.min_diameter_slice_thickness_ratio,
                    "min_air_fraction": declared.min_air_fraction,
                    "air_exempt_contact": declared.air_exempt_contact,
                    "contact_exempt_score": declared.contact_exempt_score,
                    "air_exempt_score": declared.air_exempt_score,
                    "rank_with_candidate_score": declared.rank_with_candidate_score,
                    "min_score": declared.min_score,
                },
                "studies": studies,
            }
        )
    )


def _nodule(n: Any) -> TrueNodule:
    centre = tuple(float(v) for v in n.center_mm)
    return TrueNodule((centre[0], centre[1], centre[2]), float(n.diameter_mm), n.kind, n.site)


def evaluate(data: dict[str, Any], limits: Limits) -> Scores:
    """The dump's studies with `limits` applied, scored as `bench/froc.py` scores them."""
    cases = []
    for s in data["studies"]:
        findings = [
            Finding(
                **{
                    **c,
                    "center_voxel_zyx": tuple(c["center_voxel_zyx"]),
                    "center_patient_xyz": tuple(c["center_patient_xyz"]),
                    "score": limits.score(c),
                }
            )
            for c in s["components"]
            if limits.keep(c, s["thickness_mm"])
        ]
        nodules = [
            TrueNodule(tuple(n["center_mm"]), n["diameter_mm"], n["kind"], n["site"])  # type: ignore[arg-type]
            for n in s["nodules"]
        ]
        cases.append(Case(nodules, findings, tuple(s["spacing"])))  # type: ignore[arg-type]
    return scores(cases)


def look(
    data: dict[str, Any],
    ratios: Iterable[float | None],
    classifier: float | None,
    contact: bool,
    exemptions: dict[str, float | bool] | None = None,
    min_scores: Iterable[float | None] = (None,),
) -> list[str]:
    declared = {**data["declared"], **(exemptions or {})}
    lines = [
        f"{data['bundle']['name']} {data['bundle']['version']}, {len(data['studies'])} studies "
        f"(seeds {data['studies'][0]['seed']}..{data['studies'][-1]['seed']}); classifier "
        f"{classifier}, contact filter {'on' if contact else 'off'}, exemptions: air below "
        f"contact {declared.get('air_exempt_contact')}, contact from score "
        f"{declared.get('contact_exempt_score')}, air from score "
        f"{declared.get('air_exempt_score')}; ranked by "
        f"{'both stages' if declared.get('rank_with_candidate_score') else 'the first stage'}",
        "| slice-thickness ratio | min_score | FP/scan | FP/clean >= 8 mm | S >= 8 mm | "
        "S >= 8 mm at <= 0.1 FP/scan | CPM |",
        "|---|---|---|---|---|---|---|",
    ]
    for ratio, floor in itertools.product(ratios, min_scores):
        s = evaluate(
            data,
            Limits(
                classifier=classifier,
                max_contact_fraction=declared["max_contact_fraction"] if contact else None,
                wall_ratio=declared["wall_ratio"],
                ratio=ratio,
                min_air_fraction=declared.get("min_air_fraction"),
                air_exempt_contact=declared.get("air_exempt_contact"),
                contact_exempt_score=declared.get("contact_exempt_score"),
                air_exempt_score=declared.get("air_exempt_score"),
                rank_with_candidate_score=bool(declared.get("rank_with_candidate_score")),
                min_score=floor,
            ),
        )
        lines.append(
            f"| {'none' if ratio is None else f'{ratio:g}'} | "
            f"{'none' if floor is None else f'{floor:g}'} | {s.fp_per_scan:.2f} | "
            f"{s.fp_per_clean_scan_8mm:.2f} | {s.sensitivity_8mm:.3f} | "
            f"{s.sensitivity_8mm_at_0_1_fp:.3f} | {s.cpm:.3f} |"
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    d = sub.add_parser("dump", help="every candidate of a bundle on held-out studies")
    d.add_argument("--seed", type=int, required=True)
    d.add_argument("--scans", type=int, default=72)
    d.add_argument("--bundle", type=Path, default=None)
    d.add_argument("--rev", default=None, help="the bundle as committed in this revision")
    d.add_argument("--threads", type=int, default=1)
    d.add_argument("--out", type=Path, required=True)
    d.add_argument(
        "--family",
        choices=sorted(FAMILIES),
        default=HELD_OUT.name,
        help="draw the studies from this radpipe.phantoms family (train: to choose an operating "
        "point on the training family's settings, with seeds no training run used)",
    )
    lk = sub.add_parser("look", help="limits applied to a dump, scored as bench/froc.py")
    lk.add_argument("file", type=Path)
    lk.add_argument("--ratio", type=float, nargs="*", default=None)
    lk.add_argument("--classifier", type=float, default=None)
    lk.add_argument("--no-contact", action="store_true")
    lk.add_argument("--air-exempt-contact", type=float, default=None)
    lk.add_argument("--contact-exempt-score", type=float, default=None)
    lk.add_argument("--air-exempt-score", type=float, default=None)
    lk.add_argument(
        "--min-score",
        type=float,
        nargs="*",
        default=None,
        help="report only findings ranked at or above each of these (the bundle's min_score)",
    )
    lk.add_argument(
        "--rank",
        choices=("declared", "probability", "both"),
        default="declared",
        help="rank by the first stage's probability, by its product with the classifier's "
        "score, or as the bundle declares",
    )
    args = parser.parse_args(argv)
    if args.command == "dump":
        torch.set_num_threads(args.threads)
        family = FAMILIES[args.family]
        if args.rev:
            with tempfile.TemporaryDirectory() as tmp:
                dump(args.seed, args.scans, _anchor_from_git(args.rev, Path(tmp)), args.out, family)
        else:
            dump(args.seed, args.scans, args.bundle or default_bundle_path(), args.out, family)
        return 0
    data = json.loads(args.file.read_text())
    declared = data["declared"]
    ratios = [None, *args.ratio] if args.ratio else [declared["ratio"]]
    classifier = declared["classifier"] if args.classifier is None else args.classifier
    exemptions: dict[str, float | bool] = {
        k: v
        for k, v in (
            ("air_exempt_contact", args.air_exempt_contact),
            ("contact_exempt_score", args.contact_exempt_score),
            ("air_exempt_score", args.air_exempt_score),
        )
        if v is not None
    }
    if args.rank != "declared":
        exemptions["rank_with_candidate_score"] = args.rank == "both"
    floors = [None, *args.min_score] if args.min_score else [declared.get("min_score")]
    print("\n".join(look(data, ratios, classifier, not args.no_contact, exemptions, floors)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
