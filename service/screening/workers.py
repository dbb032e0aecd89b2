"""The work of one process of a parallel offline screening (the parent's side: parallel.py).

Phase 1, reading: a span of the input is read with the usual reader and collectors; what the
collectors kept is written to spill files by patient bucket, the problems found to an issues
file, both named by the span so the parent can put everything back in the order of one reading.
Phase 2, evaluation: the spill files of one bucket are merged, span by span, into the records
of each patient exactly as one reading would have built them, and its patients are evaluated.

This module imports only what a worker runs (no FHIR models), so a worker starts quickly. The
rule sets are loaded once per process, when it starts; CEL programs are compiled there too, as
the engines' objects cannot cross processes.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

from service.ndjson_files import MAX_LINE_BYTES
from service.ruleset import loader
from service.ruleset.engines import EngineName
from service.ruleset.evaluate import Evaluator
from service.ruleset.loader import RuleSet
from service.ruleset.overrides import Overrides, with_overrides
from service.screening.inmemory import evaluate_reporting
from service.screening.ndjson import NdjsonReader
from service.screening.partition import Span, bucket_of, read_spill, write_spill
from service.screening.source import (
    NO_NOTES,
    Collector,
    Copies,
    Copy,
    InputIssue,
    IssueLog,
    PatientData,
    ReadStats,
    SourceNotes,
    add_copy,
)
from service.screening.tally import Counted
from service.screening.verdictlines import VerdictLines

# A patient's place in one whole reading: (span, position among the span's patients).
FirstSeen = tuple[int, int]
# What a span's reading kept of one patient for one trial: (trial, patient id, position among
# the span's patients, copies of its Patient, copies of its other resources by reference).
SpillEntry = tuple[int, str, int, Copies | None, dict[str, Copies] | None]
# One patient evaluated, as the parent needs it: (patient id, verdict, what the summary counts
# of it, its verdicts.ndjson line as JSON, the problems evaluating it reported). Ids and bytes
# cross processes many times faster than the verdict's dataclasses.
Evaluated = tuple[str, str, Counted, bytes, list[InputIssue]]
# Small: the parent merges every bucket at once and holds one chunk of each in memory.
RESULTS_PER_CHUNK = 64
# A span's reading spills its patients to the bucket files whenever a trial holds this many,
# not only at the span's end: a Patient file packs tens of thousands of patients into one
# block, and memory must not grow with the population.
SPILL_EVERY_PATIENTS = 4_096
Progress = Callable[[tuple[Any, ...]], None]


def issues_file(spill: Path, span: int) -> Path:
    return spill / "issues" / f"{span:08d}.pkl"


def bucket_folder(spill: Path, bucket: int) -> Path:
    return spill / f"bucket-{bucket}"


def bucket_file(spill: Path, bucket: int) -> Path:
    """This process's file of a bucket: one per process, not per span, because creating a
    few thousand small files cost a second of a 7 GB run. Each pickle in it is tagged with its
    span; one span is read by one process, so a span's pickles are in one file, in order."""
    return bucket_folder(spill, bucket) / f"{os.getpid()}.pkl"


def results_file(spill: Path, trial: int, bucket: int) -> Path:
    return spill / f"results-{trial}-{bucket}.pkl"


def targets_file(spill: Path) -> Path:
    return spill / "targets.pkl"


@dataclass
class SpanRead:
    """What reading one span gave, besides its spill files."""

    index: int
    stats: ReadStats  # the reader's counts for this span
    records: list[int]  # records each trial's mapping kept
    has_issues: bool
    stray_targets: bool  # a resolve() target read outside its own files (see parallel.py)


@dataclass
class BucketScreened:
    """What evaluating one bucket gave, per trial, besides its results file."""

    bucket: int
    # Per trial: (fact, records, where first seen) of records whose Patient is not in the source
    orphans: list[list[tuple[str, int, tuple[int, int, int]]]] = field(default_factory=list)
    # Per trial, in patient id order: (patient id, reason, file:line) of patients not screened
    not_screened: list[list[tuple[str, str, str]]] = field(default_factory=list)


class Worker:
    """One process's rule sets, collectors and reader, kept from task to task."""

    def __init__(
        self,
        rulesets: list[RuleSet],
        engine: EngineName,
        as_of: date,
        max_line: int = MAX_LINE_BYTES,
    ) -> None:
        self.rulesets = rulesets
        self.engine = engine
        self.as_of = as_of
        self.collectors = [Collector(rs.mapper, as_of, IssueLog()) for rs in rulesets]
        self.reader = NdjsonReader(self.collectors, max_line)
        self._targets_from: Path | None = None
        self._evaluators: list[Evaluator] = []
        self._lines: list[VerdictLines] = []

    # --- phase 1 --------------------------------------------------------------------------

    def use_targets(self, path: Path | None) -> None:
        """The resolve() targets (Medications) the parent read first, once per process."""
        if path is None or path == self._targets_from:
            return
        for collector, targets in zip(self.collectors, next(read_spill(path)), strict=True):
            collector.targets = targets
        self._targets_from = path

    def read(self, span: Span, spill: Path, buckets: int, progress: Progress) -> SpanRead:
        found: list[list[InputIssue]] = []
        for collector in self.collectors:
            issues: list[InputIssue] = []
            collector.issues = IssueLog(sink=issues.append, keep=0)
            collector.patients = {}
            found.append(issues)
        records = [c.stats.records for c in self.collectors]
        targets = [_copy_count(c.targets) for c in self.collectors]
        self.reader.stats = ReadStats()
        start = span.start
        ranks = [0] * len(self.collectors)  # patients of the span spilled so far, per trial
        for trial, collector in enumerate(self.collectors):
            collector.spill_at = SPILL_EVERY_PATIENTS
            collector.spill = functools.partial(
                self._spill_patients, span.index, spill, buckets, ranks, (trial,)
            )
        try:
            self.reader.read_span(
                span.file,
                span.bounds,
                lambda offset: progress(("read", span.index, offset - start)),
            )
        finally:
            for collector in self.collectors:
                collector.spill = None
        self._spill_patients(span.index, spill, buckets, ranks, range(len(self.collectors)))
        has_issues = any(found)
        if has_issues:
            write_spill(issues_file(spill, span.index), found)
        return SpanRead(
            span.index,
            self.reader.stats,
            [c.stats.records - before for c, before in zip(self.collectors, records, strict=True)],
            has_issues,
            any(
                _copy_count(c.targets) != before
                for c, before in zip(self.collectors, targets, strict=True)
            ),
        )

    def _spill_patients(
        self, span: int, spill: Path, buckets: int, ranks: list[int], trials: Iterable[int]
    ) -> None:
        """What these trials' collectors kept, by bucket, in the order they first met each
        patient (``ranks``: how many of the span's patients each trial spilled before). A
        patient met again after a spill is spilled again; merging a bucket joins the parts."""
        by_bucket: dict[int, list[SpillEntry]] = {}
        for trial in trials:
            collector = self.collectors[trial]
            for rank, (patient_id, data) in enumerate(collector.patients.items(), ranks[trial]):
                entry = (trial, patient_id, rank, data.patient_copies, data.resources)
                by_bucket.setdefault(bucket_of(patient_id, buckets), []).append(entry)
            ranks[trial] += len(collector.patients)
            collector.patients = {}
        for bucket, entries in by_bucket.items():
            write_spill(bucket_file(spill, bucket), (span, entries))

    def save_targets(self, spill: Path) -> Path | None:
        """The targets read so far, for the other processes; None when there are none."""
        if not any(c.targets for c in self.collectors):
            return None
        path = targets_file(spill)
        write_spill(path, [c.targets for c in self.collectors])
        return path

    # --- phase 2 --------------------------------------------------------------------------

    def screen(
        self,
        bucket: int,
        spill: Path,
        lines_before: list[int],
        progress: Progress,
        notes: SourceNotes = NO_NOTES,
    ) -> BucketScreened:
        patients, first_seen = _merge_bucket(spill, bucket, lines_before, len(self.rulesets))
        screened = BucketScreened(bucket)
        for trial, ruleset in enumerate(self.rulesets):
            collector = Collector(ruleset.mapper, self.as_of, IssueLog(), notes)
            collector.patients = patients[trial]
            screened.orphans.append(_orphans(collector.patients, first_seen[trial]))
            screened.not_screened.append(collector.not_screened())
            total = sum(1 for data in collector.patients.values() if data.patient is not None)
            progress(("to-screen", trial, bucket, total))
            self._evaluate(trial, collector, results_file(spill, trial, bucket), bucket, progress)
            patients[trial] = {}  # done with: memory for the next trial
        return screened

    def _evaluate(
        self, trial: int, collector: Collector, path: Path, bucket: int, progress: Progress
    ) -> None:
        if not self._evaluators:
            self._evaluators = [Evaluator(rs, self.engine, memoize=True) for rs in self.rulesets]
            self._lines = [VerdictLines(rs, self.as_of) for rs in self.rulesets]
        evaluator, lines = self._evaluators[trial], self._lines[trial]
        chunk: list[Evaluated] = []
        done = 0
        for patient_id, _patient, facts in collector.screened_patients():
            issues: list[InputIssue] = []
            log = IssueLog(sink=issues.append, keep=0)
            verdict = evaluate_reporting(evaluator, patient_id, facts, self.as_of, log)
            line, ids = lines.line(verdict)
            chunk.append((patient_id, verdict.verdict, ids, line, issues))
            done += 1
            if len(chunk) == RESULTS_PER_CHUNK:
                write_spill(path, chunk)
                chunk = []
                progress(("screened", trial, bucket, done))
        write_spill(path, chunk)  # even empty: the parent reads one file per trial and bucket
        progress(("screened", trial, bucket, done))


def _copy_count(targets: dict[str, Copies]) -> int:
    return sum(len(c) if isinstance(c, list) else 1 for c in targets.values())


def _copies(copies: Copies | None) -> list[Copy]:
    if copies is None:
        return []
    return copies if isinstance(copies, list) else [copies]


def _global_order(span: int, order: int) -> int:
    """A copy's read order made global: its span, then its order within the span's reading
    (a process counts fewer than 2**40 resources)."""
    return (span << 40) | order


def _restamp(copy: Copy, span: int) -> Copy:
    version, updated, order, payload = copy
    return (version, updated, _global_order(span, order), payload)


def _restamp_patient(copy: Copy, span: int, lines_before: int) -> Copy:
    """The same for a Patient's copy, whose payload (values, why not to screen, where read)
    names a line counted from the span's start: counted from the file's start here."""
    version, updated, order, (values, skip, where) = copy
    file, _, line = where.rpartition(":")
    if skip and line.isdigit():
        where = f"{file}:{int(line) + lines_before}"
    return (version, updated, _global_order(span, order), (values, skip, where))


def _merge_bucket(
    spill: Path, bucket: int, lines_before: list[int], trials: int
) -> tuple[list[dict[str, PatientData]], list[dict[str, FirstSeen]]]:
    """Each trial's patients of this bucket, built span by span as one reading builds them:
    patients in the order first met, resources in the order first read, copies in read order.
    """
    patients: list[dict[str, PatientData]] = [{} for _ in range(trials)]
    first_seen: list[dict[str, FirstSeen]] = [{} for _ in range(trials)]
    folder = bucket_folder(spill, bucket)
    paths = sorted(folder.glob("*.pkl")) if folder.is_dir() else []
    tagged = [part for path in paths for part in read_spill(path)]
    tagged.sort(key=lambda part: part[0])  # by span; stable, so a span's parts stay in order
    for span, entries in tagged:
        offset = lines_before[span]
        for trial, patient_id, rank, patient_copies, resources in entries:
            data = patients[trial].get(patient_id)
            if data is None:
                data = patients[trial][patient_id] = PatientData()
                first_seen[trial][patient_id] = (span, rank)
            for copy in _copies(patient_copies):
                data.patient_copies = add_copy(
                    data.patient_copies, _restamp_patient(copy, span, offset)
                )
            if resources:
                if data.resources is None:
                    data.resources = {}
                for ref, copies in resources.items():
                    for copy in _copies(copies):
                        data.resources[ref] = add_copy(
                            data.resources.get(ref), _restamp(copy, span)
                        )
    return patients, first_seen


def _orphans(
    patients: dict[str, PatientData], first_seen: dict[str, FirstSeen]
) -> list[tuple[str, int, tuple[int, int, int]]]:
    """``Collector.orphans`` of this bucket, each fact with where it was first counted, so the
    parent can merge the buckets' counts in the order one reading counts them."""
    counts: dict[str, int] = {}
    first: dict[str, tuple[int, int, int]] = {}
    for patient_id, data in patients.items():  # in the order first met
        if data.patient_copies is not None:
            continue
        for position, (fact, records) in enumerate(data.facts().items()):
            counts[fact] = counts.get(fact, 0) + len(records)
            first.setdefault(fact, (*first_seen[patient_id], position))
    return [(fact, count, first[fact]) for fact, count in counts.items()]


def read_results(path: Path) -> Iterator[Evaluated]:
    """What ``screen`` wrote for one trial and bucket: its patients in id order."""
    for chunk in read_spill(path):
        yield from chunk


# --- the process side: what the pool runs ------------------------------------------------------

_worker: Worker | None = None
_progress: Any = None  # a multiprocessing queue to the parent, or None


def start(
    rules: list[tuple[Path, Path]],
    engine: EngineName,
    as_of: date,
    queue: Any,
    overrides: list[Overrides] | None = None,
    max_line: int = MAX_LINE_BYTES,
) -> None:
    """Pool initializer: load the rule sets (and compile the CEL) once for this process, with
    the parameters the run set (``--set``; checked in the parent already)."""
    global _worker, _progress
    _progress = queue
    if queue is not None:
        # Progress is best effort: a process ending never waits for its last messages.
        queue.cancel_join_thread()
    _worker = Worker(_load_for(engine, rules, overrides or []), engine, as_of, max_line)


def _load_for(
    engine: EngineName, rules: list[tuple[Path, Path]], overrides: list[Overrides]
) -> list[RuleSet]:
    """The rule sets, compiled for the one engine this run uses."""
    # The parent loaded (and checked) the same files first.
    loaded = [
        loader.load_ruleset(path, mappings, (engine,), shapes_checked=True)
        for path, mappings in rules
    ]
    return [
        with_overrides(ruleset, dict(values))
        for ruleset, values in zip(loaded, overrides or [() for _ in loaded], strict=True)
    ]


def ready() -> bool:
    """A task that does nothing: submitting one per process starts them all at once."""
    return _worker is not None


@contextmanager
def adopt(worker: Worker, messages: Any) -> Iterator[None]:
    """This process runs tasks too, with ``worker``, while the block lasts; their progress
    goes to ``messages`` (a queue: ``put``), as a worker process's goes to the parent."""
    global _worker, _progress
    _worker, _progress = worker, messages
    try:
        yield
    finally:
        _worker, _progress = None, None


def adopted() -> bool:
    """Whether this process has a worker to run tasks with (a worker process, or ``adopt``)."""
    return _worker is not None


def _send(message: tuple[Any, ...]) -> None:
    if _progress is not None:
        _progress.put(message)


def read_span(span: Span, spill: Path, buckets: int, targets: Path | None) -> SpanRead:
    assert _worker is not None, "the pool initializer did not run"
    _worker.use_targets(targets)
    return _worker.read(span, spill, buckets, _send)


def screen_bucket(
    bucket: int, spill: Path, lines_before: list[int], notes: SourceNotes = NO_NOTES
) -> BucketScreened:
    assert _worker is not None, "the pool initializer did not run"
    return _worker.screen(bucket, spill, lines_before, _send, notes)
