"""De-identification profiles: PS3.15 Annex E options chosen per source, read from a file.

A profile is the Basic Application Level Confidentiality Profile plus a set of options
(PS3.15 E.3). The default is the one TCIA uses. A profile file (TOML, ``RADPIPE_DEID_PROFILE``)
can change the default and set options per source, a source being the STOW-RS token name or
the DIMSE calling AE title:

.. code-block:: toml

    [default]
    options = ["rtn_long_modif_dates", "rtn_pat_chars", "rtn_safe_priv",
               "clean_desc", "clean_struct_cont", "clean_graph"]

    [sources.US_ROOM_3]
    options = ["rtn_long_modif_dates", "clean_desc", "clean_struct_cont", "clean_graph"]
    # A pixel cleaner: these rectangles (x0, y0, x1, y1, pixels, end exclusive) are blanked
    # in every frame, so burned-in annotation there is removed instead of quarantined.
    clean_pixel_regions = [[0, 0, 640, 60]]
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from radpipe.common.errors import BadRequest

from .table import OPTIONS

#: CID 7050 codes (scheme DCM) of the profile and each option (PS3.16).
CODES: dict[str, tuple[str, str]] = {
    "basic": ("113100", "Basic Application Confidentiality Profile"),
    "clean_pixel": ("113101", "Clean Pixel Data Option"),
    "clean_graph": ("113103", "Clean Graphics Option"),
    "clean_struct_cont": ("113104", "Clean Structured Content Option"),
    "clean_desc": ("113105", "Clean Descriptors Option"),
    "rtn_long_full_dates": ("113106", "Retain Longitudinal Temporal Information Full Dates Option"),
    "rtn_long_modif_dates": (
        "113107",
        "Retain Longitudinal Temporal Information Modified Dates Option",
    ),
    "rtn_pat_chars": ("113108", "Retain Patient Characteristics Option"),
    "rtn_dev_id": ("113109", "Retain Device Identity Option"),
    "rtn_uids": ("113110", "Retain UIDs Option"),
    "rtn_safe_priv": ("113111", "Retain Safe Private Option"),
    "rtn_inst_id": ("113112", "Retain Institution Identity Option"),
}

#: TCIA's choice: Basic, modified dates, patient characteristics, safe private, and the
#: three cleaning options. Pixels: burned-in annotation is quarantined (no cleaner).
DEFAULT_OPTIONS = frozenset(
    {
        "rtn_long_modif_dates",
        "rtn_pat_chars",
        "rtn_safe_priv",
        "clean_desc",
        "clean_struct_cont",
        "clean_graph",
    }
)

#: Ready-made profiles, by the name a profile file or a test may use: the Basic Profile
#: alone, TCIA's choice (the default), and TCIA's with full dates kept instead of shifted.
BUILT_IN: dict[str, frozenset[str]] = {
    "basic": frozenset(),
    "default": DEFAULT_OPTIONS,
    "full_dates": (DEFAULT_OPTIONS - {"rtn_long_modif_dates"}) | {"rtn_long_full_dates"},
}

#: DICOM's own UID root: SOP classes, transfer syntaxes, coding schemes are not identifying.
STANDARD_UID_ROOT = "1.2.840.10008."

Region = tuple[int, int, int, int]


@dataclass(frozen=True)
class Profile:
    """Options applied to one source's instances."""

    name: str = "default"
    options: frozenset[str] = DEFAULT_OPTIONS
    clean_pixel_regions: tuple[Region, ...] = ()

    def __post_init__(self) -> None:
        unknown = sorted(self.options - set(OPTIONS))
        if unknown:
            raise BadRequest(
                f"profile {self.name!r}: unknown option(s) {', '.join(unknown)}; "
                f"choose from {', '.join(OPTIONS)}"
            )
        if {"rtn_long_full_dates", "rtn_long_modif_dates"} <= self.options:
            raise BadRequest(
                f"profile {self.name!r}: choose one of rtn_long_full_dates and "
                "rtn_long_modif_dates, not both"
            )

    @property
    def cleans_pixels(self) -> bool:
        return bool(self.clean_pixel_regions)

    @property
    def shifts_dates(self) -> bool:
        """Dates move by the patient's keyed offset (Retain Longitudinal Modified Dates);
        otherwise they are kept as they are (Full Dates) or removed (Basic)."""
        return "rtn_long_modif_dates" in self.options

    def temporal_marker(self) -> str:
        """Longitudinal Temporal Information Modified (0028,0303) for this profile."""
        if self.shifts_dates:
            return "MODIFIED"
        return "UNMODIFIED" if "rtn_long_full_dates" in self.options else "REMOVED"

    def method_codes(self, pixels_cleaned: bool = False) -> list[tuple[str, str]]:
        """The CID 7050 codes of what was applied, Basic first (PS3.15 E.1.1 marker rules)."""
        applied = {"basic", *self.options} | ({"clean_pixel"} if pixels_cleaned else set())
        return sorted(CODES[name] for name in applied)

    def method_text(self) -> str:
        """De-identification Method (0012,0063): at most 64 characters per value (LO)."""
        return f"Radpipe PS3.15 E.1-1 {len(self.options)} options ({self.name})"[:64]


@dataclass(frozen=True)
class ProfileSet:
    """The default profile and the per-source ones."""

    default: Profile = field(default_factory=Profile)
    sources: dict[str, Profile] = field(default_factory=dict)

    def for_source(self, source: str | None) -> Profile:
        return self.sources.get(source or "", self.default)


def _profile(name: str, table: dict[str, object], base: Profile) -> Profile:
    unknown = sorted(set(table) - {"options", "clean_pixel_regions"})
    if unknown:
        raise BadRequest(f"profile {name!r}: unknown key(s) {', '.join(unknown)}")
    options = table.get("options", sorted(base.options))
    regions = table.get("clean_pixel_regions", [])
    if not isinstance(options, list) or not all(isinstance(o, str) for o in options):
        raise BadRequest(f"profile {name!r}: options must be a list of option names")
    if not isinstance(regions, list) or not all(
        isinstance(r, list) and len(r) == 4 and all(isinstance(v, int) and v >= 0 for v in r)
        for r in regions
    ):
        raise BadRequest(
            f"profile {name!r}: clean_pixel_regions must be [[x0, y0, x1, y1], ...] in pixels"
        )
    boxes = tuple((r[0], r[1], r[2], r[3]) for r in regions)
    if any(x1 <= x0 or y1 <= y0 for x0, y0, x1, y1 in boxes):
        raise BadRequest(f"profile {name!r}: each region needs x1 > x0 and y1 > y0")
    return Profile(name, frozenset(options), boxes)


def load_profiles(path: Path | None) -> ProfileSet:
    """Read a profile file; ``None`` gives the default profile for every source."""
    if path is None:
        return ProfileSet()
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise BadRequest(f"profile file {path} does not exist: fix RADPIPE_DEID_PROFILE") from None
    except tomllib.TOMLDecodeError as exc:
        raise BadRequest(f"profile file {path} is not valid TOML: {exc}") from None
    unknown = sorted(set(data) - {"default", "sources"})
    if unknown:
        raise BadRequest(f"profile file {path}: unknown section(s) {', '.join(unknown)}")
    default = _profile("default", data.get("default", {}), Profile())
    sources = {
        name: _profile(name, table, default) for name, table in data.get("sources", {}).items()
    }
    return ProfileSet(default, sources)
