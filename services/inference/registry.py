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
``series_description``: a regular expression searched in the de-identified description;
``min_instances``: the images the series holds, i.e. its frames, NumberOfFrames summed over its
instances, so one Enhanced CT instance of 100 frames counts 100). The study's series are offered
to the bundles in name order; the first bundle with a matching rule wins, and among its matching
series the largest (in images) is analysed.

An admin may add, replace or disable a bundle's rules from the portal (stored in the document
store, ``radpipe.common.routing``); given the store, :func:`discover` applies them. Rules an
admin added are tried first, across all bundles, then the bundles' own.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from radpipe.common.errors import PipelineError
from radpipe.common.ports import Document, DocumentStore
from radpipe.common.routing import (
    BUILTIN_BUNDLES,
    Rule,
    declared_bundles,
    effective_rules,
    overrides,
    series_images,
)

__all__ = ["BUILTIN", "Entry", "Rule", "discover", "route"]

BUILTIN = BUILTIN_BUNDLES


@dataclass(frozen=True)
class Entry:
    name: str
    path: Path
    #: The rules the router uses: ``declared`` with the admin's ``override`` applied.
    rules: tuple[Rule, ...]
    declared: tuple[Rule, ...] = ()
    override: Document | None = None

    @property
    def disabled(self) -> bool:
        return (self.override or {}).get("mode") == "disable"


def discover(models_dir: Path | None, documents: DocumentStore | None = None) -> dict[str, Entry]:
    """Bundles by name: the shipped ones, then ``models_dir`` (overriding by name); with
    ``documents``, each with the admin's routing override applied."""
    stored = overrides(documents) if documents is not None else {}
    found = {
        name: Entry(name, folder, rules, rules)
        for name, (folder, rules) in declared_bundles(models_dir).items()
    }
    for name, override in stored.items():
        if name in found:
            entry = found[name]
            try:
                effective = effective_rules(entry.declared, override)
            except ValueError as exc:
                raise PipelineError(
                    f"the admin's routing override of bundle {name} is invalid ({exc}); "
                    "fix or reset it in the portal's admin screen"
                ) from None
            found[name] = Entry(name, entry.path, effective, entry.declared, override)
    return found


def route(
    bundles: dict[str, Entry], series: list[dict[str, Any]]
) -> tuple[Entry, dict[str, Any], Rule]:
    """The bundle, series and rule that analyse a study; ``PipelineError`` naming why not.

    The admin's rules first (bundles in name order), then the bundles' own."""
    for origin in ("admin", "bundle"):
        for name in sorted(bundles):
            entry = bundles[name]
            for rule in entry.rules:
                if rule.origin != origin:
                    continue
                matching = [s for s in series if rule.matches(s)]
                if matching:
                    return entry, max(matching, key=series_images), rule
    seen = "; ".join(
        f"{s.get('modality') or '?'} {s.get('body_part') or '-'} ({_size(s)})" for s in series
    )
    installed = "; ".join(
        f"{e.name}: "
        + ("disabled by an admin" if e.disabled else " | ".join(r.describe() for r in e.rules))
        for e in bundles.values()
    )
    raise PipelineError(
        f"no bundle's routing rules match any series of the study (series: {seen or 'none'}; "
        f"rules: {installed or 'no bundle installed'}); install a bundle for these series "
        "under RADPIPE_MODELS_DIR"
    )


def _size(series: dict[str, Any]) -> str:
    """``120 images in 120 instances``: what ``min_instances`` is compared with, and the count
    of instances beside it (they differ for multi-frame instances)."""
    instances = len(series.get("keys", []))
    plural = "" if instances == 1 else "s"
    return f"{series_images(series)} images in {instances} instance{plural}"
