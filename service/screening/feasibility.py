"""Feasibility: how many patients each trial finds, and how many new candidates each month.

The source (an NDJSON folder, or a FHIR server through the live run's retrieval) is read and
mapped once. On the last day (``--to``) every patient is evaluated as a screening evaluates
them: the verdict counts and the attrition funnel. Then each month's end from ``--from`` on is
evaluated as as_of, on the same facts: a patient is a *new candidate* in the first month at
whose end they are a candidate, having been one neither the day before ``--from`` nor at an
earlier month's end; so the months add up to the patients who became candidates in the period.

Only the records that depend on as_of themselves (a Patient's age: ``Mapper.as_of_types``) are
mapped again for each month's end, while reading; every other record is the one read. The rules
ignore what is dated after their as_of, so the facts of the last day evaluated at an earlier one
are those of that day, as far as the export (one version of each resource) can tell.

``feasibility_report`` returns the report as data, with small counts hidden
(``feasibility_report.publish``); the files are written from it (``feasibility_files``).
"""

from __future__ import annotations

import calendar
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import Any

from service.errors import ConfigError
from service.ruleset.engines import EngineName
from service.ruleset.evaluate import Evaluator
from service.ruleset.loader import RuleSet
from service.screening.facts import Facts, read_source, report_reading, screened_facts
from service.screening.funnel import Step, attrition_of
from service.screening.inmemory import evaluate_reporting
from service.screening.run import folder_notes
from service.screening.source import (
    NO_NOTES,
    Collector,
    IssueLog,
    PatientData,
    ReadStats,
    SourceNotes,
)
from service.screening.summary import ProgressSink

MAX_MONTHS = 120


@dataclass(frozen=True)
class Month:
    label: str  # YYYY-MM
    end: date  # the as_of it is evaluated at: its last day, or --to in the last month


def months(start: date, end: date) -> list[Month]:
    """The calendar months from ``start``'s to ``end``'s, each ending on its last day (the
    last one on ``end``)."""
    if start > end:
        raise ConfigError(f"--from {start} is after --to {end}")
    found: list[Month] = []
    year, month = start.year, start.month
    while (year, month) <= (end.year, end.month):
        last = date(year, month, calendar.monthrange(year, month)[1])
        found.append(Month(f"{year:04d}-{month:02d}", min(last, end)))
        year, month = (year + 1, 1) if month == 12 else (year, month + 1)
    if len(found) > MAX_MONTHS:
        raise ConfigError(f"--from {start} --to {end}: {len(found)} months; at most {MAX_MONTHS}")
    return found


def default_start(end: date) -> date:
    """A year of months ending with ``end``'s: the first day of the month eleven before it."""
    year, month = end.year, end.month - 11
    if month < 1:
        year, month = year - 1, month + 12
    return date(year, month, 1)


class AsOfCollector(Collector):
    """A screening's collector at the last as_of that also maps, at each earlier as_of, the
    resources whose records depend on it (and the reference targets they may resolve). Input
    issues are reported once, at the last as_of."""

    def __init__(
        self,
        mapper: Any,
        as_of: date,
        issues: IssueLog,
        earlier: Sequence[date],
        notes: SourceNotes = NO_NOTES,
    ):
        super().__init__(mapper, as_of, issues, notes)
        self.again = mapper.as_of_types | mapper.join_targets if mapper.as_of_types else frozenset()
        self.earlier = {
            day: Collector(mapper, day, IssueLog(keep=0)) for day in earlier if day != as_of
        }

    def add_resource(self, resource: Any, where: str, line: int | Callable[[], int]) -> None:
        super().add_resource(resource, where, line)
        if isinstance(resource, dict) and resource.get("resourceType") in self.again:
            for collector in self.earlier.values():
                collector.add_resource(resource, where, line)

    def facts_at(self, as_of: date) -> list[tuple[str, Facts]]:
        """(patient id, facts) of every patient to screen, as of ``as_of``."""
        if as_of == self.as_of or not self.again:
            return screened_facts(self)  # no record depends on as_of: the same facts
        other = self.earlier[as_of]
        view = Collector(self.mapper, as_of, IssueLog(keep=0), self.notes)
        types = self.mapper.as_of_types
        for patient_id, data in self.patients.items():
            view.patients[patient_id] = _merged(data, other.patients.get(patient_id), types)
        return screened_facts(view)


def _merged(data: PatientData, redone: PatientData | None, types: frozenset[str]) -> PatientData:
    """A patient's data with the records mapped again at another as_of in place of the last
    day's (same resources, same order)."""
    if redone is None:
        return data
    merged = PatientData()
    merged.patient_copies = redone.patient_copies if "Patient" in types else data.patient_copies
    if data.resources is not None:
        again = redone.resources or {}
        merged.resources = {
            ref: again.get(ref, copies) if ref.split("/", 1)[0] in types else copies
            for ref, copies in data.resources.items()
        }
    return merged


@dataclass
class TrialCounts:
    """One trial's counts before any is hidden."""

    ruleset: RuleSet
    verdicts: Counter[str]
    funnel: list[Step]
    new_candidates: list[int]  # per month
    rule_errors: int = 0


@dataclass
class Counts:
    """Every trial's counts, and what reading the source found."""

    start: date
    end: date
    months: list[Month]
    trials: list[TrialCounts]
    source: str
    issues: list[IssueLog] = field(default_factory=list)
    stats: ReadStats = field(default_factory=ReadStats)


def count_trial(
    ruleset: RuleSet,
    collector: AsOfCollector,
    periods: list[Month],
    start: date,
    *,
    engine: EngineName,
    issues: IssueLog,
    progress: ProgressSink | None = None,
) -> TrialCounts:
    """Evaluate the last day (every criterion, as a screening) and each month's end."""
    end = periods[-1].end
    evaluator = Evaluator(ruleset, engine, memoize=True)
    criteria = [(c.id, c.kind, c.text) for c in ruleset.criteria]
    verdicts: Counter[str] = Counter()
    results = []
    rule_errors = 0
    candidates_at: dict[date, set[str]] = {end: set()}
    for patient_id, facts in collector.facts_at(end):
        verdict = evaluate_reporting(evaluator, patient_id, facts, end, issues)
        verdicts[verdict.verdict] += 1
        rule_errors += any(c.error for c in verdict.criteria)
        results.append(({c.id: c.result for c in verdict.criteria}, verdict.verdict))
        if verdict.verdict == "candidate":
            candidates_at[end].add(patient_id)
    ends = as_of_days(start, periods)
    advance = progress.task(f"Months ({ruleset.id})", len(ends)) if progress else None
    for done, day in enumerate(ends, 1):
        month_evaluator = Evaluator(ruleset, engine, memoize=True)  # a cache per as_of
        candidates_at[day] = {
            patient_id
            for patient_id, facts in collector.facts_at(day)
            if month_evaluator.evaluate_safely(patient_id, facts, day).verdict == "candidate"
        }
        if advance is not None:
            advance(done)
    seen = set(candidates_at[ends[0]])
    new_candidates = []
    for month in periods:
        now = candidates_at[month.end]
        new_candidates.append(len(now - seen))
        seen |= now
    return TrialCounts(
        ruleset, verdicts, attrition_of(criteria, results), new_candidates, rule_errors
    )


def as_of_days(start: date, periods: list[Month]) -> list[date]:
    """Every as_of the report evaluates before the last day."""
    return [start - timedelta(days=1), *(m.end for m in periods[:-1])]


def count_folder(
    rulesets: Sequence[RuleSet],
    source: Path,
    start: date,
    end: date,
    *,
    engine: EngineName = "cel",
    progress: ProgressSink | None = None,
) -> Counts:
    """The counts of an NDJSON folder, read once for every trial."""
    periods = months(start, end)
    earlier = as_of_days(start, periods)
    logs = [IssueLog() for _ in rulesets]
    notes = folder_notes(source)  # the types a Bulk export lost, as a screening reads them
    collectors = [
        AsOfCollector(rs.mapper, end, log, earlier, notes)
        for rs, log in zip(rulesets, logs, strict=True)
    ]
    stats, _ = read_source(collectors, source, progress)
    trials = []
    for ruleset, collector, log in zip(rulesets, collectors, logs, strict=True):
        report_reading(collector, log)
        trials.append(
            count_trial(
                ruleset, collector, periods, start, engine=engine, issues=log, progress=progress
            )
        )
    return Counts(start, end, periods, trials, "NDJSON folder", logs, stats)


async def count_server(
    settings: Any,
    fhir_url: str | None,
    rulesets: Sequence[RuleSet],
    start: date,
    end: date,
    *,
    progress: ProgressSink | None = None,
) -> Counts:
    """The counts of a FHIR server's patients, fetched as a live run fetches them: each
    trial's cohort (the patients with a resource its mapping's cohort codes name), in groups."""
    from service.fhir.connect import check_capabilities, connect, raise_for, read_capabilities
    from service.fhir.retrieval import PatientFetcher, chunked, discover_cohort, reads_needed

    periods = months(start, end)
    earlier = as_of_days(start, periods)
    trials, logs = [], []
    stats = ReadStats()
    for ruleset in rulesets:
        log = IssueLog()
        collector = AsOfCollector(ruleset.mapper, end, log, earlier)
        client = await connect(settings, fhir_url, ruleset.mapper.resource_types)
        async with client:
            abilities = read_capabilities(await client.capabilities())
            raise_for(check_capabilities(abilities, reads_needed(ruleset.mapper), set(), False))
            ids = await discover_cohort(
                client,
                ruleset.mapper,
                codes_per_request=settings.fhir_codes_per_request,
                page_size=settings.fhir_page_size,
            )
            fetcher = PatientFetcher(
                client,
                ruleset.mapper,
                abilities,
                codes_per_request=settings.fhir_codes_per_request,
                page_size=settings.fhir_page_size,
            )
            groups = chunked(ids, settings.fhir_patients_per_request)
            advance = progress.task(f"Fetching ({ruleset.id})", len(ids)) if progress else None
            done = 0
            for group in groups:
                fetched = await fetcher.fetch(group)
                stats.parsed += len(fetched.resources)
                collector.note_lost(fetched.lost)
                collector.read_resources(fetched.resources)
                done += len(group)
                if advance is not None:
                    advance(done)
        report_reading(collector, log)
        trials.append(
            count_trial(
                ruleset,
                collector,
                periods,
                start,
                engine=settings.cel_engine,
                issues=log,
                progress=progress,
            )
        )
        logs.append(log)
    return Counts(start, end, periods, trials, "FHIR server", logs, stats)
