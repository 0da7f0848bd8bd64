"""Clean Descriptors (PS3.15 E.3.5): identifying tokens out of free text, the clinical rest kept.

"CT CHEST for Jane Doe" becomes "CT CHEST". What is removed:

* the instance's own identifiers (names at any depth, patient and accession ids, dates,
  institution and station names), and each part of its own addresses (street, town, postcode);
* with ``patterns`` (attributes Table E.1-1 marks ``C``, and structured content): anything that
  looks like a date, phone number, e-mail address or MRN; names after a kinship or role word
  ("daughter Anna", "contact: MARK", "Dr Ruiz", "by Okafor"); and given and family names from
  the 1990 US Census lists (:mod:`radpipe.deid.names`).

A connecting word left dangling before a removed token ("for", "MRN:", "call") goes with it;
every other character is kept as it was. Text that cannot be checked (letters of a script the
names list does not cover) is reported as not cleanable, and the caller writes a dummy.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from .names import is_ambiguous_name, is_name


def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


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
            r"(?<![\w.])(?=[A-Za-z#-]*\d)[A-Za-z]{0,4}[#-]?\d{5,}[A-Za-z]?\b(?![.,]\d)",
        )
    ),
    re.IGNORECASE,
)

#: Phone numbers: optional +country and (area), then groups of 2-5 digits, 7 digits or more in
#: all; the groups' size keeps decimals out ("(4.6 ACRIN)", "0.5 1.0 2.0 5.0 mm").
PHONE = re.compile(
    r"(?<![\w.])(?:\+\d{1,3}[ .-]?)?(?:\(\d{1,5}\)[ .-]?)?\d{2,5}(?:[ .-]\d{2,5}){1,4}(?![\w.])"
    r"|(?<![\w.])\d{7,}(?![\w.])"
)

#: Words after which the next words are a person's name: kinship and contact words (a
#: capitalised word, or a listed name), and titles (a listed name, or a capitalised word in
#: mixed-case text; "MR" and "MS" in capitals are modalities and diagnoses, not titles).
KIN = _words(
    """
    daughter son wife husband mother father brother sister guardian contact partner spouse
    parent niece nephew aunt uncle grandson granddaughter grandmother grandfather caregiver
    carer friend nok
    """
)
TITLES = frozenset({"dr", "doctor", "mr", "mrs", "ms", "miss", "prof"})
_CAPS_NOT_TITLES = frozenset({"MR", "MS", "MRS"})

#: Words after which a listed name, or a capitalised word where the role word itself is lower
#: case ("performed by Zorblax", not "Chest For Review"), is a person's name; after the "by"
#: words an ambiguous listed name ("by SMITH") counts too, after "for" it does not ("for BONE
#: AGE").
BY = frozenset({"by", "physician", "signed", "referred", "tech", "technologist"})
FOR = frozenset({"for", "pt", "patient"})
_INTRODUCERS = KIN | TITLES | BY | FOR

#: Words that never start or continue a name after a kinship or role word.
_STOP = _words(
    """
    a an the and or of to on at in is was are be been as if so no not nor per via from into
    onto upon about after before during within without has had have who whom whose which
    that this these those it its his her their our your my me him them she he we they you
    aware present informed notified called contacted available deceased alive requests
    requested wants says reports states declined consented consent bedside accompanied
    accompanying phone tel telephone mobile cell home work number email e-mail please call
    page pager ext details info only also same here there now today tomorrow yesterday when
    asap stat urgent name named mrn id dob age aged years year yrs yo
    """
)

#: Words a name can be joined to by ``is``, ``:`` and the like before the name itself.
_LINKS = frozenset({"is", "named", "name", "called", "-", ":", "(", "=", "'s"})

#: Heads of clinical eponyms: a listed name right before one is kept ("Jones fracture",
#: "Foley catheter", "Waters view", "Hodgkin lymphoma", "Kerley B lines").
EPONYM_HEADS = _words(
    """
    fracture fractures disease syndrome sign view views projection position catheter line
    lines filter lymphoma sarcoma tumor tumour procedure operation classification grade
    palsy esophagus oesophagus ring node nodes neuroma cyst diverticulum malformation
    hernia duct canal space pouch fundoplication shunt tube drain rod rods disc nodule
    lesion criteria score scale index sequence technique method protocol maneuver manoeuvre
    test effect artifact artefact anomaly ulcer fascia ligament triangle body bodies cell
    cells phenomenon reaction staging stage carcinoma adenoma valve fossa foramen gland
    glands angle classification reflux stenosis aneurysm hematoma deformity dislocation
    lesions notch tubercle process area areas
    """
)
#: Names that stand for a clinical eponym far more often than for a person here.
EPONYMS = frozenset(
    {"willis", "kerley", "gleason", "glasgow", "parkinson", "pugh", "hodgkin", "crohn", "wilms"}
)
#: Eponyms of two or three names ("Salter-Harris II", "Mallory-Weiss tear", "Hill Sachs").
EPONYM_PAIRS = _words(
    """
    salter-harris hill-sachs mallory-weiss swan-ganz dandy-walker arnold-chiari child-pugh
    kellgren-lawrence guillain-barre creutzfeldt-jakob osgood-schlatter klippel-feil
    budd-chiari stein-leventhal ehlers-danlos peutz-jeghers wolff-parkinson-white
    legg-calve-perthes charcot-marie-tooth
    """
)
_QUALIFIERS = re.compile(r"^(?:[ivx]+|[a-d]|\d+|type)$", re.IGNORECASE)

#: Words that only introduce an identifier; removed when the identifier after them is.
_LEADERS = _words(
    """
    for pt pt. patient name name: mrn mrn: mrn# id id: id# no no. # dob dob: born call tel
    tel: tel. phone phone: ph ph: dr dr. mr mr. mrs mrs. ms ms. by at on acc acc: accession
    accession: email e-mail is named - : ,
    """
)
_MARK = "\x00"
_DIGIT_OR_AT = re.compile(r"[\d@]")
_SPLIT = re.compile(r"[\^=,\s]+")
_WORD = re.compile(r"[^\W\d_](?:[^\W\d_]|['’-](?=[^\W\d_]))*")
_TOKEN = re.compile(r"\x00|[^\W\d_](?:[^\W\d_]|['’-](?=[^\W\d_]))*|[:(=-]")
_ADDRESS_PARTS = re.compile(r"[,;\n\r^]+")
#: Words of an address too common to remove on their own (the part they are in still goes).
_STREET_WORDS = _words(
    """
    street st road rd lane ln avenue ave av drive dr court ct place pl boulevard blvd way
    apt apartment suite unit north south east west n s e w the of and po box floor flat
    house city county state usa us uk terrace close crescent square sq highway hwy route
    rte hospital clinic centre center medical health university general building department
    wing campus room level block
    """
)


def identifier_tokens(
    names: Iterable[str], values: Iterable[str] = (), addresses: Iterable[str] = ()
) -> set[str]:
    """Person names with each component (``^``, ``=``, spaces; 2+ characters), other
    identifying values whole (an institution's name, not each of its words), and addresses
    whole, by part (``12 Elm Lane``, ``Springfield``) and by distinctive word (``Elm``)."""
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
    for address in addresses:
        tokens |= _address_tokens(address)
    return tokens


def _address_tokens(address: str) -> set[str]:
    found = {address.strip()} if len(address.strip()) >= 2 else set()
    for part in _ADDRESS_PARTS.split(address):
        part = " ".join(part.split())
        if len(part) < 2:
            continue
        found.add(part)
        street = re.sub(r"^\d+[a-z]?\s+", "", part, flags=re.IGNORECASE)
        if street != part and len(street) >= 3:
            found.add(street)  # "Elm Lane" without its house number
        for word in part.split():
            bare = word.strip(".#")
            lower = bare.lower()
            if lower in _STREET_WORDS:
                continue
            if bare.isalpha() and len(bare) >= 3:
                found.add(bare)
            elif any(c.isdigit() for c in bare) and len(bare) >= 4:
                found.add(bare)  # a postcode, or a house number with its letter
    return found


class TextCleaner:
    """Removes the given identifiers (case-insensitive, whole tokens) and, with ``patterns``,
    anything that looks like a date, phone number, e-mail address, MRN or person name."""

    def __init__(
        self, names: Iterable[str], values: Iterable[str] = (), addresses: Iterable[str] = ()
    ) -> None:
        tokens = sorted(identifier_tokens(names, values, addresses), key=len, reverse=True)
        self._known = (
            re.compile(
                "|".join(rf"(?<![^\W_]){re.escape(t)}(?![^\W_])" for t in tokens),
                re.IGNORECASE,
            )
            if tokens
            else None
        )

    def clean(self, text: str, patterns: bool = True) -> str | None:
        """``text`` without identifiers; ``None`` when it cannot be checked with confidence
        (letters of a script the names list does not cover): write a dummy instead."""
        marked = text
        if patterns:
            if not _checkable(text):
                return None
            if _DIGIT_OR_AT.search(marked):  # every pattern needs a digit or an "@"
                marked = PATTERNS.sub(_MARK, PHONE.sub(_phone_mark, marked))
        if self._known:
            marked = self._known.sub(_MARK, marked)
        if patterns:
            marked = _mark_names(marked)
        if _MARK not in marked:
            return text
        return _tidy(marked)


def _phone_mark(match: re.Match[str]) -> str:
    """A mark for a phone number; digit groups too short for one stay ("2020 11 3")."""
    found = match.group(0)
    return _MARK if sum(c.isdigit() for c in found) >= 7 else found


def _checkable(text: str) -> bool:
    """Latin letters only (ASCII and Latin-1/Extended-A/B): what the names list covers."""
    return text.isascii() or all(ord(c) <= 0x24F or not c.isalpha() for c in text)


def _bare(word: str) -> str:
    lower = word.lower()
    return lower[:-2] if lower.endswith(("'s", "’s")) else lower


def _name_like(word: str, kind: str, mixed: bool, caps: bool) -> bool:
    """Could ``word`` be (part of) a person's name after an introducer of ``kind``? ``caps``:
    the introducer itself is in capitals ("WIFE ZORBLAX" in otherwise mixed-case text)."""
    lower = _bare(word)
    if lower in _STOP or lower in _INTRODUCERS:
        return False
    if is_name(lower):
        return True
    ambiguous = is_ambiguous_name(lower)
    shouted = mixed and word.isupper() and len(word) > 1 and not caps
    capitalised = word[0].isupper() and not shouted
    title_case = mixed and word[0].isupper() and not word.isupper()
    if kind == "kin":
        return capitalised or (ambiguous and not (mixed and word.islower()))
    if kind == "title":
        return title_case or (ambiguous and not (mixed and word.islower()))
    if kind in ("caps-title", "listed"):  # "MR BRAIN", "MS PLAQUES": only a sure name
        return False
    if kind == "by":
        return title_case or (ambiguous and not (mixed and word.islower()))
    return title_case  # "for": a capitalised word in mixed-case text


def _introducer(word: str, following: str, mixed: bool, title_case: bool) -> str:
    """The kind of name introducer ``word`` is ("" for none); ``title_case``: most words of
    the text are capitalised ("Follow Up For Bone Age"), so capitals say nothing there."""
    lower = _bare(word)
    if lower in KIN:
        return "kin"
    if lower in TITLES:
        caps = word in _CAPS_NOT_TITLES and following != "."
        return "caps-title" if caps else "title"
    if lower in BY or lower in FOR:
        if mixed and (title_case or not word.islower()):
            return "listed"  # "Chest For Review": Title Case text, only sure names count
        return "by" if lower in BY else "for"
    return ""


def _mark_names(marked: str) -> str:
    """Mark names after kinship and role words, listed names, and ambiguous listed names
    next to a marked name (Title-case, in mixed-case text)."""
    if not any(map(_might_matter, _WORD.findall(marked))):
        return marked  # the usual descriptor: no introducer, no listed name (fast path)
    tokens = list(_TOKEN.finditer(marked))
    mixed = any(c.islower() for c in marked) and any(c.isupper() for c in marked)
    words = [t.group(0) for t in tokens]
    capitalised = sum(1 for w in words if w[:1].isupper() and not w.isupper())
    title_case = capitalised > sum(1 for w in words if w.islower())
    hit = [False] * len(words)
    index = 0
    while index < len(words):
        after = marked[tokens[index].end() : tokens[index].end() + 1]
        kind = _introducer(words[index], after, mixed, title_case)
        if kind:
            j = index + 1
            while j < len(words) and words[j].lower() in _LINKS:
                j += 1
            taken = 0
            while j < len(words) and taken < 3 and words[j] != _MARK:
                word = words[j]
                caps = words[index].isupper() and len(words[index]) > 1
                if not _WORD.fullmatch(word) or not _name_like(word, kind, mixed, caps):
                    break
                hit[j] = True
                taken += 1
                j += 1
            index = max(index + 1, j if taken else index + 1)
            continue
        if words[index] != _MARK and _WORD.fullmatch(words[index]):
            bare = _bare(words[index])
            listed = is_name(bare) or ("-" in bare and any(map(is_name, bare.split("-"))))
            if listed and not _eponym(words, index, bare):
                hit[index] = True
        index += 1
    if mixed:  # "Anna Long": an ambiguous name next to a sure one, both capitalised
        for i, word in enumerate(words):
            if hit[i] or not word[:1].isupper() or word.isupper():
                continue
            if not is_ambiguous_name(_bare(word)):
                continue
            near = (i > 0 and hit[i - 1]) or (i + 1 < len(words) and hit[i + 1])
            if near and not _eponym(words, i, _bare(word)):
                hit[i] = True
    if not any(hit):
        return marked
    out = []
    last = 0
    for token, marked_here in zip(tokens, hit, strict=True):
        if marked_here:
            out.append(marked[last : token.start()])
            out.append(_MARK)
            last = token.end()
    out.append(marked[last:])
    return "".join(out)


def _might_matter(word: str) -> bool:
    """An introducer or a listed name (ambiguous names only count next to those)."""
    lower = _bare(word)
    if lower in _INTRODUCERS or is_name(lower):
        return True
    return "-" in lower and any(map(is_name, lower.split("-")))


def _eponym(words: list[str], index: int, lower: str) -> bool:
    """A name used as a clinical eponym: "Jones fracture", "circle of Willis", "Salter
    Harris II"."""
    if lower in EPONYMS or lower in EPONYM_PAIRS:
        return True
    before = _bare(words[index - 1]) if index > 0 else ""
    after = _bare(words[index + 1]) if index + 1 < len(words) else ""
    if f"{before}-{lower}" in EPONYM_PAIRS or f"{lower}-{after}" in EPONYM_PAIRS:
        return True
    j = index + 1
    while j < len(words) and j <= index + 3:
        word = words[j].lower()
        if word in EPONYM_HEADS:
            return True
        if _QUALIFIERS.match(word) or word == "-" or is_name(word) or is_ambiguous_name(word):
            j += 1  # "Salter-Harris II fracture", "Kerley B lines"
            continue
        return False
    return False


_SEP = r"[,;:/^=-]"
_GROUP = re.compile(rf"{_MARK}(?:[\s,;:/^=-]*{_MARK})+")
_BRACKETED = re.compile(rf"\(\s*{_MARK}\s*\)|\[\s*{_MARK}\s*\]")
_AT_START = re.compile(rf"^[\s,;:/^=-]*{_MARK}[\s,;:/^=-]*")
_AT_END = re.compile(rf"[\s,;:/^=-]*{_MARK}[\s,;:/^=-]*$")
_BEFORE_SEPARATOR = re.compile(rf"[ \t]*(?:{_SEP}[ \t]*)?{_MARK}[ \t]*({_SEP})")
_BETWEEN_WORDS = re.compile(rf"[ \t]*{_MARK}[ \t]*")


def _tidy(marked: str) -> str:
    """Drop the marks, the leader words right before them, and the separators they leave
    hanging; everything away from a removal (brackets, "--", "://") stays as it was."""
    words = re.split(r"(\s+)", marked.replace(_MARK, f" {_MARK} "))
    kept: list[str] = []
    for word in words:
        if _MARK in word:
            while kept and (kept[-1].isspace() or kept[-1].lower() in _LEADERS):
                kept.pop()
            kept.append(word)
            continue
        kept.append(word)
    text = "".join(kept)
    text = _GROUP.sub(_MARK, text)  # "DOE, JANE" -> one removal
    text = _BRACKETED.sub(_MARK, text)  # "(Saint Radpipe Hospital)" goes whole
    text = _GROUP.sub(_MARK, text)
    text = _AT_START.sub("", text)
    text = _AT_END.sub("", text)
    text = _BEFORE_SEPARATOR.sub(r"\1", text)  # "seen X, contact" -> "seen, contact"
    text = _BETWEEN_WORDS.sub(" ", text)
    return text.strip()
