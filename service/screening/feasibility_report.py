"""The feasibility report as data: what may be published of the counts, and nothing else.

``publish`` turns the counts into the report: each trial's table of counts, with the relations
a reader knows between them, goes through small-cell suppression (``suppression``); a hidden
count keeps only its mark (``<5`` or ``suppressed``), its value is not in the report at all.
Every way the report is shown (CSV, HTML, the FHIR MeasureReport, a web page) starts from this
object, so none can show more than another. ``FeasibilityReport.as_json`` and ``from_json``
carry it between processes (``feasibility.json``).

The relations of one trial's table, as a reader of the report knows them:

- screened = candidates + potential candidates + ineligible;
- the funnel: screened ≥ after the first criterion ≥ … ≥ after the last ≥ candidates, and
  after the last = candidates + potential candidates (a patient no criterion rules out is not
  ineligible); a criterion that cannot rule anybody out (manual, or by its rule file never
  ``not_met`` for an inclusion, never ``met`` for an exclusion) leaves the count as it was;
- new candidates over the period = the sum of the months, the last month's ≤ candidates, and
  no count above screened.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from typing import Any

from service.screening.feasibility import Counts, TrialCounts
from service.screening.suppression import DEFAULT_THRESHOLD, Suppression, Table, suppress

VERDICT_CELLS = ("screened", "candidate", "potential-candidate", "ineligible")
TOTAL = "new:total"


@dataclass(frozen=True)
class Cell:
    """A published count: its value, or None when hidden, and how it is shown."""

    count: int | None
    shown: str
    hidden: Suppression | None = None

    def as_json(self) -> dict[str, Any]:
        return {"count": self.count, "shown": self.shown, "hidden": self.hidden}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Cell:
        return cls(data["count"], data["shown"], data["hidden"])


@dataclass(frozen=True)
class FunnelStep:
    label: str  # "screened", a criterion id, "candidates"
    text: str
    cell: Cell


@dataclass(frozen=True)
class MonthCount:
    month: str  # YYYY-MM
    end: date  # the as_of it was evaluated at
    new_candidates: Cell


@dataclass(frozen=True)
class TrialReport:
    trial: str
    acronym: str
    nct_id: str
    title: str
    ruleset_version: str
    verdicts: dict[str, Cell]  # screened, candidate, potential-candidate, ineligible
    funnel: tuple[FunnelStep, ...]
    months: tuple[MonthCount, ...]
    new_candidates: Cell  # over the whole period


@dataclass(frozen=True)
class FeasibilityReport:
    start: date
    end: date
    threshold: int
    source: str  # "NDJSON folder" or "FHIR server"
    trials: tuple[TrialReport, ...]
    input_issues: int

    def as_json(self) -> dict[str, Any]:
        return {
            "from": self.start.isoformat(),
            "to": self.end.isoformat(),
            "threshold": self.threshold,
            "source": self.source,
            "input_issues": self.input_issues,
            "trials": [_trial_json(t) for t in self.trials],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> FeasibilityReport:
        return cls(
            date.fromisoformat(data["from"]),
            date.fromisoformat(data["to"]),
            int(data["threshold"]),
            data["source"],
            tuple(_trial_from_json(t) for t in data["trials"]),
            int(data["input_issues"]),
        )


def _trial_json(trial: TrialReport) -> dict[str, Any]:
    return {
        "trial": trial.trial,
        "acronym": trial.acronym,
        "nct_id": trial.nct_id,
        "title": trial.title,
        "ruleset_version": trial.ruleset_version,
        "verdicts": {name: cell.as_json() for name, cell in trial.verdicts.items()},
        "funnel": [{"step": s.label, "text": s.text, **s.cell.as_json()} for s in trial.funnel],
        "months": [
            {"month": m.month, "as_of": m.end.isoformat(), **m.new_candidates.as_json()}
            for m in trial.months
        ],
        "new_candidates": trial.new_candidates.as_json(),
    }


def _trial_from_json(data: dict[str, Any]) -> TrialReport:
    return TrialReport(
        data["trial"],
        data["acronym"],
        data["nct_id"],
        data["title"],
        data["ruleset_version"],
        {name: Cell.from_json(cell) for name, cell in data["verdicts"].items()},
        tuple(FunnelStep(s["step"], s["text"], Cell.from_json(s)) for s in data["funnel"]),
        tuple(
            MonthCount(m["month"], date.fromisoformat(m["as_of"]), Cell.from_json(m))
            for m in data["months"]
        ),
        Cell.from_json(data["new_candidates"]),
    )


def trial_table(counts: TrialCounts, months: list[str]) -> Table:
    """One trial's counts (named as in the report) and the relations between them."""
    ruleset = counts.ruleset
    values: dict[str, int] = {"screened": sum(counts.verdicts.values())}
    for verdict in VERDICT_CELLS[1:]:
        values[verdict] = counts.verdicts.get(verdict, 0)
    steps = counts.funnel[1:-1]  # between "screened" and "candidates"
    for step in steps:
        values[f"step:{step.label}"] = step.count
    for month, count in zip(months, counts.new_candidates, strict=True):
        values[f"new:{month}"] = count
    values[TOTAL] = sum(counts.new_candidates)
    table = Table(values)
    table.sums.append(("screened", ("candidate", "potential-candidate", "ineligible")))
    criteria = {c.id: c for c in ruleset.criteria}
    previous = "screened"
    for step in steps:
        name = f"step:{step.label}"
        table.orders.append((previous, name))
        criterion = criteria[step.label]
        ruling_out = "not_met" if criterion.kind == "inclusion" else "met"
        if ruling_out not in criterion.possible_results:
            table.sums.append((name, (previous,)))  # it rules nobody out
        previous = name
    table.sums.append((previous, ("candidate", "potential-candidate")))
    table.orders.append((previous, "candidate"))
    table.sums.append((TOTAL, tuple(f"new:{m}" for m in months)))
    table.orders.append(("candidate", f"new:{months[-1]}"))
    table.orders.append(("screened", TOTAL))  # distinct patients (the rest follows)
    return table


def publish(counts: Counts, threshold: int = DEFAULT_THRESHOLD) -> FeasibilityReport:
    """The report: the counts with the small ones, and as many others as it takes, hidden."""
    labels = [m.label for m in counts.months]
    trials = []
    for trial in counts.trials:
        table = trial_table(trial, labels)
        hidden = suppress(table, threshold)

        def cell(name: str, table: Table = table, hidden: dict[str, Suppression] = hidden) -> Cell:
            kind = hidden.get(name)
            if kind is None:
                return Cell(table.counts[name], str(table.counts[name]))
            return Cell(None, f"<{threshold}" if kind == "small" else "suppressed", kind)

        ruleset = trial.ruleset
        funnel = [FunnelStep("screened", trial.funnel[0].text, cell("screened"))]
        funnel += [FunnelStep(s.label, s.text, cell(f"step:{s.label}")) for s in trial.funnel[1:-1]]
        funnel.append(FunnelStep("candidates", trial.funnel[-1].text, cell("candidate")))
        trials.append(
            TrialReport(
                ruleset.id,
                ruleset.trial.acronym,
                ruleset.trial.nct_id,
                " ".join(ruleset.trial.title.split()),
                ruleset.run_version,
                {name: cell(name) for name in VERDICT_CELLS},
                tuple(funnel),
                tuple(MonthCount(m.label, m.end, cell(f"new:{m.label}")) for m in counts.months),
                cell(TOTAL),
            )
        )
    return FeasibilityReport(
        counts.start,
        counts.end,
        threshold,
        counts.source,
        tuple(trials),
        sum(log.total for log in counts.issues),
    )
