"""Who may do what: the roles of tokens and users (see ``docs/security.md``)."""

from __future__ import annotations

from typing import Literal

Role = Literal["modality", "radiologist", "resident", "oncall", "manager", "admin", "auditor"]
ROLES: tuple[str, ...] = (
    "modality",
    "radiologist",
    "resident",
    "oncall",
    "manager",
    "admin",
    "auditor",
)
#: Roles allowed to see re-identified data (the source UID lookup, the vault).
CLINICAL_ROLES: frozenset[str] = frozenset({"radiologist", "resident", "oncall"})
