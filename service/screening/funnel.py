"""The attrition funnel of a trial: patients screened, then those still in after each criterion
in the rule set's order, then the candidates. The web worklist draws it (``service/ui/funnel``)
and the feasibility report counts it (``feasibility``).

A patient is still in after a criterion unless it rules them out (an inclusion ``not_met`` or an
exclusion ``met``): an ``unknown`` keeps them in, as it keeps them on the worklist. So the count
after the last criterion is that of the candidates and potential candidates together.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Step:
    label: str  # short: a criterion id, or "screened" / "candidates"
    text: str  # what the step means, for the table beside the chart
    count: int


def rules_out(kind: str, result: str | None) -> bool:
    return (kind == "inclusion" and result == "not_met") or (
        kind == "exclusion" and result == "met"
    )


def attrition(
    criteria: list[tuple[str, str, str]], results: Iterable[dict[str, Any]]
) -> list[Step]:
    """``criteria``: (id, inclusion|exclusion, text) in the rule set's order; ``results``:
    verdicts.ndjson lines (or what holds their ``criteria`` and ``verdict``)."""
    return attrition_of(
        criteria,
        (
            (
                {cid: (c or {}).get("result") for cid, c in (line.get("criteria") or {}).items()},
                line.get("verdict"),
            )
            for line in results
        ),
    )


def attrition_of(
    criteria: Sequence[tuple[str, str, str]],
    results: Iterable[tuple[Mapping[str, str | None], str | None]],
) -> list[Step]:
    """The funnel from (result by criterion id, verdict) of each patient."""
    screened = candidates = 0
    still_in = [0] * len(criteria)
    for found, verdict in results:
        screened += 1
        for index, (cid, kind, _text) in enumerate(criteria):
            if rules_out(kind, found.get(cid)):
                break
            still_in[index] += 1
        if verdict == "candidate":
            candidates += 1
    steps = [Step("screened", "patients screened", screened)]
    for (cid, kind, text), count in zip(criteria, still_in, strict=True):
        meaning = f"not excluded: {text}" if kind == "exclusion" else text
        steps.append(Step(cid, meaning, count))
    steps.append(
        Step("candidates", "candidates: every criterion decidable from data met", candidates)
    )
    return steps
