"""Offline screening on several processes, writing byte for byte the files of one process.

Phase 1: this process reads the files of resolve() targets (Medications) first, while the
worker processes start; then the spans of the other files (partition.py) are read, each into
per-bucket spill files and an issues file (workers.py). Phase 2: each bucket of patients is
merged and evaluated. The worker processes take the tasks of each phase from the front, this
process takes its share from the back. Last, this process writes the outputs in the order one
process writes them: each trial's input problems span by span (lines counted from each file's
start), then the records without a Patient in the order one reading meets them, the patients
not screened and the verdicts by patient id (a merge of the buckets' sorted results), then the
summaries and the portfolio files.

Workers are started with "spawn" (the pure-Python CEL runner is not fork-safe), so each loads
the rule sets itself, from the same files. A resolve() target found in another type's file
(a Medication line in MedicationRequest.ndjson) would be seen by the one process reading it
only; such a source is screened again in one process.
"""

from __future__ import annotations

import heapq
import logging
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from datetime import date
from pathlib import Path
from typing import Any

import orjson

from service.ndjson_files import MAX_LINE_BYTES, NdjsonFile, discover
from service.ruleset.engines import EngineName
from service.ruleset.loader import RuleSet
from service.ruleset.overrides import parameters_set
from service.screening import output, workers
from service.screening.ndjson import reading_order
from service.screening.partition import plan_spans, read_spill, span_size
from service.screening.pool import WorkerPool, rule_files, rule_overrides
from service.screening.results import ResultFiles, write_overview
from service.screening.source import NO_NOTES, InputIssue, IssueLog, ReadStats, SourceNotes
from service.screening.summary import (
    PortfolioSummary,
    ProgressSink,
    ScreeningSummary,
    report_lost_sources,
    report_not_screened,
    report_orphans,
)
from service.screening.workers import BucketScreened, SpanRead

log = logging.getLogger(__name__)
BUCKETS_PER_WORKER = 3  # several buckets each: a process slowed by the machine holds up less
# At most about this much input per bucket: a bucket's patients are held in memory while it is
# evaluated, so more buckets for a larger population keep each process's memory flat.
BUCKET_INPUT_BYTES = 256 << 20


def screen_in_parallel(
    rulesets: Sequence[RuleSet],
    source: Path,
    as_of: date,
    out: Path,
    *,
    engine: EngineName,
    subject_identifier_system: str,
    progress: ProgressSink | None,
    source_issues: Sequence[InputIssue] = (),
    workers: int | WorkerPool,
    notes: SourceNotes = NO_NOTES,
    max_line: int = MAX_LINE_BYTES,
) -> PortfolioSummary | None:
    """``screen_portfolio`` on worker processes; None when the source needs one process."""
    files = discover(source)
    if isinstance(workers, WorkerPool):
        if not workers.serves(rulesets, engine, as_of, max_line):
            raise ValueError(
                "the worker pool was started for other rule sets, engine, date or line limit"
            )
        return _ParallelRun(rulesets, files, workers, engine, as_of, progress, notes).screen(
            source, out, subject_identifier_system, source_issues
        )
    with WorkerPool(
        workers, rule_files(rulesets), engine, as_of, rule_overrides(rulesets), max_line
    ) as pool:
        return _ParallelRun(rulesets, files, pool, engine, as_of, progress, notes).screen(
            source, out, subject_identifier_system, source_issues
        )


class _ParallelRun:
    def __init__(
        self,
        rulesets: Sequence[RuleSet],
        files: list[NdjsonFile],
        pool: WorkerPool,
        engine: EngineName,
        as_of: date,
        progress: ProgressSink | None,
        notes: SourceNotes = NO_NOTES,
    ) -> None:
        self.rulesets = list(rulesets)
        self.notes = notes
        self.pool = pool
        self.engine = engine
        self.as_of = as_of
        self.progress = progress
        self.targets = frozenset(t for rs in rulesets for t in rs.mapper.join_targets)
        ordered = reading_order(files, self.targets)
        self.total_bytes = sum(f.size for f in ordered)
        self.spans = plan_spans(ordered, span_size(self.total_bytes, pool.count))
        self.buckets = max(
            pool.count * BUCKETS_PER_WORKER, -(-self.total_bytes // BUCKET_INPUT_BYTES)
        )
        self.several = len(self.rulesets) > 1
        # This process's share, read with the pool's line limit.
        self.here = workers.Worker(self.rulesets, engine, as_of, pool.max_line)
        self._read_done = [0] * len(self.spans)
        self._advance_read: Callable[[int], None] | None = None
        trials = len(self.rulesets)
        self._to_screen: list[list[int | None]] = [[None] * self.buckets for _ in range(trials)]
        self._screened = [[0] * self.buckets for _ in range(trials)]
        self._advance_screen: list[Callable[[int], None] | None] = []

    def screen(
        self,
        source: Path,
        out: Path,
        subject_identifier_system: str,
        source_issues: Sequence[InputIssue],
    ) -> PortfolioSummary | None:
        with (
            tempfile.TemporaryDirectory(prefix="prescreen-spill-") as folder,
            workers.adopt(self.here, self.pool.messages_here),
        ):
            spill = Path(folder)
            started = time.perf_counter()
            reads = self._read(spill)
            if reads is None:
                return None
            read_seconds = time.perf_counter() - started
            lines_before = self._lines_before(reads)
            started = time.perf_counter()
            screened = self.pool.run_all(
                [
                    (workers.screen_bucket, (b, spill, lines_before, self.notes))
                    for b in range(self.buckets)
                ],
                self._on_message,
            )
            evaluate_seconds = time.perf_counter() - started
            return self._write(
                source,
                out,
                spill,
                reads,
                lines_before,
                screened,
                subject_identifier_system,
                source_issues,
                (read_seconds, evaluate_seconds),
            )

    # --- phase 1 ------------------------------------------------------------------------------

    def _read(self, spill: Path) -> list[SpanRead] | None:
        if self.progress is not None:
            self._advance_read = self.progress.task(
                "Reading NDJSON", self.total_bytes, unit="bytes"
            )
        own = [s for s in self.spans if s.file.resource_type in self.targets]
        # The workers need every resolve() target before they read a reference: this process
        # reads them first, while the workers start.
        reads = [self.here.read(span, spill, self.buckets, self._on_message) for span in own]
        targets = self.here.save_targets(spill) if own else None
        rest = sorted(
            (s for s in self.spans if s.file.resource_type not in self.targets),
            key=lambda s: -s.size,  # the largest first: the last task to finish is a short one
        )
        calls = [(workers.read_span, (s, spill, self.buckets, targets)) for s in rest]
        done = self.pool.run_all(calls, self._on_message)
        if any(read.stray_targets for read in done):
            log.warning(
                "a file holds resources of a type references are resolved to, other than its "
                "own: screening in one process"
            )
            return None
        return sorted([*reads, *done], key=lambda read: read.index)

    def _lines_before(self, reads: list[SpanRead]) -> list[int]:
        """Per span, the lines of its file before it: span line numbers start at 1."""
        before = [0] * len(self.spans)
        for span in self.spans[1:]:
            previous = self.spans[span.index - 1]
            if span.start > 0 and previous.file == span.file:
                before[span.index] = before[previous.index] + reads[previous.index].stats.lines
        return before

    def _on_message(self, message: tuple[Any, ...]) -> None:
        kind = message[0]
        if kind == "read":
            self._read_done[message[1]] = message[2]
            if self._advance_read is not None:
                self._advance_read(sum(self._read_done))
        elif kind == "to-screen":
            self._to_screen[message[1]][message[2]] = message[3]
            self._start_screen_bars()
        elif kind == "screened":
            trial = message[1]
            self._screened[trial][message[2]] = message[3]
            if trial < len(self._advance_screen) and (advance := self._advance_screen[trial]):
                advance(sum(self._screened[trial]))

    def _start_screen_bars(self) -> None:
        """A bar per trial, in trial order, once every bucket has said how many it screens."""
        while len(self._advance_screen) < len(self.rulesets):
            trial = len(self._advance_screen)
            counts = self._to_screen[trial]
            if any(count is None for count in counts):
                return
            ruleset = self.rulesets[trial]
            title = f"Screening patients ({ruleset.id})" if self.several else "Screening patients"
            total = sum(count or 0 for count in counts)
            self._advance_screen.append(
                self.progress.task(title, total) if self.progress is not None else None
            )

    # --- the outputs --------------------------------------------------------------------------

    def _write(
        self,
        source: Path,
        out: Path,
        spill: Path,
        reads: list[SpanRead],
        lines_before: list[int],
        screened: list[BucketScreened],
        subject_identifier_system: str,
        source_issues: Sequence[InputIssue],
        seconds: tuple[float, float],
    ) -> PortfolioSummary:
        with output.OutputSet(out) as outputs:
            logs = []
            for ruleset in self.rulesets:
                issue_file = outputs.ndjson(f"{self._folder(ruleset)}{output.ISSUES}")
                logs.append(IssueLog(sink=_writer(issue_file)))
            lost = []
            for ruleset, trial_log in zip(self.rulesets, logs, strict=True):
                for issue in source_issues:
                    trial_log.add(issue)
                lost.append(report_lost_sources(trial_log, ruleset, self.notes.lost))
            self._replay_read_issues(spill, reads, lines_before, logs)
            verdicts_by_patient: dict[str, dict[str, str]] = {}
            summaries = []
            for trial, ruleset in enumerate(self.rulesets):
                started = time.perf_counter()
                summary = ScreeningSummary(
                    ruleset.id,
                    ruleset.run_version,
                    self.engine,
                    self.as_of,
                    source,
                    out / self._folder(ruleset) if self.several else out,
                    _trial_stats(reads, trial),
                    logs[trial],
                )
                summary.read_seconds = seconds[0]
                summary.parameters_set = parameters_set(ruleset)
                summary.sources_unavailable = lost[trial]
                summary.orphans = _merged_orphans(b.orphans[trial] for b in screened)
                report_orphans(summary)
                report_not_screened(
                    heapq.merge(*(b.not_screened[trial] for b in screened)), summary
                )
                self._write_verdicts(
                    ResultFiles(
                        ruleset,
                        self.as_of,
                        outputs,
                        subject_identifier_system,
                        self._folder(ruleset),
                    ),
                    spill,
                    trial,
                    summary,
                    verdicts_by_patient,
                )
                summary.evaluate_seconds = seconds[1] + time.perf_counter() - started
                outputs.json(f"{self._folder(ruleset)}{output.SUMMARY}", summary.as_json())
                summaries.append(summary)
            portfolio = PortfolioSummary(summaries, out)
            if self.several:
                portfolio.overview = write_overview(
                    self.rulesets, self.as_of, verdicts_by_patient, outputs
                )
        return portfolio

    def _folder(self, ruleset: RuleSet) -> str:
        return f"{ruleset.id}/" if self.several else ""

    def _replay_read_issues(
        self, spill: Path, reads: list[SpanRead], lines_before: list[int], logs: list[IssueLog]
    ) -> None:
        """Each trial's problems of reading, span by span: the order of one reading."""
        for read in reads:
            if not read.has_issues:
                continue
            offset = lines_before[read.index]
            found: list[list[InputIssue]] = next(read_spill(workers.issues_file(spill, read.index)))
            for trial_log, issues in zip(logs, found, strict=True):
                for issue in issues:
                    trial_log.add(_shifted(issue, offset))

    def _write_verdicts(
        self,
        files: ResultFiles,
        spill: Path,
        trial: int,
        summary: ScreeningSummary,
        verdicts_by_patient: dict[str, dict[str, str]],
    ) -> None:
        """The verdict lines of every bucket, merged by patient id, as one process writes them."""
        ruleset = self.rulesets[trial]
        merged = heapq.merge(
            *(
                workers.read_results(workers.results_file(spill, trial, bucket))
                for bucket in range(self.buckets)
            ),
            key=lambda evaluated: evaluated[0],
        )
        for patient_id, verdict, counted, line, issues in merged:
            for issue in issues:
                summary.issues.add(issue)
            summary.count(verdict, counted)
            if self.several:  # only a portfolio's overview needs every patient's verdicts
                verdicts_by_patient.setdefault(patient_id, {})[ruleset.id] = verdict
            files.add(orjson.Fragment(line), patient_id, verdict)
        files.close()


def _writer(file: output.AtomicNdjson) -> Callable[[InputIssue], None]:
    return lambda issue: file.write(issue.as_json())


def _shifted(issue: InputIssue, lines_before: int) -> InputIssue:
    """An issue of a span, its line counted from the file's start (line 0: the whole file)."""
    if not lines_before or issue.line <= 0:
        return issue
    return InputIssue(issue.file, issue.line + lines_before, issue.kind, issue.message)


def _trial_stats(reads: list[SpanRead], trial: int) -> ReadStats:
    stats = ReadStats()
    for read in reads:
        stats.files += read.stats.files
        stats.lines += read.stats.lines
        stats.parsed += read.stats.parsed
        stats.skipped_type += read.stats.skipped_type
        stats.skipped_prefilter += read.stats.skipped_prefilter
        stats.records += read.records[trial]
    return stats


def _merged_orphans(
    per_bucket: Iterator[list[tuple[str, int, tuple[int, int, int]]]],
) -> Counter[str]:
    """The buckets' counts of records without a Patient, each fact in the order one reading
    first counts it (where it was first seen, in any bucket)."""
    counts: Counter[str] = Counter()
    first: dict[str, tuple[int, int, int]] = {}
    for found in per_bucket:
        for fact, count, seen in found:
            counts[fact] += count
            first[fact] = min(first.get(fact, seen), seen)
    return Counter({fact: counts[fact] for fact in sorted(counts, key=first.__getitem__)})
