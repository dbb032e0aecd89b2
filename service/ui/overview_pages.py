"""The portfolio overview: per trial, where the patients stand and the attrition funnel from
the patients in the source to the candidates; and, behind each step of the funnel, the list of
patients that step ruled out."""

from __future__ import annotations

import asyncio
import functools
import math
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, HTTPException, Request, Response

from service.api.decisions import DECLINED, NOT_REACHED
from service.ruleset.loader import RuleSet
from service.screening.funnel import rules_out
from service.state.overview import OverviewStore, SourceSize
from service.ui.funnel import CANDIDATES, FunnelRow, Step, attrition, funnel_rows
from service.ui.pages import (
    _patient_path,
    _person,
    _reader_of_patients,
    _service,
    _store,
    _today,
    render,
)
from service.ui.people import Who, who
from service.ui.vocabulary import STATUS_LABELS

router = APIRouter()
EXCLUDED_PAGE_SIZE = 50
SOURCE_WORDS = {
    "folder": "patients in the NDJSON folder",
    "cohort": "patients in the cohort the FHIR server returned",
    "listed": "patients the latest run was given",
}


@dataclass(frozen=True)
class TrialOverview:
    id: str
    acronym: str
    title: str
    nct_id: str
    counts: list[tuple[str, int]]
    apart: list[tuple[str, int]]  # of the ineligible: declined, could not be reached
    funnel: list[FunnelRow]
    source: SourceSize | None
    source_words: str
    last_screened: Any


def _criteria_of(ruleset: RuleSet) -> list[tuple[str, str, str]]:
    return [(c.id, c.kind, c.text) for c in ruleset.criteria]


async def _funnel(request: Request, trial: str, ruleset: RuleSet) -> list[Step]:
    """Recomputed only when the trial's rows changed (count or latest update)."""
    store = _store(request)
    fingerprint = await asyncio.to_thread(store.trial_fingerprint, trial)
    cache: dict[str, tuple[Any, list[Step]]] = request.app.state.funnels
    cached = cache.get(trial)
    if cached and cached[0] == fingerprint:
        return cached[1]
    steps = await asyncio.to_thread(
        lambda: attrition(_criteria_of(ruleset), store.results_of(trial))
    )
    cache[trial] = (fingerprint, steps)
    return steps


def _excluded_link(request: Request, trial: str, step: str) -> str:
    return request.url_for("excluded", trial=trial, step=step).path


@router.get("/", name="overview")
async def overview(request: Request) -> Response:
    person = await _person(request)
    service = _service(request)
    store = _store(request)
    more = OverviewStore(service.store.engine)
    counts = await asyncio.to_thread(store.status_counts)
    reasons = await asyncio.to_thread(store.ineligible_reasons)
    sources = await asyncio.to_thread(more.source_sizes)
    screened_at = await asyncio.to_thread(more.last_screened)
    patients = await asyncio.to_thread(more.distinct_patients)
    links = person.access.may_see_patients()
    trials = []
    for trial, ruleset in service.rulesets.items():
        steps = await _funnel(request, trial, ruleset)
        by_status = counts.get(trial, {})
        ordered = [(s, by_status[s]) for s in STATUS_LABELS if s in by_status]
        ordered += sorted((s, n) for s, n in by_status.items() if s not in STATUS_LABELS)
        by_reason = reasons.get(trial, {})
        apart = [
            (label, by_reason[reason])
            for label, reason in (("declined", DECLINED), ("could not be reached", NOT_REACHED))
            if by_reason.get(reason)
        ]
        source = sources.get(trial)
        trials.append(
            TrialOverview(
                trial,
                ruleset.trial.acronym,
                ruleset.trial.title,
                ruleset.trial.nct_id,
                ordered,
                apart,
                funnel_rows(
                    list(ruleset.criteria),
                    steps,
                    (source.patients, SOURCE_WORDS[source.kind]) if source else None,
                    functools.partial(_excluded_link, request, trial) if links else None,
                ),
                source,
                SOURCE_WORDS[source.kind] if source else "",
                screened_at.get(trial),
            )
        )
    pairs = sum(sum(by_status.values()) for by_status in counts.values())
    return render(
        request,
        "overview.html",
        person,
        trials=trials,
        page="overview",
        patients=patients,
        pairs=pairs,
    )


# --- the patients a step ruled out ---------------------------------------------------------


def ruled_out_at(ruleset: RuleSet, verdict: str, line: dict[str, Any]) -> str | None:
    """The funnel step that ruled the patient out: the first criterion that does, in the rule
    set's order; ``candidates`` for a patient none rules out who is not a candidate; None for a
    candidate."""
    found = line.get("criteria") or {}
    for criterion in ruleset.criteria:
        if rules_out(criterion.kind, (found.get(criterion.id) or {}).get("result")):
            return criterion.id
    return None if verdict == "candidate" else CANDIDATES


async def _ruled_out(request: Request, trial: str, ruleset: RuleSet) -> dict[str | None, list[str]]:
    """{step: the patient ids it ruled out, in id order}; like the funnel, recomputed only when
    the trial's rows changed."""
    store = _store(request)
    fingerprint = await asyncio.to_thread(store.trial_fingerprint, trial)
    cache: dict[str, tuple[Any, dict[str | None, list[str]]]] = request.app.state.ruled_out
    cached = cache.get(trial)
    if cached and cached[0] == fingerprint:
        return cached[1]
    more = OverviewStore(_service(request).store.engine)

    def read() -> dict[str | None, list[str]]:
        steps: dict[str | None, list[str]] = {}
        for pid, verdict, line in more.results(trial):
            steps.setdefault(ruled_out_at(ruleset, verdict, line), []).append(pid)
        return steps

    steps = await asyncio.to_thread(read)
    cache[trial] = (fingerprint, steps)
    return steps


@dataclass(frozen=True)
class ExcludedLine:
    who: Who
    link: str
    status: str
    reason: str


@router.get("/overview/{trial}/excluded/{step}", name="excluded")
async def excluded(request: Request, trial: str, step: str) -> Response:
    person = await _reader_of_patients(request)
    ruleset = _service(request).rulesets.get(trial)
    criterion = next((c for c in ruleset.criteria if c.id == step), None) if ruleset else None
    if ruleset is None or (criterion is None and step != CANDIDATES):
        raise HTTPException(404, "No such step in this trial's funnel.")
    try:
        number = min(max(1, int(request.query_params.get("page", "1"))), 1_000_000)
    except ValueError:
        number = 1
    found = (await _ruled_out(request, trial, ruleset)).get(step, [])
    pages = max(1, math.ceil(len(found) / EXCLUDED_PAGE_SIZE))
    number = min(number, pages)
    shown = found[(number - 1) * EXCLUDED_PAGE_SIZE : number * EXCLUDED_PAGE_SIZE]
    more = OverviewStore(_service(request).store.engine)
    patients = await asyncio.to_thread(more.screened, trial, shown) if shown else []
    today = _today()
    lines = []
    for patient in patients:
        criteria = patient.result.get("criteria") or {}
        if criterion is not None:
            reason = str((criteria.get(step) or {}).get("reason", ""))
        else:
            reason = "to check: " + ", ".join(
                c.title
                for c in ruleset.criteria
                if (criteria.get(c.id) or {}).get("result") == "unknown" and not c.manual
            )
        lines.append(
            ExcludedLine(
                who(patient.patient_id, patient.details, today),
                _patient_path(request, patient.patient_id, trial),
                patient.status,
                reason,
            )
        )
    base = request.url_for("excluded", trial=trial, step=step).path

    def link(page: int) -> str:
        return base + "?" + urlencode({"page": str(page)})

    if criterion is not None:
        heading = f"Ruled out by “{criterion.title}”"
        meaning = (
            f"{criterion.kind.capitalize()} criterion: {criterion.text}. The patients below "
            f"{'do not meet it' if criterion.kind == 'inclusion' else 'meet it'}, and no earlier "
            "criterion ruled them out."
        )
    else:
        heading = "Not candidates: a criterion still to check"
        meaning = (
            "No criterion rules these patients out, but one or more could not be decided from "
            "the data (potential candidates)."
        )
    return render(
        request,
        "excluded.html",
        person,
        page="excluded",
        trial_id=trial,
        acronym=ruleset.trial.acronym,
        heading=heading,
        meaning=meaning,
        lines=lines,
        total=len(found),
        page_number=number,
        pages=pages,
        previous_link=link(number - 1) if number > 1 else "",
        next_link=link(number + 1) if number < pages else "",
    )
