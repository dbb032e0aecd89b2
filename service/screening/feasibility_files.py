"""The files of a feasibility report, each drawn from the published report only
(``feasibility_report.FeasibilityReport``): a hidden count is shown by its mark everywhere.

- ``feasibility.json``: the report as data (``FeasibilityReport.as_json``);
- ``feasibility.csv``: one row per count (trial, section, item, as_of, count, shown, hidden);
- ``feasibility.html``: a printable page with a table and a chart per section;
- ``MeasureReport.json``: a FHIR R4 MeasureReport of type summary, one group per trial, a
  population per step of the funnel and the new candidates per month as a stratifier;
- ``feasibility.png``: new candidates per month (with the plot extra: ``plots``).
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from markupsafe import Markup, escape

from service.research import validated
from service.screening import output
from service.screening.feasibility_report import (
    Cell,
    FeasibilityReport,
    FunnelStep,
    MonthCount,
    TrialReport,
)

JSON, CSV, HTML, MEASURE_REPORT, PLOT = (
    "feasibility.json",
    "feasibility.csv",
    "feasibility.html",
    "MeasureReport.json",
    "feasibility.png",
)
POPULATION_SYSTEM = "urn:prescreen:feasibility-population"
CRITERION_SYSTEM_PREFIX = "urn:prescreen:criterion:"
MEASURE = "urn:prescreen:measure:feasibility"
DATA_ABSENT_REASON = "http://hl7.org/fhir/StructureDefinition/data-absent-reason"
MEASURE_POPULATION = "http://terminology.hl7.org/CodeSystem/measure-population"
VERDICT_LABELS = {
    "screened": "patients screened",
    "candidate": "candidates",
    "potential-candidate": "potential candidates",
    "ineligible": "ineligible",
}


def write_report(report: FeasibilityReport, out: Path) -> None:
    """Every file but the plot, renamed into place together."""
    with output.OutputSet(out) as outputs:
        outputs.json(JSON, report.as_json())
        outputs.json(MEASURE_REPORT, measure_report(report))
        outputs.text(CSV, report_csv(report))
        outputs.text(HTML, report_html(report))


# --- CSV ---------------------------------------------------------------------------------------


def report_csv(report: FeasibilityReport) -> str:
    rows: list[list[Any]] = [
        ["trial", "section", "item", "as_of", "count", "shown", "hidden"],
    ]
    end = report.end.isoformat()
    for trial in report.trials:
        for name, cell in trial.verdicts.items():
            rows.append([trial.trial, "verdicts", name, end, *_cell_row(cell)])
        for step in trial.funnel:
            rows.append([trial.trial, "funnel", step.label, end, *_cell_row(step.cell)])
        for month in trial.months:
            rows.append(
                [
                    trial.trial,
                    "new_candidates",
                    month.month,
                    month.end.isoformat(),
                    *_cell_row(month.new_candidates),
                ]
            )
        rows.append([trial.trial, "new_candidates", "total", "", *_cell_row(trial.new_candidates)])
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows(rows)
    return buffer.getvalue()


def _cell_row(cell: Cell) -> list[Any]:
    return ["" if cell.count is None else cell.count, cell.shown, cell.hidden or ""]


# --- FHIR MeasureReport ------------------------------------------------------------------------


def _count(cell: Cell) -> dict[str, Any]:
    """A population's count, or for a hidden one the reason it is absent (masked)."""
    if cell.count is not None:
        return {"count": cell.count}
    return {"_count": {"extension": [{"url": DATA_ABSENT_REASON, "valueCode": "masked"}]}}


def _step_code(trial: TrialReport, step: FunnelStep) -> dict[str, Any]:
    if step.label == "screened":  # the measure's initial population, in FHIR's own terms too
        codings = [
            {"system": MEASURE_POPULATION, "code": "initial-population"},
            {"system": POPULATION_SYSTEM, "code": step.label},
        ]
    elif step.label == "candidates":
        codings = [{"system": POPULATION_SYSTEM, "code": step.label}]
    else:
        codings = [{"system": f"{CRITERION_SYSTEM_PREFIX}{trial.trial}", "code": step.label}]
    return {"coding": codings, "text": step.text}


def measure_report(report: FeasibilityReport) -> dict[str, Any]:
    """A FHIR R4 MeasureReport (summary) of the report, validated with the R4B model."""
    from fhir.resources.R4B.measurereport import MeasureReport

    groups = []
    for trial in report.trials:
        groups.append(
            {
                "id": trial.trial,
                "code": {
                    "text": f"{trial.acronym} ({trial.nct_id}), rule set {trial.trial} "
                    f"{trial.ruleset_version}: patients still in after each criterion, "
                    f"as of {report.end.isoformat()}"
                },
                "population": [
                    {"code": _step_code(trial, step), **_count(step.cell)} for step in trial.funnel
                ],
                "stratifier": [
                    {
                        "code": [
                            {
                                "text": "month: new candidates, candidates at the month's end "
                                "for the first time in the period"
                            }
                        ],
                        "stratum": [
                            {
                                "value": {"text": month.month},
                                "population": [
                                    {
                                        "code": {
                                            "coding": [
                                                {
                                                    "system": POPULATION_SYSTEM,
                                                    "code": "new-candidates",
                                                }
                                            ]
                                        },
                                        **_count(month.new_candidates),
                                    }
                                ],
                            }
                            for month in trial.months
                        ],
                    }
                ],
            }
        )
    resource = {
        "resourceType": "MeasureReport",
        "id": f"prescreen-feasibility-{report.end.isoformat()}",
        "status": "complete",
        "type": "summary",
        "measure": MEASURE,
        "period": {"start": report.start.isoformat(), "end": report.end.isoformat()},
        "group": groups,
    }
    return validated(MeasureReport, resource)


# --- printable HTML ----------------------------------------------------------------------------

_STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; color: #1a1a1a; margin: 2em auto; max-width: 60em;
       padding: 0 1em; }
h1 { font-size: 1.5em; margin-bottom: 0.2em; } h2 { font-size: 1.25em; margin-top: 2em; }
h3 { font-size: 1.05em; }
table { border-collapse: collapse; margin: 0.5em 0 1em; }
th, td { border-bottom: 1px solid #c8c8c8; padding: 0.2em 0.8em; text-align: left; }
td.n { text-align: right; font-variant-numeric: tabular-nums; }
td:first-child { white-space: nowrap; }
.hidden { color: #595959; font-style: italic; }
.note { color: #404040; font-size: 0.92em; }
section.trial { break-inside: avoid-page; }
@media print { body { margin: 0; max-width: none; } section.trial { break-before: page; }
               section.trial:first-of-type { break-before: auto; } }
"""


def report_html(report: FeasibilityReport) -> str:
    period = f"{report.start.isoformat()} to {report.end.isoformat()}"
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>Feasibility: {escape(', '.join(t.acronym for t in report.trials))}, "
        f"{escape(period)}</title>",
        f"<style>{_STYLE}</style></head><body>",
        "<h1>Pre-screening feasibility</h1>",
        f'<p class="note">Counts on {escape(report.end.isoformat())}; new candidates per month '
        f"from {escape(period)}. Source: {escape(report.source)}. Counts below "
        f"{report.threshold} are shown as &lt;{report.threshold}, and where they could be "
        "worked out from the other counts, further counts are shown as "
        "<em>suppressed</em>.</p>",
    ]
    if report.input_issues:
        parts.append(
            f'<p class="note">{report.input_issues} input problem(s) were found while reading '
            "(prescreen screen lists each with file and line).</p>"
        )
    for trial in report.trials:
        parts.append(_trial_html(trial, report))
    parts.append(
        '<p class="note">A candidate meets every criterion that can be decided from data; a '
        "potential candidate has no criterion ruling them out but some that the data cannot "
        "decide. A patient is still in after a criterion unless it rules them out. A new "
        "candidate of a month is a candidate at its end who was a candidate neither the day "
        "before the period nor at an earlier month's end.</p>"
    )
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def _shown(cell: Cell) -> Markup:
    if cell.count is None:
        return Markup('<span class="hidden">{}</span>').format(cell.shown)
    return Markup("{}").format(cell.shown)


def _trial_html(trial: TrialReport, report: FeasibilityReport) -> str:
    end = report.end.isoformat()
    parts = [
        f'<section class="trial" id="{escape(trial.trial)}">',
        f"<h2>{escape(trial.acronym)} ({escape(trial.nct_id)})</h2>",
        f'<p class="note">{escape(trial.title)}. Rule set {escape(trial.trial)} '
        f"{escape(trial.ruleset_version)}.</p>",
        f"<h3>Patients on {escape(end)}</h3>",
        "<table><tbody>",
    ]
    for name, cell in trial.verdicts.items():
        parts.append(
            f'<tr><th scope="row">{escape(VERDICT_LABELS[name])}</th>'
            f'<td class="n">{_shown(cell)}</td></tr>'
        )
    parts += [
        "</tbody></table>",
        f"<h3>Attrition funnel on {escape(end)}</h3>",
        _bars_svg(
            [(step.label, step.cell) for step in trial.funnel],
            f"{trial.acronym}: patients still in after each criterion",
            f"funnel-{trial.trial}",
        ),
        "<table><thead><tr><th>step</th><th>meaning</th><th>patients</th></tr></thead><tbody>",
    ]
    for step in trial.funnel:
        parts.append(
            f"<tr><td>{escape(step.label)}</td><td>{escape(step.text)}</td>"
            f'<td class="n">{_shown(step.cell)}</td></tr>'
        )
    parts += [
        "</tbody></table>",
        "<h3>New candidates per month</h3>",
        _bars_svg(
            [(month.month, month.new_candidates) for month in trial.months],
            f"{trial.acronym}: new candidates per month",
            f"months-{trial.trial}",
        ),
        "<table><thead><tr><th>month</th><th>evaluated as of</th><th>new candidates</th>"
        "</tr></thead><tbody>",
    ]
    for month in trial.months:
        parts.append(_month_row(month))
    parts += [
        f'<tr><th scope="row">total</th><td></td>'
        f'<td class="n">{_shown(trial.new_candidates)}</td></tr>',
        "</tbody></table>",
        "</section>",
    ]
    return "\n".join(parts)


def _month_row(month: MonthCount) -> str:
    return (
        f"<tr><td>{escape(month.month)}</td><td>{escape(month.end.isoformat())}</td>"
        f'<td class="n">{_shown(month.new_candidates)}</td></tr>'
    )


# Horizontal bars: a label column, a bar scaled to the largest shown count, the number after it.
# A hidden count has no bar (its length would give it away), only its mark.
_ROW, _BAR, _LABEL_WIDTH, _BAR_WIDTH, _WIDTH = 24, 16, 190, 440, 720


def _bars_svg(rows: list[tuple[str, Cell]], title: str, element_id: str) -> str:
    top = max((cell.count or 0 for _, cell in rows), default=0) or 1
    height = _ROW * len(rows) + 10
    described = ", ".join(f"{label} {cell.shown}" for label, cell in rows)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {_WIDTH} {height}" '
        f'width="{_WIDTH}" role="img" aria-labelledby="{element_id}-title {element_id}-desc">',
        f'<title id="{element_id}-title">{escape(title)}</title>',
        f'<desc id="{element_id}-desc">{escape(described)}</desc>',
    ]
    for index, (label, cell) in enumerate(rows):
        y = 5 + index * _ROW
        parts.append(
            f'<text x="{_LABEL_WIDTH - 8}" y="{y + _BAR - 4}" text-anchor="end" font-size="12" '
            f'fill="#1a1a1a">{escape(label)}</text>'
        )
        if cell.count is None:
            parts.append(
                f'<text x="{_LABEL_WIDTH + 4}" y="{y + _BAR - 4}" font-size="12" '
                f'font-style="italic" fill="#595959">{escape(cell.shown)}</text>'
            )
            continue
        width = max(round(_BAR_WIDTH * cell.count / top, 1), 1)
        parts += [
            f'<rect x="{_LABEL_WIDTH}" y="{y}" width="{width}" height="{_BAR}" '
            'fill="#1f5f8b" rx="2"/>',
            f'<text x="{_LABEL_WIDTH + width + 6}" y="{y + _BAR - 4}" font-size="12" '
            f'fill="#1a1a1a">{cell.count}</text>',
        ]
    parts.append("</svg>")
    return "".join(parts)
