"""The feasibility page, for every role (``research`` sees nothing else): counts per trial and
per step of the attrition funnel, new candidates per month, small counts hidden exactly as
``prescreen feasibility`` hides them (``publish``); never a patient.

Its source: the feasibility.json that ``PRESCREEN_FEASIBILITY_REPORT`` names, shown as the
command wrote it; or, when that is unset, the worklist's latest results (each patient's last
screening), counted on the day and run through the same ``publish``. From the worklist, a
month's new candidates are today's candidates by the month they were first flagged (the
worklist keeps no facts to evaluate the end of each past month as the command does).
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import Any

import orjson
from fastapi import APIRouter, HTTPException, Request, Response

from service.screening.feasibility import Counts, TrialCounts, default_start, months
from service.screening.feasibility_files import VERDICT_LABELS, measure_report, report_csv
from service.screening.feasibility_report import VERDICT_CELLS, FeasibilityReport, publish
from service.screening.funnel import attrition
from service.state.overview import OverviewStore
from service.ui import auth
from service.ui.pages import _person, _service, _settings, _store, _today, render

router = APIRouter()
WORKLIST_SOURCE = "the worklist's latest results"
INCONSISTENT = (
    "The worklist's results do not add up under the rule sets served now (screened by an older "
    "version?): screen the patients again, or show a report written by `prescreen "
    "feasibility` (PRESCREEN_FEASIBILITY_REPORT)."
)


async def _counter(request: Request) -> auth.Person:
    person = await _person(request)
    if not person.access.may_see_counts():
        raise HTTPException(403, "Your role does not show counts.")
    return person


def _report_file(path: Path) -> Path:
    return path / "feasibility.json" if path.is_dir() else path


def _from_file(path: Path) -> FeasibilityReport:
    try:
        data = orjson.loads(_report_file(path).read_bytes())
        return FeasibilityReport.from_json(data)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise HTTPException(
            503,
            "The feasibility report configured (PRESCREEN_FEASIBILITY_REPORT) cannot be read: "
            "write it again with `prescreen feasibility`.",
        ) from exc


def _from_worklist(request: Request, today: date) -> FeasibilityReport:
    service = _service(request)
    store = _store(request)
    more = OverviewStore(service.store.engine)
    periods = months(default_start(today), today)
    trials = []
    for trial, ruleset in service.rulesets.items():
        verdicts: Counter[str] = Counter()

        def lines(
            trial: str = trial, verdicts: Counter[str] = verdicts
        ) -> Iterator[dict[str, Any]]:
            for line in store.results_of(trial):
                verdict = str(line.get("verdict"))
                if verdict in VERDICT_CELLS:  # a result without a verdict is no count
                    verdicts[verdict] += 1
                    yield line

        funnel = attrition([(c.id, c.kind, c.text) for c in ruleset.criteria], lines())
        per_month = Counter(f"{at:%Y-%m}" for at in more.candidates_first_flagged(trial))
        trials.append(
            TrialCounts(ruleset, verdicts, funnel, [per_month.get(m.label, 0) for m in periods])
        )
    counts = Counts(periods[0].end.replace(day=1), today, periods, trials, WORKLIST_SOURCE)
    try:
        return publish(counts, service.settings.feasibility_suppress_below)
    except ValueError as exc:  # rows screened by an older rule set than the one served now
        raise HTTPException(409, INCONSISTENT) from exc


async def _report(request: Request) -> FeasibilityReport:
    path = _settings(request).feasibility_report
    if path is not None:
        return await asyncio.to_thread(_from_file, path)
    # Counted again only when a trial's rows changed, or on another day.
    store = _store(request)
    today = _today()
    key = (
        today,
        *[
            await asyncio.to_thread(store.trial_fingerprint, trial)
            for trial in _service(request).rulesets
        ],
    )
    cache: dict[str, tuple[Any, FeasibilityReport]] = request.app.state.feasibility
    cached = cache.get("worklist")
    if cached and cached[0] == key:
        return cached[1]
    report = await asyncio.to_thread(_from_worklist, request, today)
    cache["worklist"] = (key, report)
    return report


@router.get("/feasibility", name="feasibility")
async def feasibility(request: Request) -> Response:
    person = await _counter(request)
    try:
        report: FeasibilityReport | None = await _report(request)
    except HTTPException as refused:
        if refused.status_code != 409:
            raise
        report = None  # said on the page, which still offers its way out
    titles = {
        trial: {c.id: c.title for c in ruleset.criteria}
        for trial, ruleset in _service(request).rulesets.items()
    }
    return render(
        request,
        "research.html",
        person,
        page="feasibility",
        report=report,
        titles=titles,
        verdict_labels=VERDICT_LABELS,
        from_file=_settings(request).feasibility_report is not None,
        worklist_source=WORKLIST_SOURCE,
        problem="" if report is not None else INCONSISTENT,
    )


@router.get("/feasibility.csv", name="feasibility_csv")
async def feasibility_csv(request: Request) -> Response:
    await _counter(request)
    report = await _report(request)
    return Response(
        report_csv(report),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": 'attachment; filename="feasibility.csv"'},
    )


@router.get("/feasibility/MeasureReport.json", name="feasibility_measure_report")
async def feasibility_measure_report(request: Request) -> Response:
    await _counter(request)
    report = await _report(request)
    body = await asyncio.to_thread(measure_report, report)
    return Response(
        json.dumps(body, indent=2),
        media_type="application/fhir+json",
        headers={"Content-Disposition": 'attachment; filename="MeasureReport.json"'},
    )
