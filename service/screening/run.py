"""The offline screening run: an NDJSON folder in, verdicts and FHIR resources out.

This module chooses between one process (here) and worker processes (parallel.py); the summary
and the files both write come from summary.py and results.py below them.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import date
from pathlib import Path
from typing import Any

import orjson

from service.ndjson_files import MAX_LINE_BYTES, discover
from service.ruleset.engines import EngineName
from service.ruleset.evaluate import Evaluator
from service.ruleset.loader import RuleSet
from service.ruleset.overrides import parameters_set
from service.screening import output
from service.screening.inmemory import evaluate_reporting
from service.screening.ndjson import NdjsonReader
from service.screening.parallel import screen_in_parallel
from service.screening.pool import WorkerPool, needs_pool
from service.screening.results import ResultFiles, write_overview
from service.screening.source import NO_NOTES, Collector, InputIssue, IssueLog, SourceNotes
from service.screening.summary import (
    PortfolioSummary,
    ProgressSink,
    ScreeningSummary,
    report_lost_sources,
    report_not_screened,
    report_orphans,
)
from service.screening.verdictlines import VerdictLines

# How many processes screen a folder: a count (1: this process alone) or a pool started earlier.
Workers = int | WorkerPool


def folder_notes(source: Path) -> SourceNotes:
    """What a folder says of its own completeness: nothing, unless a Bulk Data export wrote
    its state there (types it lost, Patients an incremental export deleted)."""
    from service.fhir.bulk.job import STATE_FILE, export_notes

    if not (source / STATE_FILE).is_file():
        return NO_NOTES
    lost, deleted = export_notes(source)
    return SourceNotes(lost, deleted)


def screen_folder(
    ruleset: RuleSet,
    source: Path,
    as_of: date,
    out: Path,
    *,
    engine: EngineName = "cel",
    subject_identifier_system: str,
    progress: ProgressSink | None = None,
    workers: Workers = 1,
    max_line: int = MAX_LINE_BYTES,
) -> ScreeningSummary:
    """One trial: its files straight in ``out``."""
    portfolio = screen_portfolio(
        [ruleset],
        source,
        as_of,
        out,
        engine=engine,
        subject_identifier_system=subject_identifier_system,
        progress=progress,
        workers=workers,
        max_line=max_line,
    )
    return portfolio.summaries[0]


def screen_portfolio(
    rulesets: Sequence[RuleSet],
    source: Path,
    as_of: date,
    out: Path,
    *,
    engine: EngineName = "cel",
    subject_identifier_system: str,
    progress: ProgressSink | None = None,
    source_issues: Sequence[InputIssue] = (),
    workers: Workers = 1,
    max_line: int = MAX_LINE_BYTES,
) -> PortfolioSummary:
    """Screen every trial on one reading of the source.

    Each line is read and parsed once; each parsed resource goes to every trial's mapping. With
    one trial the files are written in ``out``; with several, each trial's in ``out/<trial>/``
    (the same contract), plus ``out/summary.json`` with the overlap between the trials and
    ``out/patients.ndjson`` with each patient's verdict per trial.

    ``source_issues`` are problems of the source found before reading it (the error file of a
    Bulk Data export), reported to every trial like the problems of its lines.

    ``workers`` above 1 (or a started ``WorkerPool``) splits the work by patient over that many
    processes (see parallel.py); so does one process for a source too large to hold in memory,
    bucket by bucket. The files written are the same, byte for byte.

    A folder a Bulk Data export wrote may say it lacks some resource types (``folder_notes``):
    each is a ``source-unavailable`` issue, and no criterion rests on its absence.
    ``max_line``: the longest line read (PRESCREEN_MAX_LINE_BYTES); a longer one is skipped
    and reported as ``line-too-long``.
    """
    files = discover(source)
    notes = folder_notes(source)
    if not isinstance(workers, int) or needs_pool(sum(f.size for f in files), workers):
        parallel = screen_in_parallel(
            rulesets,
            source,
            as_of,
            out,
            engine=engine,
            subject_identifier_system=subject_identifier_system,
            progress=progress,
            source_issues=source_issues,
            workers=workers,
            notes=notes,
            max_line=max_line,
        )
        if parallel is not None:
            return parallel
    several = len(rulesets) > 1
    with output.OutputSet(out) as outputs:
        trials: list[_Trial] = []
        for ruleset in rulesets:
            folder = f"{ruleset.id}/" if several else ""
            trials.append(
                _Trial(
                    ruleset,
                    Evaluator(ruleset, engine, memoize=True),
                    outputs,
                    folder,
                    as_of,
                    notes,
                )
            )
        for trial in trials:
            for issue in source_issues:
                trial.issues.add(issue)
            trial.lost = report_lost_sources(trial.issues, trial.ruleset, notes.lost)
        reader = NdjsonReader([trial.collector for trial in trials], max_line)
        started = time.perf_counter()
        total_bytes = sum(f.size for f in files)
        advance = progress.task("Reading NDJSON", total_bytes, unit="bytes") if progress else None
        reader.read_files(files, (lambda done, _total: advance(done)) if advance else None)
        read_seconds = time.perf_counter() - started
        verdicts_by_patient: dict[str, dict[str, str]] = {}
        summaries = []
        for trial in trials:
            summary = ScreeningSummary(
                trial.ruleset.id,
                trial.ruleset.run_version,
                engine,
                as_of,
                source,
                out / trial.folder if several else out,
                trial.collector.stats,
                trial.issues,
            )
            summary.read_seconds = read_seconds
            summary.parameters_set = parameters_set(trial.ruleset)
            summary.sources_unavailable = trial.lost
            trial.screen(summary, subject_identifier_system, progress, verdicts_by_patient)
            outputs.json(f"{trial.folder}{output.SUMMARY}", summary.as_json())
            summaries.append(summary)
        portfolio = PortfolioSummary(summaries, out)
        if several:
            portfolio.overview = write_overview(rulesets, as_of, verdicts_by_patient, outputs)
    return portfolio


class _Trial:
    """One trial of a portfolio run: its collector, issue file and outputs."""

    def __init__(
        self,
        ruleset: RuleSet,
        evaluator: Evaluator,
        outputs: output.OutputSet,
        folder: str,
        as_of: date,
        notes: SourceNotes = NO_NOTES,
    ) -> None:
        self.ruleset = ruleset
        self.evaluator = evaluator
        self.outputs = outputs
        self.folder = folder
        self.as_of = as_of
        issue_file = outputs.ndjson(f"{folder}{output.ISSUES}")
        self.issues = IssueLog(sink=lambda issue: issue_file.write(issue.as_json()))
        self.collector = Collector(ruleset.mapper, as_of, self.issues, notes)
        self.lost: list[dict[str, Any]] = []  # summary.json's sources_unavailable

    def screen(
        self,
        summary: ScreeningSummary,
        subject_identifier_system: str,
        progress: ProgressSink | None,
        verdicts_by_patient: dict[str, dict[str, str]],
    ) -> None:
        collector, issues, as_of = self.collector, self.issues, self.as_of
        summary.orphans = collector.orphans()
        report_orphans(summary)
        report_not_screened(collector.not_screened(), summary)
        started = time.perf_counter()
        screened = [pid for pid, data in collector.patients.items() if data.patient is not None]
        title = f"Screening patients ({self.ruleset.id})" if self.folder else "Screening patients"
        advance = progress.task(title, len(screened)) if progress else None

        files = ResultFiles(
            self.ruleset, as_of, self.outputs, subject_identifier_system, self.folder
        )
        lines = VerdictLines(self.ruleset, as_of)
        trial_id = self.ruleset.id
        for done, (patient_id, _patient, facts) in enumerate(collector.screened_patients(), 1):
            verdict = evaluate_reporting(self.evaluator, patient_id, facts, as_of, issues)
            line, ids = lines.line(verdict)
            summary.count(verdict.verdict, ids)
            verdicts_by_patient.setdefault(patient_id, {})[trial_id] = verdict.verdict
            files.add(orjson.Fragment(line), patient_id, verdict.verdict)
            if advance is not None and (done % 256 == 0 or done == len(screened)):
                advance(done)
        files.close()
        summary.evaluate_seconds = time.perf_counter() - started
