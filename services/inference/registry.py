"""Which bundle analyses which series: a registry of MONAI bundles and their routing rules.

Bundles are folders (``configs/metadata.json``, ``configs/inference.json``,
``models/model.pt``): the ones shipped in ``services/inference/bundles`` and every bundle under
``RADPIPE_MODELS_DIR``, which wins on a name clash. Each bundle declares its routing rules in
its metadata under ``radpipe_routing``:

.. code-block:: json

    "radpipe_routing": [
        {"modality": ["CT"], "body_part": ["CHEST", "LUNG", ""],
         "sop_class": ["1.2.840.10008.5.1.4.1.1.2"],
         "series_description": "(?i)chest|thorax|lung|^$", "min_instances": 20}
    ]

A rule matches a series when every field it names matches (lists: membership, upper-cased;
``series_description``: a regular expression searched in the de-identified description). The
study's series are offered to the bundles in name order; the first bundle with a matching rule
wins, and among its matching series the largest is analysed.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from radpipe.common.errors import PipelineError

BUILTIN = Path(__file__).resolve().parent / "bundles"


@dataclass(frozen=True)
class Rule:
    modality: frozenset[str] | None = None
    body_part: frozenset[str] | None = None
    sop_class: frozenset[str] | None = None
    series_description: str | None = None
    min_instances: int = 1

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str) -> Rule:
        unknown = set(data) - {
            "modality",
            "body_part",
            "sop_class",
            "series_description",
            "min_instances",
        }
        if unknown:
            raise ValueError(f"{where}: unknown routing key(s) {', '.join(sorted(unknown))}")

        def members(key: str) -> frozenset[str] | None:
            value = data.get(key)
            if value is None:
                return None
            if not isinstance(value, list):
                raise ValueError(f"{where}: routing {key} must be a list")
            return frozenset(str(v).upper() if key != "sop_class" else str(v) for v in value)

        pattern = data.get("series_description")
        if pattern is not None:
            re.compile(pattern)
        return cls(
            modality=members("modality"),
            body_part=members("body_part"),
            sop_class=members("sop_class"),
            series_description=pattern,
            min_instances=int(data.get("min_instances", 1)),
        )

    def matches(self, series: dict[str, Any]) -> bool:
        def within(allowed: frozenset[str] | None, value: str, upper: bool = True) -> bool:
            return allowed is None or (value.upper() if upper else value) in allowed

        return (
            within(self.modality, str(series.get("modality") or ""))
            and within(self.body_part, str(series.get("body_part") or ""))
            and within(self.sop_class, str(series.get("sop_class_uid") or ""), upper=False)
            and (
                self.series_description is None
                or re.search(self.series_description, str(series.get("description") or ""))
                is not None
            )
            and len(series.get("keys", [])) >= self.min_instances
        )

    def describe(self) -> str:
        parts = []
        for key in ("modality", "body_part", "sop_class"):
            value = getattr(self, key)
            if value is not None:
                parts.append(f"{key} in {sorted(value)}")
        if self.series_description is not None:
            parts.append(f"description ~ {self.series_description!r}")
        if self.min_instances > 1:
            parts.append(f">= {self.min_instances} instances")
        return ", ".join(parts) or "any series"


@dataclass(frozen=True)
class Entry:
    name: str
    path: Path
    rules: tuple[Rule, ...]


def discover(models_dir: Path | None) -> dict[str, Entry]:
    """Bundles by name: the shipped ones, then ``models_dir`` (overriding by name)."""
    found: dict[str, Entry] = {}
    for root in (BUILTIN, models_dir):
        if root is None or not root.is_dir():
            continue
        for folder in sorted(root.iterdir()):
            meta_path = folder / "configs" / "metadata.json"
            if not meta_path.is_file():
                continue
            meta = json.loads(meta_path.read_text())
            name = str(meta.get("name", folder.name))
            where = f"bundle {folder}"
            rules = tuple(Rule.from_dict(rule, where) for rule in meta.get("radpipe_routing", []))
            found[name] = Entry(name, folder, rules)
    return found


def route(
    bundles: dict[str, Entry], series: list[dict[str, Any]]
) -> tuple[Entry, dict[str, Any], Rule]:
    """The bundle, series and rule that analyse a study; ``PipelineError`` naming why not."""
    for name in sorted(bundles):
        entry = bundles[name]
        for rule in entry.rules:
            matching = [s for s in series if rule.matches(s)]
            if matching:
                return entry, max(matching, key=lambda s: len(s.get("keys", []))), rule
    seen = "; ".join(
        f"{s.get('modality') or '?'} {s.get('body_part') or '-'} "
        f"({len(s.get('keys', []))} instances)"
        for s in series
    )
    installed = "; ".join(
        f"{e.name}: " + " | ".join(r.describe() for r in e.rules) for e in bundles.values()
    )
    raise PipelineError(
        f"no bundle's routing rules match any series of the study (series: {seen or 'none'}; "
        f"rules: {installed or 'no bundle installed'}); install a bundle for these series "
        "under RADPIPE_MODELS_DIR"
    )
