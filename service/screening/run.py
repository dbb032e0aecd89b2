"""The offline screening run: an NDJSON folder in, verdicts and FHIR resources out."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, Union

from service.ndjson_files import discover
from service.research import SUBJECT_STATUSES, research_study, research_subject
from service.ruleset.engines import EngineName
from service.ruleset.evaluate import VERDICTS, Evaluator, PatientVerdict
from service.ruleset.loader import RuleSet
from service.screening import output
from service.screening.inmemory import evaluate_reporting
from service.screening.ndjson import NdjsonReader
from service.screening.source import NOT_SCREENED, Collector, InputIssue, IssueLog, ReadStats
from service.screening.tally import Counted, counted

if TYPE_CHECKING:
    from service.screening.pool import WorkerPool

# How many processes screen a folder: a count (1: this process alone) or a pool started earlier.
Workers = Union[int, "WorkerPool"]


class ProgressSink(Protocol):
    """Where a run reports progress; ``task`` returns a function taking the amount done."""

    def task(self, description: str, total: int, unit: str = "") -> Callable[[int], None]: ...


@dataclass
class ScreeningSummary:
    trial: str
    ruleset_version: str
    engine: EngineName
    as_of: date
    source: Path
    out: Path
    stats: ReadStats
    issues: IssueLog
    verdicts: Counter[str] = field(default_factory=Counter)
    unknown: Counter[str] = field(default_factory=Counter)
    blocking: Counter[str] = field(default_factory=Counter)
    rule_errors: Counter[str] = field(default_factory=Counter)
    orphans: Counter[str] = field(default_factory=Counter)
    not_screened: dict[str, str] = field(default_factory=dict)
    read_seconds: float = 0.0
    evaluate_seconds: float = 0.0

    @property
    def patients(self) -> int:
        return sum(self.verdicts.values())

    @property
    def exit_code(self) -> int:
        """0: clean; 1: finished, but some input or some rule could not be used.

        Patients the mapping says not to screen (inactive, merged) are reported, but they are
        not unusable input.
        """
        doubtful = self.issues.total - self.issues.counts.get(NOT_SCREENED, 0)
        return 1 if doubtful or sum(self.rule_errors.values()) else 0

    def tally(self, verdict: PatientVerdict) -> None:
        self.count(verdict.verdict, counted(verdict))

    def count(self, verdict: str, ids: Counted) -> None:
        """A verdict counted by ``tally.counted`` (in a worker process, say)."""
        errors, unknown, blocking = ids
        self.verdicts[verdict] += 1
        for criterion in errors:
            self.rule_errors[criterion] += 1
        for criterion in unknown:
            self.unknown[criterion] += 1
        for criterion in blocking:
            self.blocking[criterion] += 1

    def extra_json(self) -> dict[str, Any]:
        """Sections a specialised run adds to summary.json."""
        return {}

    def as_json(self) -> dict[str, Any]:
        return {
            "trial": self.trial,
            "ruleset_version": self.ruleset_version,
            "engine": self.engine,
            "as_of": self.as_of.isoformat(),
            "patients": self.patients,
            "verdicts": {v: self.verdicts.get(v, 0) for v in VERDICTS},
            "unknown_in_potential_candidates": dict(self.unknown.most_common()),
            "excluding_by_criterion": dict(self.blocking.most_common()),
            "rule_errors_by_criterion": dict(self.rule_errors.most_common()),
            "input": {
                "files": self.stats.files,
                "lines": self.stats.lines,
                "parsed": self.stats.parsed,
                "skipped_unneeded_type": self.stats.skipped_type,
                "skipped_no_relevant_code": self.stats.skipped_prefilter,
                "records": self.stats.records,
            },
            "issues": {"total": self.issues.total, "by_kind": dict(self.issues.counts)},
            "records_without_patient": dict(self.orphans),
            "not_screened": [
                {"patient": f"Patient/{pid}", "reason": reason}
                for pid, reason in sorted(self.not_screened.items())
            ],
            "seconds": {
                "read": round(self.read_seconds, 3),
                "evaluate": round(self.evaluate_seconds, 3),
            },
            "exit_code": self.exit_code,
            **self.extra_json(),
        }


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
    )
    return portfolio.summaries[0]


@dataclass
class PortfolioSummary:
    """Several trials screened in one pass: a summary per trial and the overlap."""

    summaries: list[ScreeningSummary]
    out: Path
    overview: dict[str, Any] = field(default_factory=dict)

    @property
    def exit_code(self) -> int:
        return max(summary.exit_code for summary in self.summaries)


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
) -> PortfolioSummary:
    """Screen every trial on one reading of the source.

    Each line is read and parsed once; each parsed resource goes to every trial's mapping. With
    one trial the files are written in ``out``; with several, each trial's in ``out/<trial>/``
    (the same contract), plus ``out/summary.json`` with the overlap between the trials and
    ``out/patients.ndjson`` with each patient's verdict per trial.

    ``source_issues`` are problems of the source found before reading it (the error file of a
    Bulk Data export), reported to every trial like the problems of its lines.

    ``workers`` above 1 (or a started ``WorkerPool``) splits the work by patient over that many
    processes (see parallel.py); the files written are the same, byte for byte.
    """
    if not isinstance(workers, int) or workers > 1:
        from service.screening.parallel import screen_in_parallel

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
        )
        if parallel is not None:
            return parallel
    files = discover(source)
    several = len(rulesets) > 1
    with output.OutputSet(out) as outputs:
        trials: list[_Trial] = []
        for ruleset in rulesets:
            folder = f"{ruleset.id}/" if several else ""
            trials.append(
                _Trial(ruleset, Evaluator(ruleset, engine, memoize=True), outputs, folder, as_of)
            )
        for trial in trials:
            for issue in source_issues:
                trial.issues.add(issue)
        reader = NdjsonReader([trial.collector for trial in trials])
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
                trial.ruleset.version,
                engine,
                as_of,
                source,
                out / trial.folder if several else out,
                trial.collector.stats,
                trial.issues,
            )
            summary.read_seconds = read_seconds
            trial.screen(summary, subject_identifier_system, progress, verdicts_by_patient)
            outputs.json(f"{trial.folder}{output.SUMMARY}", summary.as_json())
            summaries.append(summary)
        portfolio = PortfolioSummary(summaries, out)
        if several:
            portfolio.overview = write_overview(rulesets, as_of, verdicts_by_patient, outputs)
    return portfolio


def write_overview(
    rulesets: Sequence[RuleSet],
    as_of: date,
    verdicts_by_patient: dict[str, dict[str, str]],
    outputs: output.OutputSet,
) -> dict[str, Any]:
    """A portfolio's own files: summary.json (the overlap) and patients.ndjson."""
    overview = overlap([r.id for r in rulesets], as_of, verdicts_by_patient)
    outputs.json(output.SUMMARY, overview)
    patients_file = outputs.ndjson(PATIENTS)
    for patient_id in sorted(verdicts_by_patient):
        patients_file.write(
            {"patient": f"Patient/{patient_id}", "verdicts": verdicts_by_patient[patient_id]}
        )
    return overview


PATIENTS = "patients.ndjson"
FLAGGED = ("candidate", "potential-candidate")


def overlap(
    trials: list[str], as_of: date, verdicts_by_patient: dict[str, dict[str, str]]
) -> dict[str, Any]:
    """Patients × trials: verdict counts per trial, and how many qualify for several."""
    combinations: Counter[tuple[tuple[str, str], ...]] = Counter(
        tuple(sorted(verdicts.items())) for verdicts in verdicts_by_patient.values()
    )
    return {
        "trials": trials,
        "as_of": as_of.isoformat(),
        "patients": len(verdicts_by_patient),
        "verdicts": {
            trial: {
                v: sum(1 for verdicts in verdicts_by_patient.values() if verdicts.get(trial) == v)
                for v in VERDICTS
            }
            for trial in trials
        },
        "candidates_for_several_trials": sum(
            1
            for verdicts in verdicts_by_patient.values()
            if sum(v == "candidate" for v in verdicts.values()) > 1
        ),
        "flagged_for_several_trials": sum(
            1
            for verdicts in verdicts_by_patient.values()
            if sum(v in FLAGGED for v in verdicts.values()) > 1
        ),
        "combinations": [
            {"verdicts": dict(combination), "patients": count}
            for combination, count in sorted(combinations.items(), key=lambda kv: (-kv[1], kv[0]))
        ],
    }


class _Trial:
    """One trial of a portfolio run: its collector, issue file and outputs."""

    def __init__(
        self,
        ruleset: RuleSet,
        evaluator: Evaluator,
        outputs: output.OutputSet,
        folder: str,
        as_of: date,
    ) -> None:
        self.ruleset = ruleset
        self.evaluator = evaluator
        self.outputs = outputs
        self.folder = folder
        self.as_of = as_of
        issue_file = outputs.ndjson(f"{folder}{output.ISSUES}")
        self.issues = IssueLog(sink=lambda issue: issue_file.write(issue.as_json()))
        self.collector = Collector(ruleset.mapper, as_of, self.issues)

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

        def contracts() -> Iterator[dict[str, Any]]:
            for done, (patient_id, _patient, facts) in enumerate(collector.screened_patients(), 1):
                verdict = evaluate_reporting(self.evaluator, patient_id, facts, as_of, issues)
                summary.tally(verdict)
                verdicts_by_patient.setdefault(patient_id, {})[self.ruleset.id] = verdict.verdict
                yield verdict.as_contract(self.ruleset, as_of)
                if advance is not None and (done % 256 == 0 or done == len(screened)):
                    advance(done)

        write_results(
            self.ruleset, contracts(), as_of, self.outputs, subject_identifier_system, self.folder
        )
        summary.evaluate_seconds = time.perf_counter() - started


def report_orphans(summary: ScreeningSummary) -> None:
    """Records of patients with no Patient resource (``summary.orphans``), one issue a fact."""
    for fact, count in summary.orphans.items():
        summary.issues.add(
            InputIssue(
                "*", 0, "no-patient", f"{count} {fact} record(s) name a Patient not in the source"
            )
        )


def report_not_screened(
    not_screened: Iterable[tuple[str, str, str]], summary: ScreeningSummary
) -> None:
    """Patients the mapping says not to screen: in issues.ndjson and summary.json.

    ``not_screened``: (patient id, reason, file:line where its Patient was read), by id.
    """
    for patient_id, reason, where in not_screened:
        summary.not_screened[patient_id] = reason
        file, _, line = where.rpartition(":")
        summary.issues.add(
            InputIssue(
                file,
                int(line) if line.isdigit() else 0,
                NOT_SCREENED,
                f"Patient/{patient_id} is not screened: {reason}",
            )
        )


def write_results(
    ruleset: RuleSet,
    contracts: Iterable[dict[str, Any]],
    as_of: date,
    outputs: output.OutputSet,
    subject_identifier_system: str,
    folder: str = "",
) -> None:
    """verdicts.ndjson, ResearchSubject.ndjson and ResearchStudy.ndjson from verdict lines."""
    files = ResultFiles(ruleset, as_of, outputs, subject_identifier_system, folder)
    for contract in contracts:
        files.add(contract, contract["patient"].removeprefix("Patient/"), contract["verdict"])
    files.close()


class ResultFiles:
    """One trial's verdicts.ndjson and ResearchSubject.ndjson, then its ResearchStudy.ndjson."""

    def __init__(
        self,
        ruleset: RuleSet,
        as_of: date,
        outputs: output.OutputSet,
        subject_identifier_system: str,
        folder: str = "",
    ) -> None:
        self.ruleset, self.as_of, self.outputs, self.folder = ruleset, as_of, outputs, folder
        self.system = subject_identifier_system
        self.verdict_file = outputs.ndjson(f"{folder}{output.VERDICTS}")
        self.subject_file = outputs.ndjson(f"{folder}{output.SUBJECTS}")

    def add(self, line: Any, patient_id: str, verdict: str) -> None:
        """One patient: its verdict line (a contract, or its JSON as an ``orjson.Fragment``)."""
        self.verdict_file.write(line)
        if verdict in SUBJECT_STATUSES:
            self.subject_file.write(
                research_subject(self.ruleset, patient_id, verdict, self.as_of, self.system)
            )

    def close(self) -> None:
        self.outputs.ndjson(f"{self.folder}{output.STUDIES}").write(research_study(self.ruleset))
