"""What the service does, apart from HTTP: screen patients live, run populations, re-screen on
notifications, keep the worklist and alert coordinators. The routes only translate."""

from __future__ import annotations

import asyncio
import functools
import logging
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from service.alerts import Alerter
from service.api.audit import send_due
from service.api.clinic import ClinicSchedule
from service.api.folders import OUTSIDE_ROOTS, files_within_roots
from service.api.writelocks import WriteBackLocks
from service.errors import error_kind
from service.fhir.client import FhirClient, Json, SharedConnections
from service.fhir.connect import WRITE_PERMISSIONS, ServerAbilities, connect, read_capabilities
from service.fhir.ids import is_fhir_id, is_resource_type
from service.fhir.retrieval import PatientFetcher, changed_since, chunked, discover_cohort
from service.fhir.writeback import WriteBack
from service.mapping.resources import patient_of
from service.ruleset.evaluate import Evaluator
from service.ruleset.loader import RuleSet
from service.screening.details import DetailsCollector, details_of
from service.screening.inmemory import evaluate_resources
from service.screening.ndjson import read_folder
from service.screening.run import folder_notes
from service.screening.source import InputIssue, IssueLog, SourceNotes
from service.settings import Settings
from service.state.audit import AuditLog
from service.state.cds_hooks import CdsStore
from service.state.leases import Lease, LeaseLostError, kept
from service.state.store import Store

log = logging.getLogger(__name__)


def write_permissions(settings: Settings) -> dict[str, str]:
    """What the service writes; with the audit sent to the FHIR server, AuditEvents too (each
    with PUT under its own id: create, and update when a try is made again)."""
    if settings.audit_to_fhir:
        return {**WRITE_PERMISSIONS, "AuditEvent": "cu"}
    return WRITE_PERMISSIONS


@dataclass
class Metrics:
    """Counters the /metrics endpoint exports (kept here so tests can read them too)."""

    screenings: Counter[tuple[str, str]] = field(default_factory=Counter)  # (trial, verdict)
    notifications: int = 0


class ScreeningService:
    def __init__(
        self, settings: Settings, store: Store, alerter: Alerter, rulesets: dict[str, RuleSet]
    ) -> None:
        self.settings = settings
        self.store = store
        self.cds = CdsStore(store)
        self.alerter = alerter
        self.rulesets = rulesets
        # Memoised, as an offline run's: most patients share a handful of fact patterns.
        self.evaluators = {
            t: Evaluator(r, settings.cel_engine, memoize=True) for t, r in rulesets.items()
        }
        self.metrics = Metrics()
        self._client: FhirClient | None = None
        # Connections to the FHIR servers CDS Hooks calls name, kept from call to call, and
        # what each server declares it can do (until when it is trusted, abilities).
        self.hook_connections = SharedConnections(timeout=settings.fhir_timeout)
        self.hook_abilities: dict[str, tuple[float, ServerAbilities]] = {}
        self._abilities: ServerAbilities | None = None
        self._lock = asyncio.Lock()
        self.last_ping = datetime.now(UTC)
        self.tasks: set[asyncio.Task[Any]] = set()
        # This process's name in run claims and write-back claims: a restarted process is a
        # new replica, and takes a run over only once the old one's lease has expired.
        self.replica = uuid.uuid4().hex
        self.write_locks = WriteBackLocks(store, self.replica, settings.lease_seconds)
        self._running_runs: set[str] = set()
        self.one_patient_per_search = False
        self.clinic_schedule = ClinicSchedule(self)

    # --- FHIR -----------------------------------------------------------------------------------

    async def client(self) -> FhirClient:
        async with self._lock:
            if self._client is None:
                read_types = {t for r in self.rulesets.values() for t in r.mapper.resource_types}
                # The service may write subjects back (an API screening asks for it per call).
                self._client = await connect(
                    self.settings, read_types=read_types, writes=write_permissions(self.settings)
                )
            return self._client

    async def abilities(self) -> ServerAbilities:
        if self._abilities is None:
            client = await self.client()
            self._abilities = read_capabilities(await client.capabilities())
        return self._abilities

    async def aclose(self) -> None:
        for task in list(self.tasks):
            task.cancel()
        if self._client is not None:
            await self._client.aclose()
        await self.hook_connections.aclose()

    def spawn(self, coroutine: Any) -> None:
        task = asyncio.create_task(coroutine)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    # --- screening ------------------------------------------------------------------------------

    def evaluate(
        self, trial: str, resources: list[Json], as_of: date, lost: dict[str, str] | None = None
    ) -> list[dict[str, Any]]:
        """Verdict lines for in-memory resources (fetched, or a CDS Hooks prefetch); ``lost``:
        types the fetch could not read (criteria never rest on their absence). Read as lines of
        a file are: what holds none of the codes a mapping looks for is not mapped (a prefetch
        brings every Observation of the patient; no issue is reported here)."""
        verdicts = evaluate_resources(
            self.evaluators[trial],
            resources,
            as_of,
            notes=SourceNotes(lost=dict(lost or {})),
            as_lines=True,
        )
        for verdict in verdicts:
            self.metrics.screenings[(trial, verdict.verdict)] += 1
        return [v.as_contract(self.rulesets[trial], as_of) for v in verdicts]

    async def screen(
        self,
        trial: str,
        patient_ids: list[str],
        as_of: date,
        write_back: bool,
        *,
        alert: bool = True,
    ) -> list[dict[str, Any]]:
        """Fetch, evaluate, write back, update the worklist and alert: for a few patients.
        ``alert=False``: the caller tells the coordinators itself (the clinic screening's
        alerts name the visit)."""
        ruleset = self.rulesets[trial]
        client = await self.client()
        abilities = await self.abilities()
        fetcher = PatientFetcher(
            client,
            ruleset.mapper,
            abilities,
            codes_per_request=self.settings.fhir_codes_per_request,
            page_size=self.settings.fhir_page_size,
        )
        # A server found to take one patient per search is not asked for several again.
        fetcher.one_patient = self.one_patient_per_search
        resources: list[Json] = []
        lost: dict[str, str] = {}
        for group in chunked(patient_ids, self.settings.fhir_patients_per_request):
            fetched = await fetcher.fetch(group)
            resources += fetched.resources
            lost.update(fetched.lost)
        if fetcher.notices and not self.one_patient_per_search:
            self.one_patient_per_search = True
            log.warning("%s", fetcher.notices[0])
        for rtype in sorted(lost):
            log.warning("%s: the FHIR server would not give its records (%s)", rtype, lost[rtype])
        skipped: dict[str, str] = {}
        verdicts = evaluate_resources(
            self.evaluators[trial],
            resources,
            as_of,
            only=set(patient_ids),
            not_screened=skipped,
            notes=SourceNotes(lost=lost),
        )
        if write_back and (verdicts or skipped):
            touched = [v.patient_id for v in verdicts] + sorted(skipped)
            # One write-back per patient at a time; the subjects are read under the claim, so
            # a screening that waited sees what the one before it wrote (and writes no more).
            async with self.write_locks.hold(trial, touched):
                writer = WriteBack(
                    client,
                    ruleset,
                    as_of,
                    self.settings.subject_identifier_system,
                    abilities=abilities,
                )
                await writer.prepare(load_subjects=False)
                await writer.load_subjects_for(touched)
                await writer.write(verdicts)
                await writer.withdraw(sorted(skipped))
        contracts = [v.as_contract(ruleset, as_of) for v in verdicts]
        details = details_of(resources, ruleset.mapper.display, self.settings.mrn_system)
        for verdict, contract in zip(verdicts, contracts, strict=True):
            self.metrics.screenings[(trial, contract["verdict"])] += 1
            change = await asyncio.to_thread(
                self.store.upsert_candidate,
                trial,
                contract,
                as_of.isoformat(),
                details.get(verdict.patient_id),
            )
            if alert:
                await self.alerter.consider(change)
        return contracts

    # --- population runs ------------------------------------------------------------------------

    async def execute_run(self, run_id: str) -> None:
        """Execute (or resume) a run, unless another replica holds a live claim on it."""
        if run_id in self._running_runs:
            return  # already under way in this process
        self._running_runs.add(run_id)
        try:
            lease_seconds = self.settings.lease_seconds
            claimed = await asyncio.to_thread(
                self.store.claim_run, run_id, self.replica, lease_seconds
            )
            if not claimed:
                return  # finished, or another replica's live run
            renew = functools.partial(self.store.renew_run, run_id, self.replica, lease_seconds)
            async with kept(renew, lease_seconds) as lease:
                await self._execute_claimed(run_id, lease)
        except Exception as exc:
            # The database failed around the run (claiming it, recording its failure): the run
            # stays unfinished, and is taken up again once its lease has expired.
            log.warning("run %s could not be executed: %s", run_id, error_kind(exc))
        finally:
            self._running_runs.discard(run_id)

    async def _execute_claimed(self, run_id: str, lease: Lease) -> None:
        run = await asyncio.to_thread(self.store.get_run, run_id)
        if run is None:
            return
        try:
            as_of = date.fromisoformat(run.as_of)
            if run.source == "ndjson":
                await self._run_ndjson(run_id, run.trial, Path(run.source_detail), as_of, lease)
            else:
                await self._run_fhir(
                    run_id, run.trial, run.source_detail, as_of, bool(run.write_back), lease
                )
        except LeaseLostError:
            log.warning("run %s: lease expired and taken over by another replica", run_id)
            return
        except Exception as exc:
            # The kind only: messages from the FHIR server or the database can quote patient
            # ids and names, and run.error is returned by GET /runs/{id}.
            kind = error_kind(exc)
            log.warning("run %s failed: %s", run_id, kind)
            await asyncio.to_thread(self.store.finish_run, run_id, "failed", {}, kind, self.replica)
            return
        counts = await asyncio.to_thread(self.store.verdict_counts, run_id)
        await asyncio.to_thread(self.store.finish_run, run_id, "done", counts, "", self.replica)

    async def _run_fhir(
        self, run_id: str, trial: str, detail: str, as_of: date, write_back: bool, lease: Lease
    ) -> None:
        if not await asyncio.to_thread(self.store.has_patients, run_id):
            ids = [p for p in detail.split(",") if p]
            if not ids:
                ids = await discover_cohort(
                    await self.client(),
                    self.rulesets[trial].mapper,
                    codes_per_request=self.settings.fhir_codes_per_request,
                    page_size=self.settings.fhir_page_size,
                )
            await asyncio.to_thread(self.store.select_patients, run_id, ids)
        pending = await asyncio.to_thread(self.store.pending_of, run_id)
        for group in chunked(pending, self.settings.fhir_patients_per_request):
            if not group:
                continue
            lease.check()
            contracts = await self.screen(trial, group, as_of, write_back)
            await asyncio.to_thread(self.store.record_verdicts, run_id, contracts)

    async def _run_ndjson(
        self, run_id: str, trial: str, folder: Path, as_of: date, lease: Lease
    ) -> None:
        ruleset = self.rulesets[trial]

        def read() -> DetailsCollector:
            # A folder a Bulk export wrote may say it lacks types: judged as a screening would.
            # The collector also keeps who each patient is (the mapping's display section).
            collector = DetailsCollector(
                ruleset.mapper, as_of, IssueLog(), folder_notes(folder), self.settings.mrn_system
            )
            # Checked again now (links may have changed since the request): a file whose real
            # place is outside the allowed folders is not read.
            files, outside = files_within_roots(folder, self.settings.ndjson_roots)
            for name in outside:
                collector.issues.add(
                    InputIssue(name, 0, OUTSIDE_ROOTS, "the file links outside the allowed folders")
                )
            read_folder(collector, folder, self.settings.max_line_bytes, files)
            return collector

        collector = await asyncio.to_thread(read)
        details = collector.keeper.details()
        await asyncio.to_thread(
            self.store.record_input_issues, run_id, dict(collector.issues.counts)
        )
        ids = [pid for pid, data in collector.patients.items() if data.patient is not None]
        if not await asyncio.to_thread(self.store.has_patients, run_id):
            await asyncio.to_thread(self.store.select_patients, run_id, sorted(ids))
        pending = set(await asyncio.to_thread(self.store.pending_of, run_id))
        evaluator = self.evaluators[trial]
        batch: list[dict[str, Any]] = []
        for pid, _patient, facts in collector.screened_patients():
            if pid not in pending:
                continue
            lease.check()
            contract = evaluator.evaluate(pid, facts, as_of).as_contract(ruleset, as_of)
            batch.append(contract)
            change = await asyncio.to_thread(
                self.store.upsert_candidate, trial, contract, as_of.isoformat(), details.get(pid)
            )
            await self.alerter.consider(change)
            if len(batch) >= 200:
                await asyncio.to_thread(self.store.record_verdicts, run_id, batch)
                batch = []
        await asyncio.to_thread(self.store.record_verdicts, run_id, batch)

    async def resume_runs(self) -> None:
        """Take up unfinished runs: unclaimed ones, and those whose replica's lease expired
        (it stopped, or stalled for longer than the lease); never another's live run."""
        for run in await asyncio.to_thread(self.store.runs_to_resume, self.replica):
            if run.id not in self._running_runs:
                self.spawn(self.execute_run(run.id))

    # --- notifications --------------------------------------------------------------------------

    async def patients_of(self, resources: list[Json], references: list[str]) -> set[str]:
        """Patients concerned by notified resources (full) or references (id-only)."""
        found: set[str] = set()
        client = None
        for reference in references:
            rtype, _, rid = reference.partition("/")
            if rtype == "Patient":
                found.add(rid)
                continue
            if not (is_resource_type(rtype) and is_fhir_id(rid)):
                continue
            client = client or await self.client()
            try:
                resources.append(await client.get(f"{rtype}/{rid}"))
            except Exception:
                continue
        for resource in resources:
            patient = patient_of(resource)
            if patient is not None:
                found.add(patient)
        # A notified resource names its patient in a reference the caller wrote: only FHIR ids
        # may go on to become URLs.
        return {patient for patient in found if is_fhir_id(patient)}

    async def notified(self, resources: list[Json], references: list[str]) -> None:
        self.metrics.notifications += 1
        types = {r.get("resourceType") for r in resources} | {
            ref.split("/")[0] for ref in references
        }
        patients = await self.patients_of(resources, references)
        if not resources and not references:
            patients = await self._changed_since_ping()
        for trial, ruleset in self.rulesets.items():
            wanted = ruleset.mapper.resource_types
            if types and not (types & wanted):
                continue
            await asyncio.to_thread(
                self.store.queue, trial, patients, self.settings.debounce_seconds
            )

    async def _changed_since_ping(self) -> set[str]:
        """An empty ping says only "something changed": ask what changed since the last one."""
        since = self.last_ping.strftime("%Y-%m-%dT%H:%M:%SZ")
        self.last_ping = datetime.now(UTC)
        client = await self.client()
        found: set[str] = set()
        for ruleset in self.rulesets.values():
            found |= set(
                await changed_since(
                    client,
                    ruleset.mapper,
                    since,
                    codes_per_request=self.settings.fhir_codes_per_request,
                    page_size=self.settings.fhir_page_size,
                )
            )
        return found

    async def process_due(self) -> int:
        due = await asyncio.to_thread(self.store.take_due)
        screened = 0
        today = datetime.now(UTC).date()
        for trial, patient_ids in due.items():
            try:
                screened += len(
                    await self.screen(trial, patient_ids, today, self.settings.write_back)
                )
            except Exception as exc:
                log.warning("re-screen failed (%s); queued again", error_kind(exc))
                await asyncio.to_thread(self.store.queue, trial, set(patient_ids), 10.0)
        return screened

    async def send_audit(self) -> int:
        """The access audit's AuditEvents that are due (PRESCREEN_AUDIT_TO_FHIR)."""
        return await send_due(
            AuditLog(self.store.engine), await self.client(), self.settings.public_url or ""
        )

    async def background(self) -> None:
        """The debounce loop, retries of alerts that could not be delivered, runs left by a
        replica that stopped renewing its lease, and the daily clinic screening when due."""
        ticks = 0
        while True:
            try:
                await self.process_due()
                ticks += 1
                if ticks % 60 == 0:
                    await self.alerter.retry_unsent()
                if ticks % 20 == 0:
                    await self.resume_runs()
                    await self.clinic_schedule.tick()
                if self.settings.audit_to_fhir and ticks % 4 == 0:
                    await self.send_audit()
            except Exception as exc:
                log.warning("background loop: %s", error_kind(exc))
            await asyncio.sleep(0.5)
