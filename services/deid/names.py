"""Given and family names for Clean Descriptors, from ``names.json`` (package data).

The list is the 1990 US Census name-frequency data (public domain): every first name and the
10,000 most frequent surnames, lower-cased; ``scripts/deid_table/build_names.py`` writes it and
``scripts/deid_table/README.md`` says where each part comes from. Names that are also English
words or clinical abbreviations ("may", "mark", "head", "long", "tia") are *ambiguous*: the
cleaner removes them only where the text says a name stands there. Loaded once, on first use.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

DATA = Path(__file__).with_name("names.json")


@cache
def _lists() -> tuple[frozenset[str], frozenset[str]]:
    data = json.loads(DATA.read_text(encoding="utf-8"))
    return frozenset(data["names"]), frozenset(data["ambiguous"])


def is_name(lower: str) -> bool:
    """A listed given or family name that is not also a common word (lower-case input)."""
    return lower in _lists()[0]


def is_ambiguous_name(lower: str) -> bool:
    """A listed name that is also an English word or shorter than four letters."""
    return lower in _lists()[1]
