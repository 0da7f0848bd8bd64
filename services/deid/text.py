"""Clean Descriptors (PS3.15 E.3.5): identifying tokens out of free text, the clinical rest kept.

"CT CHEST for Jane Doe" becomes "CT CHEST". Two sources of what to remove: the instance's own
identifiers (names at any depth, patient and accession ids, addresses, phone numbers, dates,
institution and station names), and patterns for dates, phone numbers, e-mail addresses and
MRN-like ids. A connecting word left dangling before a removed token ("for", "MRN:", "call")
goes with it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

_MONTHS = (
    "jan(?:uary)?|feb(?:ruary)?|mar(?:ch)?|apr(?:il)?|may|june?|july?|aug(?:ust)?|"
    "sep(?:t(?:ember)?)?|oct(?:ober)?|nov(?:ember)?|dec(?:ember)?"
)

#: Patterns applied to descriptors (Clean Descriptors and Clean Structured Content).
PATTERNS = re.compile(
    "|".join(
        (
            r"\b(?:19|20)\d{2}[-/.](?:0?[1-9]|1[0-2])[-/.](?:0?[1-9]|[12]\d|3[01])\b",
            r"\b(?:0?[1-9]|[12]\d|3[01])[-/.](?:0?[1-9]|[12]\d|3[01])[-/.](?:19|20)?\d{2}\b",
            r"\b(?:19|20)\d{2}(?:0[1-9]|1[0-2])(?:0[1-9]|[12]\d|3[01])\b",
            rf"\b(?:\d{{1,2}}(?:st|nd|rd|th)?\s+(?:{_MONTHS})\.?,?\s+(?:19|20)\d{{2}})\b",
            rf"\b(?:(?:{_MONTHS})\.?\s+\d{{1,2}}(?:st|nd|rd|th)?,?\s+(?:19|20)\d{{2}})\b",
            r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+",
            r"(?<![\w.])\+?\(?\d(?:[\d ()./-]*\d){6,}(?![\w.])",
            r"\b(?=[A-Za-z#-]*\d)[A-Za-z]{0,4}[#-]?\d{5,}[A-Za-z]?\b",
        )
    ),
    re.IGNORECASE,
)

#: A capitalised name after a word that introduces a person ("performed by Smith", "for Jane
#: Doe", "Dr. Who"), even when the instance does not name that person anywhere else.
NAMED = re.compile(
    r"(?i:\b(?:by|dr|for|pt|patient|mr|mrs|ms|miss|prof|physician|signed|referred|tech)\b\.?:?)"
    r"[ \t]+([A-Z][a-z'-]+\.?(?:[ \t]+[A-Z][a-z'-]+\.?){0,2})(?=[\s,;:)]|$)"
)

#: Words that only introduce an identifier; removed when the identifier after them is.
_LEADERS = {
    "for",
    "pt",
    "pt.",
    "patient",
    "name",
    "name:",
    "mrn",
    "mrn:",
    "mrn#",
    "id",
    "id:",
    "id#",
    "no",
    "no.",
    "#",
    "dob",
    "dob:",
    "born",
    "call",
    "tel",
    "tel:",
    "tel.",
    "phone",
    "phone:",
    "ph",
    "ph:",
    "dr",
    "dr.",
    "mr",
    "mr.",
    "mrs",
    "mrs.",
    "ms",
    "ms.",
    "by",
    "at",
    "on",
    "acc",
    "acc:",
    "accession",
    "accession:",
    "email",
    "e-mail",
    "-",
    ":",
    ",",
}
_MARK = "\x00"
_SPLIT = re.compile(r"[\^=,\s]+")


def identifier_tokens(names: Iterable[str], values: Iterable[str] = ()) -> set[str]:
    """Person names with each component (``^``, ``=``, spaces; 2+ characters), and other
    identifying values whole (an institution's name, not each of its words)."""
    tokens = {v.strip() for v in values if len(v.strip()) >= 2}
    for name in names:
        name = name.strip()
        if len(name) < 2:
            continue
        tokens.add(name)
        for piece in _SPLIT.split(name):
            piece = piece.strip(".")
            if len(piece) >= 2:
                tokens.add(piece)
    return tokens


class TextCleaner:
    """Removes the given identifiers (case-insensitive, whole tokens) and, with ``patterns``,
    anything that looks like a date, phone number, e-mail address or MRN."""

    def __init__(self, names: Iterable[str], values: Iterable[str] = ()) -> None:
        tokens = sorted(identifier_tokens(names, values), key=len, reverse=True)
        self._known = (
            re.compile(
                "|".join(rf"(?<![^\W_]){re.escape(t)}(?![^\W_])" for t in tokens),
                re.IGNORECASE,
            )
            if tokens
            else None
        )

    def clean(self, text: str, patterns: bool = True) -> str:
        marked = text
        if patterns:
            marked = PATTERNS.sub(_MARK, marked)
            marked = NAMED.sub(_mark_name, marked)
        if self._known:
            marked = self._known.sub(_MARK, marked)
        if _MARK not in marked:
            return text
        return _tidy(marked)


def _mark_name(match: re.Match[str]) -> str:
    whole = match.group(0)
    return whole[: match.start(1) - match.start(0)] + _MARK


def _tidy(marked: str) -> str:
    """Drop the marks, the leader words right before them, and the leftover separators."""
    words = re.split(r"(\s+)", marked.replace(_MARK, f" {_MARK} "))
    kept: list[str] = []
    for word in words:
        if _MARK in word:
            while kept and (kept[-1].isspace() or kept[-1].lower() in _LEADERS):
                kept.pop()
            continue
        kept.append(word)
    text = "".join(kept)
    text = re.sub(r"\s{2,}", " ", text)
    text = re.sub(r"\s+([,;:.)])", r"\1", text)
    text = re.sub(r"\(\s*\)|\[\s*\]", "", text)
    return text.strip(" ,;:-/^=()")
