"""The attrition funnel of a trial as the overview lists it; its counts come from
``service/screening/funnel.py`` (the feasibility report counts the same funnel).

The steps: the patients in the source (the latest finished population run's), those screened,
those still in after each criterion (named by its title), the candidates. Each step says how
many patients it ruled out and links to them. The bars are HTML, not a drawing: their words
stay the page's size on a phone.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from service.ruleset.loader import Criterion
from service.screening.funnel import Step, attrition

__all__ = ["CANDIDATES", "FunnelRow", "Step", "attrition", "funnel_rows"]

CANDIDATES = "candidates"


@dataclass(frozen=True)
class FunnelRow:
    key: str  # source | screened | a criterion id | candidates
    title: str
    text: str
    count: int
    width: float  # the bar, in % of the widest step
    ruled_out: int | None  # patients this step ruled out (None: a step that rules out nobody)
    link: str  # the list of those patients ("" when none, or not for this person's role)
    kind: str  # inclusion | exclusion | "" (a step that is no criterion)


def funnel_rows(
    criteria: list[Criterion],
    steps: list[Step],
    source: tuple[int, str] | None,
    link_of: Callable[[str], str] | None,
) -> list[FunnelRow]:
    """``steps`` from ``attrition``; ``source``: (patients, what they are) when a population
    run has finished; ``link_of(step)``: the list of the patients a step ruled out (None: no
    links, for a role that sees counts only)."""
    by_id = {c.id: c for c in criteria}
    top = max([s.count for s in steps] + [source[0] if source else 0]) or 1

    def width(count: int) -> float:
        return round(100 * count / top, 1)

    def link(key: str, out: int) -> str:
        return link_of(key) if link_of is not None and out > 0 else ""

    rows = []
    if source is not None:
        patients, words = source
        rows.append(
            FunnelRow("source", "In the source", words, patients, width(patients), None, "", "")
        )
    screened = steps[0].count
    rows.append(
        FunnelRow(
            "screened", "Screened", "patients screened", screened, width(screened), None, "", ""
        )
    )
    previous = screened
    for step in steps[1:-1]:
        criterion = by_id.get(step.label)
        out = previous - step.count
        rows.append(
            FunnelRow(
                step.label,
                criterion.title if criterion else step.label,
                criterion.text if criterion else step.text,
                step.count,
                width(step.count),
                out,
                link(step.label, out),
                criterion.kind if criterion else "",
            )
        )
        previous = step.count
    candidates = steps[-1].count
    out = previous - candidates
    rows.append(
        FunnelRow(
            CANDIDATES,
            "Candidates",
            "every criterion decidable from the data met; the others still in are potential "
            "candidates, with a criterion to check",
            candidates,
            width(candidates),
            out,
            link(CANDIDATES, out),
            "",
        )
    )
    return rows
