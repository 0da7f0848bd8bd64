"""Model monitoring from reader feedback, per model version (name, version, weights sha256).

Three collections, each updated as things happen, so no question scans the studies:

* ``model_stats``: one document per model version (``_id`` :func:`model_key`): counters of
  analysed studies, of decisions by kind, of signed studies and the findings rejected in them,
  the bundle's reference distribution, and the state of each paging condition;
* ``model_inputs``: one record per analysed study and version (``{study}:v{version}``): the
  input statistics (pixel spacing, slice thickness, HU histogram) at inference time;
* ``model_feedback``: one record per decided finding (``{study}:v{version}:{n}``, its latest
  decision) and one per signed study (``…:signed``).

The records are keyed so that a redelivered task or a repeated decision counts once, and a
changed decision moves its count from the old kind to the new one (the record's previous value
comes back from the same atomic ``find_one_and_update``). Rolling windows are the newest
records of a model version (index ``model, at``); both document-store adapters answer them.

No record names a patient: the study ids are pseudonymous and no answer here returns them.
"""

from __future__ import annotations

import json
import re
import weakref
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from pymongo import ReturnDocument

from . import drift
from .logging import get_logger
from .ports import Document, DocumentStore
from .settings import Settings
from .studies import now

MODEL_STATS, MODEL_INPUTS, MODEL_FEEDBACK = "model_stats", "model_inputs", "model_feedback"
#: Where a bundle carries its training data's distribution (or ``radpipe_reference_stats`` in
#: ``configs/metadata.json``).
REFERENCE_FILE = "configs/reference_stats.json"
DECISIONS = ("accept", "edit", "reject")
_NEWEST = [("at", -1)]
log = get_logger("radpipe.monitoring")
_indexed: weakref.WeakSet[Any] = weakref.WeakSet()


def ensure_indexes(documents: DocumentStore) -> None:
    """The indexes of the rolling windows (once per store object)."""
    if documents in _indexed:
        return
    documents.collection(MODEL_INPUTS).create_index([("model", 1), ("at", -1)])
    documents.collection(MODEL_FEEDBACK).create_index([("model", 1), ("kind", 1), ("at", -1)])
    _indexed.add(documents)


def model_key(model: Mapping[str, Any]) -> str:
    """``name-version-sha256[:12]``: one model version, safe in ids, URLs and metric labels."""
    raw = f"{model.get('name') or 'unknown'}-{model.get('version') or '0'}-"
    raw += str(model.get("sha256") or "unknown")[:12]
    return re.sub(r"[^A-Za-z0-9._-]", "_", raw)


def _identity(model: Mapping[str, Any]) -> dict[str, Any]:
    return {k: model.get(k) for k in ("name", "version", "sha256")}


def load_reference(bundle_path: Path | None) -> dict[str, Any] | None:
    """A bundle's reference distribution: ``configs/reference_stats.json``, else the
    ``radpipe_reference_stats`` of its metadata; ``None`` when it has neither.

    Raises:
        drift.BadReference: the reference exists but cannot be used (the message says why).
    """
    if bundle_path is None:
        return None
    path = Path(bundle_path) / REFERENCE_FILE
    if path.is_file():
        reference = json.loads(path.read_text())
    else:
        meta = Path(bundle_path) / "configs" / "metadata.json"
        reference = (
            json.loads(meta.read_text()).get("radpipe_reference_stats") if meta.is_file() else None
        )
        if reference is None:
            return None
    features = drift.check_reference(reference)
    return {
        "source": str(reference.get("source", "")),
        "studies": reference.get("studies"),
        "features": features,
    }


def record_inference(
    documents: DocumentStore,
    study_id: str,
    version: int,
    model: Mapping[str, Any],
    stats: Mapping[str, Any],
    reference: Mapping[str, Any] | None,
    at: datetime | None = None,
) -> bool:
    """Record one analysed study's input statistics; ``False`` when it was recorded before."""
    ensure_indexes(documents)
    at = at or now()
    key = model_key(model)
    before = documents.collection(MODEL_INPUTS).find_one_and_update(
        {"_id": f"{study_id}:v{version}"},
        {"$setOnInsert": {"model": key, "at": at, **stats}},
        upsert=True,
        return_document=ReturnDocument.BEFORE,
    )
    if before is not None:
        return False
    fields: dict[str, Any] = {**_identity(model), "last_inference_at": at}
    if reference is not None:
        fields["reference"] = dict(reference)
    documents.collection(MODEL_STATS).update_one(
        {"_id": key}, {"$set": fields, "$inc": {"studies": 1}}, upsert=True
    )
    return True


def record_decision(
    documents: DocumentStore, study_id: str, version: int, decision: Mapping[str, Any]
) -> None:
    """Count a reader's decision on a finding (``review.decide``'s record, which names the
    model); a changed decision moves its count."""
    ensure_indexes(documents)
    model, kind = decision.get("model") or {}, str(decision["decision"])
    key = model_key(model)
    before = documents.collection(MODEL_FEEDBACK).find_one_and_update(
        {"_id": f"{study_id}:v{version}:{decision['finding']}"},
        {
            "$set": {
                "model": key,
                "kind": "decision",
                "decision": kind,
                "at": decision.get("at") or now(),
            }
        },
        upsert=True,
        return_document=ReturnDocument.BEFORE,
    )
    previous = (before or {}).get("decision")
    if previous == kind:
        return
    inc = {f"decisions.{kind}": 1}
    if previous is not None:
        inc[f"decisions.{previous}"] = -1
    documents.collection(MODEL_STATS).update_one(
        {"_id": key}, {"$set": _identity(model), "$inc": inc}, upsert=True
    )


def record_signed(
    documents: DocumentStore,
    study_id: str,
    version: int,
    model: Mapping[str, Any],
    findings: int,
    rejected: int,
    at: datetime | None = None,
) -> None:
    """Count a signed study: the false positives per study are the findings rejected in signed
    studies over the signed studies (clean ones included)."""
    ensure_indexes(documents)
    key = model_key(model)
    before = documents.collection(MODEL_FEEDBACK).find_one_and_update(
        {"_id": f"{study_id}:v{version}:signed"},
        {
            "$setOnInsert": {
                "model": key,
                "kind": "signed",
                "at": at or now(),
                "findings": findings,
                "rejected": rejected,
            }
        },
        upsert=True,
        return_document=ReturnDocument.BEFORE,
    )
    if before is None:
        documents.collection(MODEL_STATS).update_one(
            {"_id": key},
            {
                "$set": _identity(model),
                "$inc": {
                    "signed_studies": 1,
                    "signed_findings": findings,
                    "signed_rejected": rejected,
                },
            },
            upsert=True,
        )


def _window(
    documents: DocumentStore, name: str, query: dict[str, Any], size: int
) -> list[Document]:
    return list(documents.collection(name).find(query).sort(_NEWEST).limit(size))


def summary(documents: DocumentStore, settings: Settings, stats: Document) -> dict[str, Any]:
    """One model version's figures: totals, the rolling windows, drift against the reference,
    and which paging conditions hold now (aggregates only: no study id)."""
    key = stats["_id"]
    counts = {d: int((stats.get("decisions") or {}).get(d, 0)) for d in DECISIONS}
    decided = sum(counts.values())
    recent = _window(
        documents, MODEL_FEEDBACK, {"model": key, "kind": "decision"}, settings.monitor_ppv_window
    )
    recent_counts = {d: sum(1 for r in recent if r.get("decision") == d) for d in DECISIONS}
    reference = (stats.get("reference") or {}).get("features") or {}
    edges = {
        name: (reference.get(name) or {}).get("edges") or drift.DEFAULT_EDGES[name]
        for name in drift.FEATURES
    }
    inputs = _window(documents, MODEL_INPUTS, {"model": key}, settings.monitor_window)
    observed = drift.window_distributions(inputs, edges)
    compared = drift.compare(reference, observed)
    worst = max(compared.items(), key=lambda item: item[1]["psi"], default=None)
    recent_ppv = drift.ppv(recent_counts["accept"], recent_counts["edit"], recent_counts["reject"])
    signed = int(stats.get("signed_studies", 0))
    figures = {
        "model": key,
        **_identity(stats),
        "studies": int(stats.get("studies", 0)),
        "decisions": counts,
        "decided": decided,
        "acceptance_rate": drift.ratio(counts["accept"], decided),
        "ppv": drift.ppv(counts["accept"], counts["edit"], counts["reject"]),
        "recent": {
            "decisions": recent_counts,
            "decided": len(recent),
            "ppv": recent_ppv,
            "daily": _daily(recent),
        },
        "signed_studies": signed,
        "false_positives_per_study": drift.ratio(int(stats.get("signed_rejected", 0)), signed),
        "inputs": {
            "window": len(inputs),
            "edges": edges,
            "observed": observed,
            "reference": {n: f["proportions"] for n, f in reference.items()},
            "has_reference": bool(reference),
            "drift": compared,
            "worst": None if worst is None else {"feature": worst[0], **worst[1]},
        },
        "last_inference_at": stats.get("last_inference_at"),
    }
    figures["conditions"] = conditions(settings, figures, stats.get("conditions") or {})
    return figures


def _daily(records: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Reader PPV per UTC day of the recent decisions, oldest first (the page's trend)."""
    days: dict[str, dict[str, int]] = {}
    for record in records:
        at = record.get("at")
        if isinstance(at, datetime) and record.get("decision") in DECISIONS:
            counts = days.setdefault(at.date().isoformat(), dict.fromkeys(DECISIONS, 0))
            counts[record["decision"]] += 1
    return [
        {
            "day": day,
            "decided": sum(c.values()),
            "ppv": drift.ppv(c["accept"], c["edit"], c["reject"]),
        }
        for day, c in sorted(days.items())
    ]


def conditions(
    settings: Settings, figures: Mapping[str, Any], state: Mapping[str, Any]
) -> dict[str, dict[str, Any]]:
    """Whether each paging condition holds (``model.drift``, ``model.ppv``), with the reason.

    Drift: a feature's PSI at or over ``monitor_drift_psi`` with at least
    ``monitor_drift_outside`` of the window outside the training data. A condition that holds
    clears only with a margin (both figures under 80 % of their thresholds, the PPV 5 points
    over its own), so a figure hovering at a threshold pages once, not on every swing.
    """
    inputs, recent = figures["inputs"], figures["recent"]
    was_drift = bool((state.get("drift") or {}).get("active"))
    margin = 0.8 if was_drift else 1.0
    psi_limit = settings.monitor_drift_psi * margin
    outside_limit = settings.monitor_drift_outside * margin
    drifting = [
        {"feature": feature, **stat}
        for feature, stat in inputs["drift"].items()
        if stat["psi"] >= psi_limit and stat["outside"] >= outside_limit
    ]
    worst = max(drifting, key=lambda d: d["psi"], default=inputs["worst"])
    drifted = bool(drifting) and inputs["window"] >= settings.monitor_min_studies
    was_low = bool((state.get("ppv") or {}).get("active"))
    floor = settings.monitor_ppv_threshold + (0.05 if was_low else 0.0)
    low = (
        recent["ppv"] is not None
        and recent["decided"] >= settings.monitor_min_decisions
        and recent["ppv"] < floor
    )
    name = f"{figures['name']} {figures['version']} (sha256 {str(figures['sha256'])[:12]})"
    return {
        "drift": {
            "active": drifted,
            "reason": (
                f"model {name}: input drift, PSI {worst['psi']:.2f} (KS {worst['ks']:.2f}, "
                f"{worst['outside']:.0%} outside the training data) on {worst['feature']} over "
                f"the last {inputs['window']} studies against the bundle's training data (page "
                f"at PSI >= {settings.monitor_drift_psi} with >= "
                f"{settings.monitor_drift_outside:.0%} outside)"
                if worst is not None
                else "no reference distribution"
            ),
        },
        "ppv": {
            "active": low,
            "reason": (
                f"model {name}: reader PPV {recent['ppv']:.2f} over the last {recent['decided']} "
                f"decided findings, under {settings.monitor_ppv_threshold}"
                if recent["ppv"] is not None
                else "no decision yet"
            ),
        },
    }


def summaries(
    documents: DocumentStore, settings: Settings, limit: int = 100
) -> list[dict[str, Any]]:
    """Every monitored model version's figures, the most recently used first."""
    ensure_indexes(documents)
    found = list(documents.collection(MODEL_STATS).find({}).limit(limit))
    figures = [summary(documents, settings, stats) for stats in found]
    return sorted(figures, key=lambda f: str(f.get("last_inference_at") or ""), reverse=True)


def set_condition(documents: DocumentStore, key: str, name: str, active: bool) -> int | None:
    """Flip condition ``name`` of a model version; returns the new episode number when this
    call turned it on (one caller wins across processes), else ``None``."""
    stats = documents.collection(MODEL_STATS)
    path = f"conditions.{name}"
    if not active:
        stats.update_one({"_id": key, f"{path}.active": True}, {"$set": {f"{path}.active": False}})
        return None
    turned = stats.find_one_and_update(
        {"_id": key, f"{path}.active": {"$ne": True}},
        {"$set": {f"{path}.active": True, f"{path}.since": now()}, "$inc": {f"{path}.episode": 1}},
        return_document=ReturnDocument.AFTER,
    )
    return None if turned is None else int(turned["conditions"][name]["episode"])


def episode(stats: Mapping[str, Any], name: str) -> int:
    return int(((stats.get("conditions") or {}).get(name) or {}).get("episode", 0))


def stats_of(documents: DocumentStore, key: str) -> Document | None:
    found: Document | None = documents.collection(MODEL_STATS).find_one({"_id": key})
    return found


def record_analysis(
    documents: DocumentStore,
    study_id: str,
    version: int,
    model: Mapping[str, Any],
    volume: Any,
    bundle_path: Path | None,
) -> None:
    """The inference stage's hook: describe the analysed volume and record it."""
    if volume is None:
        return
    try:
        reference = load_reference(bundle_path)
    except (drift.BadReference, json.JSONDecodeError) as exc:
        # The model's results stand; only the drift check lacks its reference (logged).
        log.warning("monitoring.bad-reference", bundle=str(bundle_path), reason=str(exc)[:300])
        reference = None
    hu_edges = ((reference or {}).get("features", {}).get("hu") or {}).get("edges", drift.HU_EDGES)
    # Slice Thickness as `series_to_volume` read it (images or Pixel Measures; None: spacing).
    thickness = getattr(volume, "slice_thickness", None)
    stats = drift.input_stats(volume.array, volume.spacing, thickness, hu_edges)
    record_inference(documents, study_id, version, model, stats, reference)
