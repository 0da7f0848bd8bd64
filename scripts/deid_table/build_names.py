"""Build ``services/deid/names.json``: given and family names for Clean Descriptors.

Inputs (see README.md beside this file for where each comes from and its licence):

* the 1990 US Census name-frequency files ``dist.all.last``, ``dist.female.first`` and
  ``dist.male.first`` (public domain; shipped in the PyPI package ``names`` 0.3.0);
* an English word list, one word a line (Debian ``wamerican`` 2020.12.07-2,
  ``/usr/share/dict/american-english``, SCOWL).

Output: every first name and the ``SURNAMES`` most frequent surnames, lower-cased, split in
two sorted lists. ``names`` are removed from cleaned free text wherever they stand;
``ambiguous`` ones (also an English word, or shorter than 4 letters, so also a clinical
abbreviation: "may", "mark", "bill", "head", "long", "tia", "ana") only where the text says a
name follows (after a kinship or role word) or next to another name.

Usage: ``python scripts/deid_table/build_names.py CENSUS_DIR WORDS_FILE``
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "services" / "deid" / "names.json"
SURNAMES = 10_000
SHORT = 4

SOURCE = (
    "1990 US Census name frequency files (dist.all.last top 10,000, dist.female.first, "
    "dist.male.first; public domain, as shipped in PyPI names 0.3.0); ambiguity from the "
    "lower-case words of Debian wamerican 2020.12.07-2 (SCOWL). See scripts/deid_table/README.md."
)


def _column(path: Path, limit: int | None = None) -> list[str]:
    names = [line.split()[0].lower() for line in path.read_text().splitlines() if line.strip()]
    return names[:limit] if limit else names


def build(census: Path, words_file: Path) -> tuple[list[str], list[str]]:
    """(names, ambiguous names), each sorted."""
    names = set(_column(census / "dist.all.last", SURNAMES))
    names |= set(_column(census / "dist.female.first")) | set(_column(census / "dist.male.first"))
    names = {n for n in names if n.isalpha()}
    words = {
        w.strip()
        for w in words_file.read_text(encoding="utf-8", errors="ignore").splitlines()
        if w.strip().isalpha() and w.strip().islower()
    }
    ambiguous = {n for n in names if n in words or len(n) < SHORT}
    return sorted(names - ambiguous), sorted(ambiguous)


def main() -> None:
    if len(sys.argv) != 3:
        raise SystemExit(__doc__)
    names, ambiguous = build(Path(sys.argv[1]), Path(sys.argv[2]))
    data = {"source": SOURCE, "names": names, "ambiguous": ambiguous}
    OUT.write_text(json.dumps(data, indent=0, separators=(",", ":")) + "\n", encoding="utf-8")
    print(f"wrote {OUT.relative_to(ROOT)}: {len(names)} names, {len(ambiguous)} ambiguous")


if __name__ == "__main__":
    main()
