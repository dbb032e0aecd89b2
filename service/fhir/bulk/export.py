"""A Bulk Data export into a folder, from kick-off to the last file, resumable at every step.

``export_to_folder`` kicks the export off (or resumes the folder's unfinished one when the
request is the same), polls until the manifest is there, downloads the output and error files in
parallel, reads the resources the files reference by id, and leaves a folder the NDJSON reader
reads as it is (``prescreen screen --source DIR``). ``finish_export`` deletes the job on the
server once the caller has what it needs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import orjson

from service.errors import FhirServerError, FhirUnavailableError, PrescreenError
from service.fhir.bulk.deletions import apply_deletions
from service.fhir.bulk.download import FileDownloader, download_all
from service.fhir.bulk.job import STATE_FILE, ExportFile, ExportJob, ExportState
from service.fhir.bulk.kickoff import BulkClient, BulkExportError, ExportGoneError
from service.fhir.bulk.plan import ExportRequest, declared_types, named_types, valid_output_type
from service.fhir.bulk.references import fetch_references
from service.fhir.connect import ungranted_reads
from service.mapping.mapper import Mapper
from service.ndjson_files import LINE_TOO_LONG, MAX_LINE_BYTES, numbered_lines, open_ndjson

# Kick-off answers meaning "not with these parameters": the types the server's answer names are
# dropped (lost sources); else it is tried without _typeFilter, which the IG lets servers refuse
# (prescreen filters locally anyway), then without the types its CapabilityStatement lacks.
REFUSED = frozenset({400, 422, 501})
# A type the kick-off's refusal names is dropped for these too (403: not allowed to read it).
REFUSES_TYPE = REFUSED | {403}
# A kick-off by GET answered so is sent again as a POST (Bulk Data 2.0 allows either).
GET_REFUSED = frozenset({405})


class ExportProgress(Protocol):
    """Where an export reports: counted tasks, and a line of text (the server's X-Progress)."""

    def task(self, description: str, total: int, unit: str = "") -> Callable[[int], None]: ...

    def status(self, description: str) -> Callable[[str], None]: ...


@dataclass(frozen=True)
class ErrorEntry:
    """One issue of an OperationOutcome in the export's error files. Only its severity and
    code: the diagnostics may quote patient data (they stay in the file, line ``line``)."""

    file: str
    line: int
    severity: str
    code: str

    @property
    def is_error(self) -> bool:
        return self.severity in ("fatal", "error")


@dataclass
class ExportReport:
    folder: Path
    request: ExportRequest  # as sent (without what the server refused)
    resumed: bool
    files: int  # output files of this export
    bytes: int
    resources: int | None  # the manifest's counts, when it gives them all
    downloaded: int  # files fetched by this run (a resumed run skips the finished ones)
    referenced: int
    errors: list[ErrorEntry]
    type_filter: str  # whether _typeFilter was sent, and why
    waited_seconds: float
    requests: int
    transaction_time: str | None
    notes: list[str] = field(default_factory=list)
    lost: dict[str, str] = field(default_factory=dict)  # types asked for and not exported
    deleted: int = 0  # resources an incremental export's deletions removed from the folder


@dataclass(frozen=True)
class ExportOptions:
    concurrency: int = 4
    ids_per_request: int = 40
    page_size: int = 200
    type_filter_note: str = ""
    require_base: bool = False  # a _since export must add to an earlier full one (screening)
    max_line: int = MAX_LINE_BYTES  # longest line read back from the files (the screening's)


def _covers(base: ExportJob, delta: ExportRequest) -> bool:
    """An earlier full export that a ``_since`` export can be added to: same scope, and every
    type the delta asks for (a type the full export lost is lost for the delta too)."""
    request = base.request
    same_scope = (request.level, request.group_id) == (delta.level, delta.group_id)
    return (
        same_scope
        and request.since is None
        and (not request.types or set(delta.types) <= base.asked_types)
    )


def _same_request(saved: ExportJob, wanted: ExportRequest) -> bool:
    # A job sent without _typeFilter, or without types, after a refusal is still the job for
    # this request.
    asked = saved.request.without_type_filters()
    return (asked.level, asked.group_id, asked.since) == (
        wanted.level,
        wanted.group_id,
        wanted.since,
    ) and saved.asked_types == set(wanted.types)


MALFORMED_ERRORS = "unreadable-manifest-entry"  # the code of an error entry that cannot be read


def plan_files(state: ExportState, manifest: dict[str, object], job: ExportJob) -> list[ExportFile]:
    """The manifest's files, every entry checked before any is used: an output entry without a
    usable URL makes its type a lost source (``job.lost``), an error entry that cannot be read
    is counted as an error, anything else malformed refuses the whole manifest."""
    files: list[ExportFile] = []
    for key, kind in (("output", "output"), ("error", "error"), ("deleted", "deleted")):
        entries = manifest.get(key)
        if entries is None and key != "output":
            continue
        if not isinstance(entries, list):
            raise BulkExportError(f"the export manifest's '{key}' is not a list")
        for entry in entries:
            rtype = entry.get("type") if isinstance(entry, dict) else None
            url = entry.get("url") if isinstance(entry, dict) else None
            usable_url = isinstance(url, str) and url.strip() != ""
            if kind == "error":
                rtype = "OperationOutcome"
                if not usable_url:
                    job.unreadable_errors += 1
                    continue
            if not valid_output_type(rtype) or (kind == "deleted" and rtype != "Bundle"):
                raise BulkExportError(
                    f"the export manifest lists a '{key}' entry without a usable type: it cannot "
                    "be read in part (what it lacks would be unknown)"
                )
            if not usable_url:
                if kind == "deleted":
                    raise BulkExportError(
                        "the export manifest lists deletions without a usable URL: the patients "
                        "would be screened on records that may have been deleted"
                    )
                job.lost.setdefault(
                    str(rtype), "the export manifest lists a file of them without a usable URL"
                )
                continue
            count = entry.get("count")
            file = ExportFile(
                kind,  # type: ignore[arg-type]
                str(rtype),
                0,
                url=str(url),
                count=count if isinstance(count, int) and not isinstance(count, bool) else None,
            )
            file.index = max(
                [state.next_index(file.type, file.kind)]
                + [f.index + 1 for f in files if f.type == file.type and f.kind == file.kind]
            )
            files.append(file)
    # A type with a file it cannot have is lost; its other files are still read (the records
    # they hold may decide a criterion, their absence never does).
    return files


def read_errors(folder: Path, job: ExportJob, max_line: int = MAX_LINE_BYTES) -> list[ErrorEntry]:
    """Every issue in the job's error files (OperationOutcome NDJSON), never raising; an error
    entry of the manifest that could not be read counts as one error."""
    entries: list[ErrorEntry] = [
        ErrorEntry(STATE_FILE, 0, "error", MALFORMED_ERRORS) for _ in range(job.unreadable_errors)
    ]
    for file in job.files:
        if file.kind != "error" or not file.done:
            continue
        try:
            with open_ndjson(folder / file.name) as handle:
                lines = list(numbered_lines(handle, max_line))
        except OSError:
            entries.append(ErrorEntry(file.name, 0, "error", "unreadable"))
            continue
        for number, line in lines:
            if line is None:
                entries.append(ErrorEntry(file.name, number, "error", LINE_TOO_LONG))
                continue
            if not line.strip():
                continue
            try:
                outcome = orjson.loads(line)
            except orjson.JSONDecodeError:
                outcome = None
            issues = outcome.get("issue") if isinstance(outcome, dict) else None
            if not isinstance(issues, list) or not issues:
                entries.append(ErrorEntry(file.name, number, "error", "unreadable"))
                continue
            for issue in issues:
                issue = issue if isinstance(issue, dict) else {}
                entries.append(
                    ErrorEntry(
                        file.name,
                        number,
                        str(issue.get("severity") or "error")[:20],
                        str(issue.get("code") or "unknown")[:40],
                    )
                )
    return entries


def _lost_by_errors(folder: Path, job: ExportJob) -> None:
    """Types the export's error files report a failure for (error or fatal) are lost sources:
    some of their records did not make it into the files. A failure naming no type of the
    request may have cost any of them: all are lost."""
    unattributed = False
    for file in job.files:
        if file.kind != "error" or not file.done:
            continue
        try:
            with open_ndjson(folder / file.name) as handle:
                lines = list(handle)
        except OSError:
            unattributed = True
            continue
        for line in lines:
            for issue in _error_issues(line):
                named = named_types(issue, job.request.types)
                for rtype in named:
                    job.lost.setdefault(rtype, "the export's error file reports a failure")
                unattributed = unattributed or not named
    if unattributed or job.unreadable_errors:
        for rtype in job.request.types:
            if rtype != "Patient":
                job.lost.setdefault(
                    rtype,
                    "the export's error file reports a failure it does not attribute to a type",
                )


def _error_issues(line: bytes) -> list[str]:
    """The text of each error or fatal issue of one error-file line (unreadable: one issue)."""
    if not line.strip():
        return []
    try:
        outcome = orjson.loads(line)
    except orjson.JSONDecodeError:
        return [""]
    issues = outcome.get("issue") if isinstance(outcome, dict) else None
    if not isinstance(issues, list) or not issues:
        return [""]
    texts = []
    for issue in issues:
        issue = issue if isinstance(issue, dict) else {}
        if str(issue.get("severity") or "error") not in ("error", "fatal"):
            continue
        details = issue.get("details")
        expression = issue.get("expression")
        parts = [
            issue.get("diagnostics"),
            details.get("text") if isinstance(details, dict) else None,
            *(expression if isinstance(expression, list) else []),
        ]
        texts.append(" ".join(p for p in parts if isinstance(p, str)))
    return texts


# A patient- or system-level kick-off answered so: a server that exports Groups only.
GROUP_ONLY_REFUSED = frozenset({400, 403})


async def _kick_off(bulk: BulkClient, job: ExportJob, notes: list[str]) -> None:
    """Kick the job's export off (see ``_kick_off_adapting``). A patient- or system-level
    export the server refuses outright stops with a message naming --group: many EHR vendors'
    servers export Groups only."""
    try:
        await _kick_off_adapting(bulk, job, notes)
    except FhirServerError as exc:
        level = job.request.level
        if level == "group" or isinstance(exc, FhirUnavailableError):
            raise
        if exc.status not in GROUP_ONLY_REFUSED:
            raise
        what = "Patient/$export" if level == "patient" else "the system-level $export"
        raise BulkExportError(
            f"the server refused {what}"
            + (f" (HTTP {exc.status})" if exc.status else "")
            + "; servers that allow patient-scoped access only export the members of a Group: "
            "give --group ID (Group/ID/$export), or screen over REST with --patients, --group "
            "or --appointments (docs/servers.md)",
            status=exc.status,
            diagnostics=exc.diagnostics,
        ) from exc


async def _kick_off_adapting(bulk: BulkClient, job: ExportJob, notes: list[str]) -> None:
    """Kick the job's export off, adapting to what the server refuses: GET refused (405)
    becomes POST; types its refusal names are dropped (lost sources); else the kick-off goes
    again without _typeFilter, then without the types its CapabilityStatement lacks. Whatever
    is dropped is noted in the job."""
    declared: frozenset[str] | None = None
    for _ in range(len(job.request.types) + 4):  # each round drops something, or stops
        request = job.request
        try:
            job.status_url = await bulk.kick_off(request, job.method)
            return
        except FhirServerError as exc:
            status = exc.status or 0
            if status in GET_REFUSED and job.method == "GET":
                job.method = "POST"
                notes.append(
                    f"the server refused the kick-off by GET (HTTP {status}): sent by POST"
                )
                continue
            why = f"the server refused the $export kick-off naming it (HTTP {status})"
            named = [t for t in named_types(exc.diagnostics, request.types) if t != "Patient"]
            if status in REFUSES_TYPE and named and "_typeFilter" not in exc.diagnostics:
                _drop(job, named, why)
                continue
            if status not in REFUSED:
                raise
            if request.type_filters:
                notes.append(
                    f"the server refused the kick-off with _typeFilter (HTTP {status}); sent "
                    "again without it (prescreen filters locally)"
                )
                job.request = request.without_type_filters()
                job.type_filter = f"not sent: the server refused it (HTTP {status})"
                continue
            if declared is None:
                declared = await _declared_types(bulk)
            undeclared = [t for t in request.types if declared and t not in declared]
            undeclared = [t for t in undeclared if t != "Patient"]
            if not undeclared:
                raise
            why = (
                "its CapabilityStatement does not list them and the $export kick-off naming "
                f"them was refused (HTTP {status})"
            )
            _drop(job, undeclared, why)
    raise BulkExportError("the server refused every form of the $export kick-off prescreen tried")


def _drop(job: ExportJob, types: list[str], why: str) -> None:
    """The export goes on without these types: lost sources (reported by the screening)."""
    for rtype in types:
        job.lost.setdefault(rtype, why)
    job.request = job.request.without_types(types)


async def _declared_types(bulk: BulkClient) -> frozenset[str]:
    """The types the server's CapabilityStatement lists; empty when it cannot be read."""
    try:
        return declared_types(await bulk.fhir.capabilities())
    except FhirServerError:
        return frozenset()


async def _drop_ungranted(bulk: BulkClient, job: ExportJob) -> None:
    """Types the access token's granted scopes do not cover are lost before the kick-off."""
    missing = await ungranted_reads(bulk.fhir, [t for t in job.request.types if t != "Patient"])
    if missing:
        _drop(job, missing, "the server did not grant a scope to read them")


def _start(state: ExportState, request: ExportRequest, options: ExportOptions) -> ExportJob:
    if request.since is None:
        for old in list(state.jobs):
            state.drop(old)
    elif options.require_base and not any(
        job.phase == "finished" and _covers(job, request) for job in state.jobs
    ):
        raise PrescreenError(
            "--since with --bulk adds the changes to an earlier full export in the same output "
            "folder, and there is none for this server, scope and trial (screening the changes "
            "alone would judge patients on part of their record): run once without --since"
        )
    job = ExportJob(request, type_filter=options.type_filter_note)
    state.jobs.append(job)
    state.save()
    return job


async def export_to_folder(
    bulk: BulkClient,
    folder: Path,
    request: ExportRequest,
    *,
    mappers: Iterable[Mapper] = (),
    options: ExportOptions | None = None,
    progress: ExportProgress | None = None,
) -> ExportReport:
    options = options or ExportOptions()
    mappers = list(mappers)
    requests_before = bulk.fhir.stats.requests
    state = ExportState.load(folder, bulk.fhir.base_url)
    notes: list[str] = []
    for old in list(state.jobs):
        if old.phase == "expired":
            state.drop(old)
    saved = state.current
    job: ExportJob | None = None
    resumed = False
    if saved is not None and saved.phase in ("running", "downloaded"):
        if _same_request(saved, request):
            job, resumed = saved, True
            notes.append("resumed the export an earlier run started")
        else:
            notes.append("an unfinished export for another request was cancelled")
            if saved.status_url and not saved.deleted:
                await bulk.delete(saved.status_url)
            state.drop(saved)
    if job is None:
        job = _start(state, request, options)

    note = progress.status("Waiting for the export") if progress else None
    for attempt in range(2):
        if job.status_url is None:
            await _drop_ungranted(bulk, job)
            await _kick_off(bulk, job, notes)
            state.save()
        if job.manifest is not None:
            break
        if job.status_url is None:  # pragma: no cover - _kick_off sets it or raises
            raise BulkExportError("the export has no status URL")
        try:
            manifest = await bulk.wait_for_manifest(job.status_url, note)
        except ExportGoneError:
            if not resumed or attempt:
                raise
            # The saved job vanished (expired, server restarted): start it again, once.
            notes.append("the saved export was gone from the server; started a new one")
            state.drop(job)
            job = _start(state, request, options)
            continue
        job.files = plan_files(state, manifest, job)
        job.manifest = manifest
        state.save()
        break
    if note is not None:
        note("complete")

    pending = [f for f in job.files if not f.done and f.kind != "referenced"]
    downloader = FileDownloader(bulk, folder, requires_token=job.requires_token, save=state.save)
    advance = (
        progress.task("Downloading export files", len(pending)) if progress and pending else None
    )
    try:
        await download_all(downloader, pending, options.concurrency, advance)
    except ExportGoneError as exc:
        job.phase = "expired"
        state.save()
        raise ExportGoneError(
            f"{exc} Run the same command again: prescreen starts a new export (the files of "
            "this one are dropped).",
            status=exc.status,
            diagnostics=exc.diagnostics,
        ) from None
    _lost_by_errors(folder, job)
    deleted = 0
    if not job.deletions_done:
        deleted = apply_deletions(state, job)
    referenced = 0
    if not job.referenced_done:
        referenced = await fetch_references(
            bulk.fhir,
            state,
            job,
            mappers,
            ids_per_request=options.ids_per_request,
            page_size=options.page_size,
            max_line=options.max_line,
        )
    if job.phase == "running":
        job.phase = "downloaded"
    job.notes = list(dict.fromkeys([*job.notes, *notes]))
    state.save()
    outputs = [f for f in job.files if f.kind == "output"]
    counts = [f.count for f in outputs]
    manifest = job.manifest or {}
    return ExportReport(
        folder=folder,
        request=job.request,
        resumed=resumed,
        files=len(outputs),
        bytes=sum(f.bytes for f in outputs),
        resources=sum(c for c in counts if c is not None) if None not in counts else None,
        downloaded=downloader.fetched,
        referenced=referenced,
        errors=read_errors(folder, job, options.max_line),
        type_filter=job.type_filter or options.type_filter_note,
        waited_seconds=bulk.waited,
        requests=bulk.fhir.stats.requests - requests_before,
        transaction_time=str(manifest.get("transactionTime") or "") or None,
        notes=notes,
        lost=dict(job.lost),
        deleted=deleted,
    )


async def finish_export(bulk: BulkClient, folder: Path, *, keep: bool) -> bool | None:
    """Mark the folder's export as consumed and, unless ``keep``, delete it on the server.
    Returns whether the server took the deletion (None: kept, or nothing to delete)."""
    state = ExportState.load(folder, bulk.fhir.base_url)
    job = state.current
    if job is None:
        return None
    deleted: bool | None = None
    if not keep and job.status_url and not job.deleted:
        deleted = await bulk.delete(job.status_url)
        job.deleted = deleted
    job.phase = "finished"
    state.save()
    return deleted
