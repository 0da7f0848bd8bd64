"""Generate ``services/deid/table.py`` from the PS3.15 Annex E data in ``scripts/deid_table/``.

Reads Table E.1-1 (Application Level Confidentiality Profile Attributes, innolitics JSON form),
the newer-edition basic-profile delta, and Table E.3.10-1 (Safe Private Attributes), checks
them, and writes one sorted, deterministic Python module, then runs ``ruff format`` on it.
``scripts/deid_table/README.md`` says where each file came from.

Usage: ``python scripts/gen_deid_table.py [--check]`` (``--check`` fails if the module is stale).
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "scripts" / "deid_table"
OUT = ROOT / "services" / "deid" / "table.py"

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


def _s(value: str) -> str:
    """A double-quoted literal; long text becomes an implicit concatenation so lines stay short."""
    if len(value) <= 80:
        return json.dumps(value, ensure_ascii=False)
    chunks = textwrap.wrap(
        value, 80, drop_whitespace=False, break_on_hyphens=False, break_long_words=False
    )
    assert "".join(chunks) == value, value
    return "(" + " ".join(json.dumps(c, ensure_ascii=False) for c in chunks) + ")"


def _wrap(text: str) -> list[str]:
    return textwrap.wrap(text, 96, break_on_hyphens=False, break_long_words=False)


def _options(options: tuple[str, ...]) -> str:
    return "(" + ", ".join(_s(o) for o in options) + ")"


def render() -> str:
    table, patterns, notes = build_profile()
    safe = build_safe_private()
    source = (
        f"DICOM PS3.15 Annex E. Table E.1-1: PS3.15 {EDITION} as parsed by "
        "innolitics/dicom-standard (copy in "
        "DIAGNijmegen/rse-grand-challenge-dicom-de-id-procedure@3b76081c), plus "
        "the 2026c basic-profile delta (dicom-anonymizer 2.1.0). Table E.3.10-1: "
        "chsasank/dicom_standard@2c591286 (2020-era edition). See scripts/deid_table/README.md."
    )
    intro = (
        "Table E.1-1 (Application Level Confidentiality Profile Attributes) gives, per attribute, "
        "the Basic Profile action and the action of each option (E.3); Table E.3.10-1 lists the "
        "private attributes the Retain Safe Private Option may keep. Regenerate with "
        "``python scripts/gen_deid_table.py`` from ``scripts/deid_table/``."
    )
    lines = [
        '"""PS3.15 Annex E de-identification tables, generated: do not edit.',
        "",
        *_wrap(source),
        "",
        *_wrap(intro),
        "",
        *_wrap(f"Over {EDITION}: {notes}"),
        '"""',
        "",
        f"EDITION: str = {_s(EDITION)}",
        f"SOURCE: str = {_s(source)}",
        "",
        "#: Table E.1-1 option columns, in the order of the option tuples below.",
        "OPTIONS: tuple[str, ...] = (" + ", ".join(_s(o) for o, _ in OPTION_COLUMNS) + ",)",
        "",
        "#: Table E.1-1, one row per exact tag: ``GGGGEEEE ACTION OPTIONS NAME``, OPTIONS one",
        "#: character per column of OPTIONS (``.`` = no entry). Kept as text and parsed at import:",
        "#: compiling a 650-entry dict literal on every start costs 30 times more.",
        '_ROWS = """\\',
    ]
    for tag in sorted(table):
        name, basic, options = table[tag]
        if any(len(o) > 1 for o in options) or " " in basic or "\\" in name:
            raise SystemExit(f"row {tag:08X} cannot be written as text: {options} {basic}")
        flags = "".join(o or "." for o in options)
        lines.append(f"{tag:08X} {basic} {flags} {name}")
    lines += [
        '"""',
        "",
        '#: Exact tag -> (attribute name, Basic Profile action, option actions; "" = no entry).',
        "TABLE: dict[int, tuple[str, str, tuple[str, ...]]] = {",
        "    int(tag, 16): (name, basic, tuple('' if f == '.' else f for f in flags))",
        "    for tag, basic, flags, name in (row.split(' ', 3) for row in _ROWS.splitlines())",
    ]
    lines += [
        "}",
        "",
        "#: Tags with x's: (mask, value, name, Basic Profile action, option actions);",
        "#: a tag matches when ``tag & mask == value``.",
        "PATTERNS: tuple[tuple[int, int, str, str, tuple[str, ...]], ...] = (",
    ]
    for mask, value in sorted(patterns, key=lambda mv: (mv[1], mv[0])):
        name, basic, options = patterns[(mask, value)]
        lines.append(
            f"    (0x{mask:08X}, 0x{value:08X}, {_s(name)}, {_s(basic)}, {_options(options)}),"
        )
    lines += [
        ")",
        "",
        "#: Table E.3.10-1, one row per attribute: ``CREATOR|GGGG|EE|VR|MEANING``.",
        '_SAFE_ROWS = """\\',
    ]
    for creator, group, element in sorted(safe):
        vr, meaning = safe[(creator, group, element)]
        if "|" in creator + meaning or "\\" in creator + meaning:
            raise SystemExit(f"safe private row {creator} cannot be written as text")
        lines.append(f"{creator}|{group:04X}|{element:02X}|{vr}|{meaning}")
    lines += [
        '"""',
        "",
        "#: Table E.3.10-1: (private creator, group, element byte in the block) -> (VR, meaning).",
        "SAFE_PRIVATE: dict[tuple[str, int, int], tuple[str, str]] = {",
        "    (creator, int(group, 16), int(element, 16)): (vr, meaning)",
        "    for creator, group, element, vr, meaning in (",
        "        row.split('|') for row in _SAFE_ROWS.splitlines()",
        "    )",
        "}",
        "",
    ]
    return _ruff_format("\n".join(lines))


def _ruff_format(text: str) -> str:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "table.py"
        path.write_text(text, encoding="utf-8")
        config = ROOT / "pyproject.toml"
        cmd = [sys.executable, "-m", "ruff", "format", "--config", str(config), str(path)]
        try:
            subprocess.run(cmd, check=True, capture_output=True, text=True)
        except (OSError, subprocess.CalledProcessError) as exc:
            hint = "install the dev extras: pip install -e .[dev]"
            raise SystemExit(f"ruff format failed ({exc}); {hint}") from exc
        return path.read_text(encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if the module is out of date")
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
