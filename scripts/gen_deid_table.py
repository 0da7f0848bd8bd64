"""Generate ``services/deid/annex_e.json`` from the PS3.15 Annex E data in ``scripts/deid_table/``.

Reads Table E.1-1 (Application Level Confidentiality Profile Attributes, innolitics JSON form),
the newer-edition basic-profile delta, and Table E.3.10-1 (Safe Private Attributes), checks
them, and writes one sorted, deterministic JSON data file, shipped as package data and read by
``services/deid/table.py``. ``scripts/deid_table/README.md`` says where each file came from.

Usage: ``python scripts/gen_deid_table.py [--check]`` (``--check`` fails if the file is stale).
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "scripts" / "deid_table"
OUT = ROOT / "services" / "deid" / "annex_e.json"

#: PS3.15 edition of table_e1_1.json (version.json beside it in the source repository).
EDITION = "2025b"

#: Option names in Table E.1-1 column order, with the innolitics JSON key of each column.
OPTION_COLUMNS = (
    ("rtn_safe_priv", "rtnSafePrivOpt"),
    ("rtn_uids", "rtnUIDsOpt"),
    ("rtn_dev_id", "rtnDevIdOpt"),
    ("rtn_inst_id", "rtnInstIdOpt"),
    ("rtn_pat_chars", "rtnPatCharsOpt"),
    ("rtn_long_full_dates", "rtnLongFullDatesOpt"),
    ("rtn_long_modif_dates", "rtnLongModifDatesOpt"),
    ("clean_desc", "cleanDescOpt"),
    ("clean_struct_cont", "cleanStructContOpt"),
    ("clean_graph", "cleanGraphOpt"),
)

#: Action codes of PS3.15 E.1.1; anything else in the data stops the generator.
ACTIONS = frozenset({"D", "Z", "X", "K", "C", "U", "Z/D", "X/Z", "X/D", "X/Z/D", "X/Z/U*"})

EXACT_TAG = re.compile(r"\(([0-9A-F]{4}),([0-9A-F]{4})\)")
MASKED_TAG = re.compile(r"\(([0-9A-FX]{4}),([0-9A-FX]{4})\)")
ODD_GROUP_TAG = "(GGGG,EEEE) WHERE GGGG IS ODD"
PRIVATE_TAG = re.compile(r"\(([0-9A-F]{4}),XX([0-9A-F]{2})\)")

Row = tuple[str, str, tuple[str, ...]]


def _load(name: str) -> Any:
    return json.loads((DATA / name).read_text(encoding="utf-8"))


def _text(value: str) -> str:
    """Collapse the whitespace the standard's table cells carry (line breaks, double spaces)."""
    return " ".join(value.split())


def _action(value: str, where: str) -> str:
    action = "".join(value.split())
    if action and action not in ACTIONS:
        raise SystemExit(f"{where}: unknown action {value!r}; add it to ACTIONS and the README")
    return action


def _mask(tag: str) -> tuple[int, int]:
    """(mask, value) of a tag with x's, so that ``tag & mask == value`` selects it."""
    if tag == ODD_GROUP_TAG:
        return 0x00010000, 0x00010000
    match = MASKED_TAG.fullmatch(tag)
    if not match:
        raise SystemExit(f"unparsed tag {tag!r} in Table E.1-1")
    mask = value = 0
    for digit in match.group(1) + match.group(2):
        mask, value = mask << 4, value << 4
        if digit != "X":
            mask, value = mask | 0xF, value | int(digit, 16)
    return mask, value


def build_profile() -> tuple[dict[int, Row], dict[tuple[int, int], Row], str]:
    """TABLE and PATTERNS from the 2025b table, with the 2026c basic-profile delta applied."""
    table: dict[int, Row] = {}
    patterns: dict[tuple[int, int], Row] = {}
    for row in _load("table_e1_1.json"):
        tag = row["tag"].upper()
        where = f"table_e1_1.json {tag}"
        entry = (
            _text(row["name"]),
            _action(row["basicProfile"], where),
            tuple(_action(row.get(key, ""), where) for _, key in OPTION_COLUMNS),
        )
        exact = EXACT_TAG.fullmatch(tag)
        if exact:
            key = int(exact.group(1) + exact.group(2), 16)
            if key in table:
                raise SystemExit(f"{where}: duplicate tag")
            table[key] = entry
        else:
            patterns[_mask(tag)] = entry
    added: list[str] = []
    changed: list[str] = []
    delta = _load("table_e1_1_2026c_delta.json")
    for row in delta["rows"]:
        exact = EXACT_TAG.fullmatch(row["tag"].upper())
        if not exact:
            raise SystemExit(f"delta: unparsed tag {row['tag']!r}")
        key = int(exact.group(1) + exact.group(2), 16)
        basic = _action(row["basicProfile"], f"delta {row['tag']}")
        if key in table:
            # The newer edition wins for the basic action; its option columns are not known.
            name, old, options = table[key]
            table[key] = (name, basic, options)
            changed.append(f"{row['tag']} {old} -> {basic}")
        else:
            table[key] = (_text(row["name"]), basic, ("",) * len(OPTION_COLUMNS))
            added.append(row["tag"])
    edition = delta["edition"]
    notes = f"{len(added)} rows added from {edition}, basic action only: {', '.join(added)}."
    if changed:
        notes += f" Basic action changed in {edition}: {', '.join(changed)}."
    return table, patterns, notes


def build_safe_private() -> dict[tuple[str, int, int], tuple[str, str]]:
    """SAFE_PRIVATE keyed by (private creator, group, element byte within the block)."""
    safe: dict[tuple[str, int, int], tuple[str, str]] = {}
    for row in _load("safe_private.json")["rows"]:
        match = PRIVATE_TAG.fullmatch(row["tag"].upper())
        if not match:
            raise SystemExit(f"safe_private.json: unparsed tag {row['tag']!r}")
        group = int(match.group(1), 16)
        if not group & 1:
            raise SystemExit(f"safe_private.json: {row['tag']} is not in an odd group")
        key = (row["creator"].strip(), group, int(match.group(2), 16))
        if key in safe:
            raise SystemExit(f"safe_private.json: duplicate {key}")
        safe[key] = (row["vr"].strip(), _text(row["meaning"]))
    return safe


def _rows(rows: list[list[Any]]) -> str:
    """A JSON array with one row a line: short, stable diffs when the standard changes."""
    return "[\n" + ",\n".join(json.dumps(row, ensure_ascii=False) for row in rows) + "\n]"


def render() -> str:
    """The JSON data file: Table E.1-1 rows, its x-patterns and Table E.3.10-1."""
    table, patterns, notes = build_profile()
    safe = build_safe_private()
    source = (
        f"DICOM PS3.15 Annex E. Table E.1-1: PS3.15 {EDITION} as parsed by "
        "innolitics/dicom-standard (copy in "
        "DIAGNijmegen/rse-grand-challenge-dicom-de-id-procedure@3b76081c), plus "
        "the 2026c basic-profile delta (dicom-anonymizer 2.1.0). Table E.3.10-1: "
        "chsasank/dicom_standard@2c591286 (2020-era edition). See scripts/deid_table/README.md."
    )
    rows = []
    for tag in sorted(table):
        name, basic, options = table[tag]
        if any(len(o) > 1 for o in options):
            raise SystemExit(f"row {tag:08X}: an option action of more than one letter {options}")
        rows.append([f"{tag:08X}", basic, "".join(o or "." for o in options), name])
    masks = [
        [
            f"{mask:08X}",
            f"{value:08X}",
            *patterns[(mask, value)][:2],
            list(patterns[(mask, value)][2]),
        ]
        for mask, value in sorted(patterns, key=lambda mv: (mv[1], mv[0]))
    ]
    private = [
        [creator, f"{group:04X}", f"{element:02X}", *safe[(creator, group, element)]]
        for creator, group, element in sorted(safe)
    ]
    header = {
        "generated": "by scripts/gen_deid_table.py from scripts/deid_table/: do not edit",
        "edition": EDITION,
        "source": source,
        "notes": f"Over {EDITION}: {notes}",
        "options": [o for o, _ in OPTION_COLUMNS],
        "table_format": "[GGGGEEEE, basic action, one option action per column ('.' none), name]",
        "patterns_format": "[mask, value, name, basic action, option actions]: tag & mask == value",
        "safe_private_format": "[private creator, group, element byte in block, VR, meaning]",
    }
    head = json.dumps(header, indent=1, ensure_ascii=False)[:-2]
    return (
        f"{head},\n"
        f'"table": {_rows(rows)},\n'
        f'"patterns": {_rows(masks)},\n'
        f'"safe_private": {_rows(private)}\n'
        "}\n"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if the data file is out of date")
    args = parser.parse_args()
    text = render()
    if args.check:
        if not OUT.exists() or OUT.read_text(encoding="utf-8") != text:
            stale = OUT.relative_to(ROOT)
            raise SystemExit(f"{stale} is stale: run python scripts/gen_deid_table.py")
        return
    OUT.write_text(text, encoding="utf-8")
    print(f"wrote {OUT.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
