"""Screening the patients of a live FHIR server, with optional write-back.

The run is resumable: every patient whose screening (and write-back) is complete is appended to
``OUT/checkpoint.ndjson``. If the server is lost midway, the run stops, lists the patients it did
not screen in ``OUT/unscreened.ndjson`` and exits 1; ``--resume`` continues from the checkpoint,
and the idempotent write-back makes a repeated write harmless anyway.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import IO, Any, Literal

import orjson

from service.errors import FhirServerError, FhirUnavailableError, error_kind
from service.fhir.appointments import ClinicDays, ClinicList, read_clinic
from service.fhir.client import FhirClient, Json
from service.fhir.connect import (
    DRY_RUN_PERMISSIONS,
    WRITE_PERMISSIONS,
    check_capabilities,
    connect,
    raise_for,
    read_capabilities,
)
from service.fhir.retrieval import (
    Fetched,
    PatientFetcher,
    changed_since,
    chunked,
    discover_cohort,
    group_members,
    reads_needed,
)
from service.fhir.writeback import WriteBack, WriteStats
from service.private_files import open_private, private_folder
from service.ruleset.engines import EngineName
from service.ruleset.evaluate import Evaluator, PatientVerdict
from service.ruleset.loader import RuleSet
from service.ruleset.overrides import parameters_set
from service.screening import output
from service.screening.inmemory import evaluate_resources
from service.screening.results import write_overview, write_results
from service.screening.source import InputIssue, IssueLog, ReadStats, SourceNotes
from service.screening.summary import ProgressSink, ScreeningSummary, report_lost_once
from service.settings import Settings

CHECKPOINT = "checkpoint.ndjson"
UNSCREENED = "unscreened.ndjson"
WRITE_TYPES = {"ResearchStudy", "ResearchSubject", "Observation", "Provenance"}


@dataclass(frozen=True)
class Selection:
    """Which patients to screen: the mapping's cohort, explicit ids, changes since a time, the
    members of a Group, or the patients with an appointment on some days (a clinic's list)."""

    kind: Literal["cohort", "ids", "since", "group", "appointments"]
    ids: tuple[str, ...] = ()
    since: str = ""
    group: str = ""
    days: ClinicDays | None = None
    filters: tuple[tuple[str, str], ...] = ()
    ignored_statuses: frozenset[str] = frozenset()

    def as_json(self) -> dict[str, Any]:
        """What summary.json records of the selection (the clinic list adds what it read)."""
        detail: dict[str, Any] = {"kind": self.kind}
        if self.kind == "ids":
            detail["patients"] = len(set(self.ids))
        elif self.kind == "since":
            detail["since"] = self.since
        elif self.kind == "group":
            detail["group"] = self.group
        return detail


@dataclass(frozen=True)
class LiveOptions:
    as_of: date
    out: Path
    selection: Selection
    engine: EngineName = "cel"
    write_back: bool = False
    dry_run: bool = False
    resume: bool = False
    subject_identifier_system: str = "urn:prescreen:research-subject"
    patients_per_request: int = 25
    codes_per_request: int = 40
    page_size: int = 200
    parallel_groups: int = 4


@dataclass
class LiveSummary(ScreeningSummary):
    selected: int = 0
    resumed: int = 0
    unscreened: dict[str, str] = field(default_factory=dict)
    requests: int = 0
    requests_by_kind: dict[str, int] = field(default_factory=dict)
    retries: int = 0
    http_seconds: float = 0.0
    writes: WriteStats | None = None
    capability_warnings: list[str] = field(default_factory=list)
    selection: dict[str, Any] = field(default_factory=dict)
    server_notices: list[str] = field(default_factory=list)

    @property
    def screened_now(self) -> int:
        return self.patients - self.resumed

    @property
    def exit_code(self) -> int:
        return 1 if self.unscreened else super().exit_code

    def extra_json(self) -> dict[str, Any]:
        per_patient = self.requests / self.screened_now if self.screened_now else 0.0
        live: dict[str, Any] = {
            "selected": self.selected,
            "resumed_from_checkpoint": self.resumed,
            "not_screened": len(self.unscreened),
            "requests": self.requests,
            "requests_per_screened_patient": round(per_patient, 3),
            "requests_by_kind": self.requests_by_kind,
            "retries": self.retries,
            "http_seconds": round(self.http_seconds, 3),
            "capability_warnings": self.capability_warnings,
            "selection": self.selection,
            "server_notices": self.server_notices,
        }
        if self.writes is not None:
            w = self.writes
            live["write_back"] = {
                "created": w.created,
                "updated": w.updated,
                "withdrawn_to_ineligible": w.withdrawn,
                "unchanged": w.unchanged,
                "kept_status_set_by_a_person": w.kept_human_status,
                "version_conflicts_retried": w.conflicts_retried,
                "transactions": w.transactions,
            }
        return {"live": live}


class Checkpoint:
    """Append-only record of finished patients; survives a crash between two lines."""

    def __init__(self, path: Path, resume: bool) -> None:
        self.path = path
        self.done: dict[str, dict[str, Any]] = {}
        if resume and path.exists():
            for raw in path.read_bytes().splitlines():
                try:
                    line = orjson.loads(raw)
                except orjson.JSONDecodeError:
                    continue  # the line a crash cut short: that patient is simply redone
                self.done[line["verdict"]["patient"].removeprefix("Patient/")] = line
        self._handle: IO[bytes] = open_private(path, "ab" if resume else "wb")

    def record(self, verdict: PatientVerdict, contract: dict[str, Any]) -> None:
        line = {"verdict": contract, "rule_errors": [c.id for c in verdict.criteria if c.error]}
        self._handle.write(orjson.dumps(line) + b"\n")
        self._handle.flush()
        self.done[verdict.patient_id] = line

    def close(self) -> None:
        self._handle.close()


def live_options(
    settings: Settings,
    *,
    as_of: date,
    out: Path,
    selection: Selection,
    write_back: bool = False,
    dry_run: bool = False,
    resume: bool = False,
) -> LiveOptions:
    """The options of a live run, with the request sizes of the configuration."""
    return LiveOptions(
        as_of=as_of,
        out=out,
        selection=selection,
        engine=settings.cel_engine,
        write_back=write_back or dry_run,
        dry_run=dry_run,
        resume=resume,
        subject_identifier_system=settings.subject_identifier_system,
        patients_per_request=settings.fhir_patients_per_request,
        codes_per_request=settings.fhir_codes_per_request,
        page_size=settings.fhir_page_size,
    )


async def screen_url(
    settings: Settings,
    fhir_url: str | None,
    ruleset: RuleSet,
    options: LiveOptions,
    *,
    progress: ProgressSink | None = None,
    echo: Callable[[Json], None] | None = None,
) -> LiveSummary:
    """Connect to the server (the configured one when ``fhir_url`` is None) and screen it."""
    client = await connect(
        settings, fhir_url, ruleset.mapper.resource_types, writes=writes_of(options)
    )
    async with client:
        return await screen_server(ruleset, client, options, progress=progress, echo=echo)


def writes_of(options: LiveOptions) -> dict[str, str]:
    """What the run writes, as SMART permissions: nothing unless it writes back."""
    if not options.write_back:
        return {}
    return DRY_RUN_PERMISSIONS if options.dry_run else WRITE_PERMISSIONS


async def screen_portfolio_url(
    settings: Settings,
    fhir_url: str | None,
    rulesets: Sequence[RuleSet],
    options: LiveOptions,
    *,
    progress: ProgressSink | None = None,
    echo: Callable[[Json], None] | None = None,
) -> LivePortfolio:
    """``screen_url`` for several trials, on one reading of the server."""
    read_types = {rtype for ruleset in rulesets for rtype in ruleset.mapper.resource_types}
    client = await connect(settings, fhir_url, read_types, writes=writes_of(options))
    async with client:
        return await screen_portfolio_server(
            rulesets, client, options, progress=progress, echo=echo
        )


async def select_patients(client: FhirClient, ruleset: RuleSet, options: LiveOptions) -> list[str]:
    selection = options.selection
    if selection.kind == "ids":
        return sorted(set(selection.ids))
    if selection.kind == "group":
        return await group_members(client, selection.group)
    if selection.kind == "appointments":
        return (await _clinic(client, options)).patients
    if selection.kind == "since":
        return await changed_since(
            client,
            ruleset.mapper,
            selection.since,
            codes_per_request=options.codes_per_request,
            page_size=options.page_size,
        )
    return await discover_cohort(
        client,
        ruleset.mapper,
        codes_per_request=options.codes_per_request,
        page_size=options.page_size,
    )


async def screen_server(
    ruleset: RuleSet,
    client: FhirClient,
    options: LiveOptions,
    *,
    progress: ProgressSink | None = None,
    echo: Callable[[Json], None] | None = None,
) -> LiveSummary:
    """One trial: its files straight in ``options.out``."""
    portfolio = await screen_portfolio_server(
        [ruleset], client, options, progress=progress, echo=echo
    )
    return portfolio.summaries[0]


@dataclass
class LivePortfolio:
    """Several trials screened on one reading of the server: a summary per trial, the
    overlap (``overview``), and what the reading cost."""

    summaries: list[LiveSummary]
    out: Path
    overview: dict[str, Any] = field(default_factory=dict)
    requests: int = 0  # of the whole reading, cohort discovery and write-back included
    screened: int = 0  # patients screened now for one trial or more
    clinic: ClinicList | None = None  # the appointments read (an --appointments selection)

    @property
    def exit_code(self) -> int:
        return max(summary.exit_code for summary in self.summaries)


class _Trial:
    """One trial of a live reading: its files, checkpoint, evaluator, write-back, and the
    patients it still has to screen."""

    def __init__(
        self, ruleset: RuleSet, out: Path, options: LiveOptions, client: FhirClient
    ) -> None:
        self.ruleset = ruleset
        self.out = out
        private_folder(out)
        self._issue_file = open_private(out / output.ISSUES, "ab" if options.resume else "wb")
        self.summary = LiveSummary(
            ruleset.id,
            ruleset.run_version,
            options.engine,
            options.as_of,
            Path(client.base_url),
            out,
            ReadStats(),
            IssueLog(sink=self._record_issue),
        )
        self.summary.parameters_set = parameters_set(ruleset)
        self.checkpoint = Checkpoint(out / CHECKPOINT, options.resume)
        self.evaluator = Evaluator(ruleset, options.engine)
        self.writer: WriteBack | None = None
        self.todo: set[str] = set()

    def _record_issue(self, issue: InputIssue) -> None:
        self._issue_file.write(orjson.dumps(issue.as_json()) + b"\n")

    def select(self, ids: list[str]) -> None:
        self.summary.selected = len(ids)
        self.todo = {pid for pid in ids if pid not in self.checkpoint.done}
        self.summary.resumed = len(ids) - len(self.todo)

    def not_screened(self, patient_ids: list[str], reason: str) -> None:
        self.summary.unscreened.update({pid: reason for pid in patient_ids})

    def close(self) -> None:
        self.checkpoint.close()
        self._issue_file.close()


async def screen_portfolio_server(
    rulesets: Sequence[RuleSet],
    client: FhirClient,
    options: LiveOptions,
    *,
    progress: ProgressSink | None = None,
    echo: Callable[[Json], None] | None = None,
) -> LivePortfolio:
    """Screen the server's patients for every trial on one reading: one capability check, each
    group of patients fetched once with searches covering every trial's mapping, and each
    trial evaluating what it wants of the answers.

    With one trial its files go in ``options.out``; with several, each trial's in
    ``options.out/<trial>/`` (the same contract, its own checkpoint), plus the overlap in
    ``options.out/summary.json`` and ``options.out/patients.ndjson``, as an offline
    portfolio writes them. Each trial screens the patients it selects (its own cohort)."""
    several = len(rulesets) > 1
    private_folder(options.out)
    abilities = read_capabilities(await client.capabilities())
    writing = options.write_back and not options.dry_run
    warnings: list[list[str]] = []
    for ruleset in rulesets:
        reads = reads_needed(ruleset.mapper)
        if options.selection.kind == "since":
            for rtype in reads:
                reads[rtype].add("_lastUpdated")
        if options.selection.kind == "appointments":
            reads.setdefault("Appointment", set()).add("date")
        capability = check_capabilities(
            abilities, reads, WRITE_TYPES if writing else set(), needs_transaction=writing
        )
        raise_for(capability)
        warnings.append(capability.warnings)

    trials: list[_Trial] = []
    started = time.perf_counter()
    try:
        for ruleset, found in zip(rulesets, warnings, strict=True):
            trial = _Trial(
                ruleset, options.out / ruleset.id if several else options.out, options, client
            )
            trials.append(trial)
            trial.summary.capability_warnings = found
        clinic = await _select(client, trials, options)
        for trial in trials:
            if options.write_back:
                trial.writer = WriteBack(
                    client,
                    trial.ruleset,
                    options.as_of,
                    options.subject_identifier_system,
                    abilities=abilities,
                    dry_run=options.dry_run,
                    echo=echo,
                )
                await trial.writer.prepare()
        screened, notices = await _screen_groups(trials, client, abilities, options, progress)
        for trial in trials:
            trial.summary.server_notices = notices
            if trial.writer is not None:
                trial.summary.writes = trial.writer.stats
    finally:
        for trial in trials:
            trial.close()
    elapsed = time.perf_counter() - started

    portfolio = LivePortfolio(
        [t.summary for t in trials], options.out, screened=screened, clinic=clinic
    )
    verdicts_by_patient: dict[str, dict[str, str]] = {}
    for trial in trials:
        lines = [trial.checkpoint.done[pid] for pid in sorted(trial.checkpoint.done)]
        _finish(trial, lines, client, options, elapsed)
        for line in lines:
            patient = line["verdict"]["patient"].removeprefix("Patient/")
            verdicts_by_patient.setdefault(patient, {})[trial.ruleset.id] = line["verdict"][
                "verdict"
            ]
    portfolio.requests = client.stats.requests
    if several:
        with output.OutputSet(options.out) as outputs:
            portfolio.overview = write_overview(
                rulesets, options.as_of, verdicts_by_patient, outputs
            )
            # What the one reading cost, for all the trials (written when the set commits).
            portfolio.overview["live"] = {
                "requests": portfolio.requests,
                "requests_per_screened_patient": round(
                    portfolio.requests / screened if screened else 0.0, 3
                ),
                "screened_patients": screened,
                "requests_by_kind": dict(client.stats.by_kind),
            }
    return portfolio


async def _clinic(client: FhirClient, options: LiveOptions) -> ClinicList:
    selection = options.selection
    if selection.days is None:
        raise ValueError("an appointments selection without its days")
    return await read_clinic(
        client,
        selection.days,
        selection.filters,
        selection.ignored_statuses,
        page_size=options.page_size,
    )


async def _select(
    client: FhirClient, trials: list[_Trial], options: LiveOptions
) -> ClinicList | None:
    """Each trial's patients: its own cohort; the same ids for all (given, a Group's members,
    a clinic's appointments: read once); or, since an instant, the patients with a change any
    of the trials reads (one pass for all). A server that refuses the cross-patient searches
    of a cohort or of --since stops the run here, before any verdict is written: never a
    partial cohort (CrossPatientSearchRefusedError names the options that work there)."""
    selection = options.selection
    for trial in trials:
        trial.summary.selection = selection.as_json()
    if selection.kind in ("group", "appointments"):
        clinic = await _clinic(client, options) if selection.kind == "appointments" else None
        ids = clinic.patients if clinic else await group_members(client, selection.group)
        for trial in trials:
            trial.select(ids)
            if clinic is not None:
                trial.summary.selection.update(clinic.as_json())
        return clinic
    if options.selection.kind == "since":
        ids = await changed_since(
            client,
            [trial.ruleset.mapper for trial in trials],
            options.selection.since,
            codes_per_request=options.codes_per_request,
            page_size=options.page_size,
        )
        for trial in trials:
            trial.select(ids)
        return None
    for trial in trials:
        trial.select(await select_patients(client, trial.ruleset, options))
    return None


def _finish(
    trial: _Trial,
    lines: list[dict[str, Any]],
    client: FhirClient,
    options: LiveOptions,
    elapsed: float,
) -> None:
    """A trial's summary and files, from its checkpoint (this run's patients and resumed ones).
    The request figures are the whole reading's: the trials shared it."""
    summary, ruleset = trial.summary, trial.ruleset
    summary.read_seconds = elapsed
    manual = frozenset(c.id for c in ruleset.criteria if c.manual)
    for line in lines:
        summary.tally(
            PatientVerdict.from_contract(line["verdict"], manual, frozenset(line["rule_errors"]))
        )
    stats = client.stats
    summary.requests, summary.retries = stats.requests, stats.retries
    summary.requests_by_kind = dict(stats.by_kind)
    summary.http_seconds = stats.seconds
    with output.OutputSet(trial.out) as outputs:
        write_results(
            ruleset,
            (line["verdict"] for line in lines),
            options.as_of,
            outputs,
            options.subject_identifier_system,
        )
        unscreened_file = outputs.ndjson(UNSCREENED)
        for pid, reason in sorted(summary.unscreened.items()):
            unscreened_file.write({"patient": f"Patient/{pid}", "reason": reason})
        outputs.json(output.SUMMARY, summary.as_json())


async def _screen_groups(
    trials: list[_Trial],
    client: FhirClient,
    abilities: Any,
    options: LiveOptions,
    progress: ProgressSink | None,
) -> tuple[int, list[str]]:
    """Fetch the patients any trial still has to screen, a group at a time, and hand each
    group's resources to the trials screening its patients; how many patients were screened,
    and what the server turned out to allow (said once: one patient per search)."""
    fetcher = PatientFetcher(
        client,
        [trial.ruleset.mapper for trial in trials],
        abilities,
        codes_per_request=options.codes_per_request,
        page_size=options.page_size,
    )
    todo = sorted(set().union(*(trial.todo for trial in trials)))
    groups = [g for g in chunked(todo, options.patients_per_request) if g]
    advance = progress.task("Screening patients", len(todo)) if progress else None
    gate = asyncio.Semaphore(options.parallel_groups)
    lost: list[str] = []
    done = 0

    async def one(group: list[str]) -> None:
        nonlocal done
        async with gate:
            mine = [(trial, [pid for pid in group if pid in trial.todo]) for trial in trials]
            mine = [(trial, pids) for trial, pids in mine if pids]
            if lost:
                for trial, pids in mine:
                    trial.not_screened(pids, f"not attempted: {lost[0]}")
                return
            try:
                fetched = await fetcher.fetch(group)
            # Reasons name the error's kind, never its message: a server's diagnostics can
            # quote patient ids and names, and unscreened.ndjson is shared like any output.
            except FhirUnavailableError as exc:
                lost.append(error_kind(exc))
                for trial, pids in mine:
                    trial.not_screened(pids, f"server unavailable: {error_kind(exc)}")
                return
            except FhirServerError as exc:
                if exc.status == 401:
                    raise  # credentials refused even after a fresh token: nothing will work
                for trial, pids in mine:
                    trial.not_screened(pids, f"server error: {error_kind(exc)}")
                return
            for trial, pids in mine:
                await _screen_trial_group(trial, fetched, pids, options, lost)
            done += len(group)
            if advance is not None:
                advance(done)

    # The first group alone: what it learns of the server (batch refused, one patient per
    # search) the others then know, instead of each finding it out at once.
    for group in groups[:1]:
        await one(group)
    await asyncio.gather(*(one(group) for group in groups[1:]))
    return len(todo), fetcher.notices


async def _screen_trial_group(
    trial: _Trial,
    fetched: Fetched,
    group: list[str],
    options: LiveOptions,
    lost: list[str],
) -> None:
    """One trial's patients of a fetched group: evaluated, written back, checkpointed."""
    verdicts, skipped = _evaluate_group(trial, fetched, group, options)
    if trial.writer is not None:
        try:
            await trial.writer.write(verdicts)
            await trial.writer.withdraw(skipped)
        except FhirUnavailableError as exc:
            lost.append(error_kind(exc))
            trial.not_screened(group, f"server unavailable: {error_kind(exc)}")
            return
        except FhirServerError as exc:
            if exc.status == 401:
                raise
            trial.not_screened(group, f"server error: {error_kind(exc)}")
            return
    for verdict in verdicts:
        trial.checkpoint.record(verdict, verdict.as_contract(trial.ruleset, options.as_of))


def _evaluate_group(
    trial: _Trial, fetched: Fetched, group: list[str], options: LiveOptions
) -> tuple[list[PatientVerdict], list[str]]:
    """Verdicts of a group's patients, and the patients of it the mapping says not to screen;
    the types the server would not give are lost sources for the trials reading them."""
    summary = trial.summary
    summary.stats.parsed += len(fetched.resources)
    report_lost_once(summary, trial.ruleset, fetched.lost)
    skipped: dict[str, str] = {}
    verdicts = evaluate_resources(
        trial.evaluator,
        fetched.resources,
        options.as_of,
        issues=summary.issues,
        only=set(group),
        not_screened=skipped,
        notes=SourceNotes(lost=fetched.lost),
    )
    summary.not_screened.update(skipped)
    found = {v.patient_id for v in verdicts} | set(skipped)
    for pid in group:
        if pid not in found:
            summary.unscreened[pid] = "no Patient resource on the server"
            summary.issues.add(InputIssue(f"fhir:Patient/{pid}", 0, "not-found", "no such Patient"))
    return verdicts, sorted(skipped)
