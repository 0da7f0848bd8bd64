"""Routing rules: which series a MONAI bundle analyses, and the admin's overrides of them.

A bundle declares its rules in ``configs/metadata.json`` under ``radpipe_routing`` (see
``radpipe.inference.registry``). An admin may override them per bundle from the portal; the
override is a document in the ``routing_rules`` collection, read by the inference router at
each routing decision:

* ``add``: the admin's rules, tried before any bundle's own rules, then the bundle's own;
* ``replace``: the admin's rules instead of the bundle's own;
* ``disable``: the bundle analyses nothing.

Both kinds of rule pass the same checks (:meth:`Rule.from_dict`), at write time for the admin's
(a bad rule is refused and nothing is stored) and at discovery for the bundle's.

``min_instances`` counts *images*, not instances: the frames of the series, NumberOfFrames
(0028,0008) summed over its instances, a single-frame instance counting 1 (:func:`series_images`).
A rule asking for 20 slices thus matches twenty CT Image Storage instances and one Enhanced CT
instance of 20 frames alike. The key keeps its name so that the bundles' ``radpipe_routing``
and the admin overrides already stored keep working unchanged; on single-frame series (all
there was before multi-frame sources) the count is the same.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from .ports import Document, DocumentStore

#: The overrides, one document per bundle name.
ROUTING_RULES = "routing_rules"
RULE_KEYS = ("modality", "body_part", "sop_class", "series_description", "min_instances")
#: The bundles shipped in the package (data, not code: the portal lists them without importing
#: the inference service).
BUILTIN_BUNDLES = Path(__file__).resolve().parent.parent / "inference" / "bundles"
Mode = Literal["add", "replace", "disable"]
MODES: tuple[str, ...] = ("add", "replace", "disable")


def series_images(series: dict[str, Any]) -> int:
    """The images of a series document: the frames de-identification counted (``frames``),
    or, in a series document stored before it counted them, its number of instances."""
    frames = series.get("frames")
    if isinstance(frames, int) and not isinstance(frames, bool) and frames > 0:
        return frames
    return len(series.get("keys", []))


def instance_frames(value: Any) -> int:
    """The images one instance holds given its NumberOfFrames (0028,0008) value: that number,
    or 1 when absent, empty or not a positive whole number (PS3.3 C.7.6.6: single-frame)."""
    try:
        frames = int(str(value).strip()) if value not in (None, "") else 1
    except ValueError:
        return 1
    return frames if frames > 0 else 1


@dataclass(frozen=True)
class Rule:
    """One routing rule; every field it names must match the series (lists: membership,
    upper-cased but SOP classes; ``series_description``: a regular expression searched in the
    de-identified description; ``min_instances``: images, i.e. frames, see
    :func:`series_images`). ``origin``: ``bundle`` (its metadata) or ``admin``."""

    modality: frozenset[str] | None = None
    body_part: frozenset[str] | None = None
    sop_class: frozenset[str] | None = None
    series_description: str | None = None
    min_instances: int = 1
    origin: str = "bundle"

    @classmethod
    def from_dict(cls, data: Any, where: str, origin: str = "bundle") -> Rule:
        """The rule ``data`` describes; ``ValueError`` naming ``where`` and the fix if bad."""
        if not isinstance(data, dict):
            raise ValueError(f"{where}: a routing rule is an object with the keys {RULE_KEYS}")
        unknown = set(data) - set(RULE_KEYS)
        if unknown:
            raise ValueError(
                f"{where}: unknown routing key(s) {', '.join(sorted(unknown))} "
                f"(known: {', '.join(RULE_KEYS)})"
            )

        def members(key: str) -> frozenset[str] | None:
            value = data.get(key)
            if value is None:
                return None
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise ValueError(f"{where}: routing {key} must be a list of strings")
            return frozenset(v.upper() if key != "sop_class" else v for v in value)

        pattern = data.get("series_description")
        if pattern is not None:
            if not isinstance(pattern, str):
                raise ValueError(f"{where}: series_description is a regular expression (text)")
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(
                    f"{where}: series_description {pattern!r} is not a regular expression "
                    f"({exc}); escape special characters with a backslash"
                ) from None
        count = data.get("min_instances", 1)
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise ValueError(
                f"{where}: min_instances (the images, i.e. frames, a series needs) is a whole "
                "number of at least 1"
            )
        return cls(
            modality=members("modality"),
            body_part=members("body_part"),
            sop_class=members("sop_class"),
            series_description=pattern,
            min_instances=count,
            origin=origin,
        )

    def to_dict(self) -> dict[str, Any]:
        """The rule as :meth:`from_dict` reads it (lists sorted)."""
        out: dict[str, Any] = {}
        for key in ("modality", "body_part", "sop_class"):
            value = getattr(self, key)
            if value is not None:
                out[key] = sorted(value)
        if self.series_description is not None:
            out["series_description"] = self.series_description
        if self.min_instances != 1:
            out["min_instances"] = self.min_instances
        return out

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
            and series_images(series) >= self.min_instances
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
            parts.append(f">= {self.min_instances} images (frames)")
        text = ", ".join(parts) or "any series"
        return f"{text} [admin]" if self.origin == "admin" else text


def parse_override(bundle: str, mode: str, rules: Any) -> tuple[Rule, ...]:
    """The admin's rules for ``bundle`` checked as a bundle's are; ``ValueError`` if bad."""
    if mode not in MODES:
        raise ValueError(f"mode {mode!r}: use one of {', '.join(MODES)}")
    if not isinstance(rules, list):
        raise ValueError("rules is a list of routing rules")
    if mode == "disable" and rules:
        raise ValueError("a disabled bundle takes no rules: send rules [] with mode disable")
    if mode != "disable" and not rules:
        raise ValueError(f"mode {mode} needs at least one rule (to route nothing, use disable)")
    return tuple(
        Rule.from_dict(rule, f"rule {n} for bundle {bundle}", origin="admin")
        for n, rule in enumerate(rules, 1)
    )


def effective_rules(declared: tuple[Rule, ...], override: Document | None) -> tuple[Rule, ...]:
    """The rules the router uses for a bundle: its own, with the admin's override applied."""
    if override is None:
        return declared
    admin = parse_override(str(override["_id"]), override.get("mode", ""), override.get("rules"))
    if override["mode"] == "add":
        return admin + declared
    return admin  # replace; disable: none


def overrides(documents: DocumentStore) -> dict[str, Document]:
    """Every stored override by bundle name (a handful of small documents)."""
    return {str(d["_id"]): d for d in documents.collection(ROUTING_RULES).find({})}


def set_override(
    documents: DocumentStore,
    bundle: str,
    mode: str,
    rules: list[dict[str, Any]],
    reason: str,
    by: str,
    at: Any,
) -> Document:
    """Store (replace) the override of ``bundle`` once its rules pass the checks."""
    parse_override(bundle, mode, rules)
    fields = {"mode": mode, "rules": rules, "reason": reason, "updated_by": by, "updated_at": at}
    documents.collection(ROUTING_RULES).update_one({"_id": bundle}, {"$set": fields}, upsert=True)
    return {"_id": bundle, **fields}


def clear_override(documents: DocumentStore, bundle: str) -> bool:
    """Back to the bundle's own rules; whether there was an override."""
    return documents.collection(ROUTING_RULES).delete_one({"_id": bundle}).deleted_count == 1


def declared_bundles(models_dir: Path | None) -> dict[str, tuple[Path, tuple[Rule, ...]]]:
    """Every installed bundle's folder and its own rules, by name: the shipped ones, then
    ``models_dir`` (which wins on a name clash). Read from ``configs/metadata.json``
    (``radpipe_routing``) or, for a MONAI Model Zoo bundle, its sidecar ``radpipe.json``
    (``routing``)."""
    found: dict[str, tuple[Path, tuple[Rule, ...]]] = {}
    for root in (BUILTIN_BUNDLES, models_dir):
        if root is None or not root.is_dir():
            continue
        for folder in sorted(root.iterdir()):
            meta_path = folder / "configs" / "metadata.json"
            if not meta_path.is_file():
                continue
            meta = json.loads(meta_path.read_text())
            where = f"bundle {folder}"
            declared = meta.get("radpipe_routing")
            sidecar = folder / "radpipe.json"  # a zoo bundle's rules, its metadata unchanged
            if declared is None and sidecar.is_file():
                where = str(sidecar)
                declared = json.loads(sidecar.read_text()).get("routing")
            rules = tuple(Rule.from_dict(rule, where) for rule in declared or [])
            found[str(meta.get("name", folder.name))] = (folder, rules)
    return found
