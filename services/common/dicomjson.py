"""DICOM JSON on the wire (PS3.18 Annex F.2): every body Radpipe sends in this model is
serialized here, once, so every route gets the same order and the same rules.

Pure functions, no I/O.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

MEDIA_TYPE = "application/dicom+json"
#: Offered for DICOM JSON bodies, in order of preference: ``application/json`` is what some
#: clients ask for (dicomweb-client decodes either).
MEDIA_TYPES = (MEDIA_TYPE, "application/json")

Dataset = Mapping[str, Any]


def ordered(dataset: Dataset) -> dict[str, Any]:
    """``dataset`` with its attribute objects in ascending tag order (PS3.18 F.2.2), the same
    in every sequence item at any depth, and without group length attributes (gggg,0000),
    which the model does not carry."""
    out: dict[str, Any] = {}
    for key in sorted(dataset, key=_tag):
        if key.endswith("0000"):
            continue
        attribute = dataset[key]
        items = attribute.get("Value") if attribute.get("vr") == "SQ" else None
        if items:
            attribute = {**attribute, "Value": [ordered(item) for item in items]}
        out[key] = attribute
    return out


def _tag(key: str) -> int:
    return int(key, 16)


def dumps(payload: Dataset | Sequence[Dataset]) -> bytes:
    """A DICOM JSON body: one dataset object (STOW-RS response) or an array of them (QIDO-RS
    results, WADO-RS metadata), each :func:`ordered`."""
    if isinstance(payload, Mapping):
        model: Any = ordered(payload)
    else:
        model = [ordered(dataset) for dataset in payload]
    return json.dumps(model, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
