"""PS3.15 Annex E tables, read from the generated data file ``annex_e.json`` (package data).

Table E.1-1 (Application Level Confidentiality Profile Attributes) gives, per attribute, the
Basic Profile action and the action of each option (E.3); Table E.3.10-1 lists the private
attributes the Retain Safe Private Option may keep. ``scripts/gen_deid_table.py`` writes the
file from ``scripts/deid_table/`` (its README says where each row comes from); ``--check``
fails when the file is stale.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

DATA = Path(__file__).with_name("annex_e.json")

_data: dict[str, Any] = json.loads(DATA.read_text(encoding="utf-8"))

EDITION: str = _data["edition"]
SOURCE: str = _data["source"]

#: Table E.1-1 option columns, in the order of the option tuples below.
OPTIONS: tuple[str, ...] = tuple(_data["options"])

#: Exact tag -> (attribute name, Basic Profile action, option actions; "" = no entry).
TABLE: dict[int, tuple[str, str, tuple[str, ...]]] = {
    int(tag, 16): (name, basic, tuple("" if f == "." else f for f in flags))
    for tag, basic, flags, name in _data["table"]
}

#: Tags with x's: (mask, value, name, Basic Profile action, option actions);
#: a tag matches when ``tag & mask == value``.
PATTERNS: tuple[tuple[int, int, str, str, tuple[str, ...]], ...] = tuple(
    (int(mask, 16), int(value, 16), name, basic, tuple(options))
    for mask, value, name, basic, options in _data["patterns"]
)

#: Table E.3.10-1: (private creator, group, element byte in the block) -> (VR, meaning).
SAFE_PRIVATE: dict[tuple[str, int, int], tuple[str, str]] = {
    (creator, int(group, 16), int(element, 16)): (vr, meaning)
    for creator, group, element, vr, meaning in _data["safe_private"]
}

del _data
