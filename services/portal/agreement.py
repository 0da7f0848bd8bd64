"""A resident's agreement over time: per read, presence agreement with the AI and with the
attending, the RADPEER score; overall, Cohen's kappa on finding presence against each.

Cohen's kappa (Cohen 1960): kappa = (p_o - p_e) / (1 - p_e), with p_o the observed agreement
and p_e the agreement expected by chance from each rater's own rate of "present"; it is "n/a"
where p_e is 1 (both raters gave one answer throughout) or there is no pair.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from radpipe.common import blinding
from radpipe.common.auth import AuthService, Principal
from radpipe.common.context import Context
from radpipe.common.errors import Forbidden

from .reading import with_comparison


def cohen_kappa(pairs: list[tuple[bool, bool]]) -> float | str:
    """Cohen's kappa of two raters' yes/no answers; "n/a" when undefined."""
    if not pairs:
        return "n/a"
    n = len(pairs)
    observed = sum(a == b for a, b in pairs) / n
    yes_a = sum(a for a, _ in pairs) / n
    yes_b = sum(b for _, b in pairs) / n
    expected = yes_a * yes_b + (1 - yes_a) * (1 - yes_b)
    if expected >= 1.0:
        return "n/a"
    return round((observed - expected) / (1 - expected), 4)


def agreement(ctx: Context, caller: Principal, resident: str) -> dict[str, Any]:
    """The resident's reads, oldest first, with their comparisons, kappas and weekly rates.

    Raises:
        Forbidden: a resident asking for another resident's page.
    """
    if caller.role == "resident" and caller.name != resident:
        raise Forbidden("a resident sees their own agreement page only")
    reads = list(ctx.documents.collection(blinding.READS).find({"by": resident}).sort("at", 1))
    # The page shows these studies' reads and AI comparisons: the entry names them.
    AuthService(ctx.documents).audit(
        caller,
        "resident.agreement.view",
        resident,
        ids=list(dict.fromkeys(r["study_id"] for r in reads)),
    )
    rows: list[dict[str, Any]] = []
    versus: dict[str, list[tuple[bool, bool]]] = {"ai": [], "attending": []}
    weekly: dict[str, dict[str, list[bool]]] = defaultdict(lambda: {"ai": [], "attending": []})
    for read in reads:
        study = ctx.studies.find(read["study_id"])
        if study is None:
            continue
        compared = with_comparison(ctx, study, read)
        week = read["at"].strftime("%G-W%V")
        for side in ("ai", "attending"):
            c = compared["comparison"].get(side)
            if c is None:
                continue
            present = read["finding_present"]
            other = present if c["finding_present_agree"] else not present
            versus[side].append((read["finding_present"], other))
            weekly[week][side].append(c["finding_present_agree"])
        rows.append(compared)
    return {
        "resident": resident,
        "reads": rows,
        "kappa": {side: cohen_kappa(pairs) for side, pairs in versus.items()},
        "pairs": {side: len(pairs) for side, pairs in versus.items()},
        "weeks": [
            {
                "week": week,
                **{side: round(sum(v) / len(v), 4) if v else "n/a" for side, v in sides.items()},
                "reads": max(len(sides["ai"]), len(sides["attending"])),
            }
            for week, sides in sorted(weekly.items())
        ],
    }
