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

from service.errors import FhirServerError, PrescreenError
from service.fhir.bulk.download import FileDownloader, download_all
from service.fhir.bulk.job import ExportFile, ExportJob, ExportState
from service.fhir.bulk.kickoff import BulkClient, BulkExportError, ExportGoneError, manifest_files
from service.fhir.bulk.plan import ExportRequest, valid_output_type
from service.fhir.bulk.references import fetch_references
from service.mapping.mapper import Mapper
from service.ndjson_files import LINE_TOO_LONG, MAX_LINE_BYTES, numbered_lines, open_ndjson

# Kick-off answers meaning "not with these parameters": tried once more without _typeFilter,
# which the IG lets servers refuse (prescreen filters locally anyway).
REFUSED = frozenset({400, 422, 501})


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
    request: ExportRequest  # as sent (without _typeFilter if the server refused it)
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


@dataclass(frozen=True)
class ExportOptions:
    concurrency: int = 4
    ids_per_request: int = 40
    page_size: int = 200
    type_filter_note: str = ""
    require_base: bool = False  # a _since export must add to an earlier full one (screening)
    max_line: int = MAX_LINE_BYTES  # longest line read back from the files (the screening's)


def _covers(base: ExportRequest, delta: ExportRequest) -> bool:
    """An earlier full export that a ``_since`` export can be added to: same scope, and every
    type the delta carries."""
    same_scope = (base.level, base.group_id) == (delta.level, delta.group_id)
    return (
        same_scope
        and base.since is None
        and (not base.types or set(delta.types) <= set(base.types))
    )


def _same_request(saved: ExportRequest, wanted: ExportRequest) -> bool:
    # A job sent without _typeFilter after a refusal is still the job for this request.
    return saved.without_type_filters() == wanted.without_type_filters()


def plan_files(state: ExportState, manifest: dict[str, object]) -> list[ExportFile]:
    files: list[ExportFile] = []
    for key, kind in (("output", "output"), ("error", "error")):
        for entry in manifest_files(manifest, key):
            rtype = entry.get("type") if kind == "output" else "OperationOutcome"
            if not valid_output_type(rtype):
                raise FhirServerError(
                    "the export manifest names an output file whose type is not a resource type"
                )
            count = entry.get("count")
            file = ExportFile(
                kind,  # type: ignore[arg-type]
                str(rtype),
                0,
                url=str(entry["url"]),
                count=count if isinstance(count, int) else None,
            )
            file.index = max(
                [state.next_index(file.type, file.kind)]
                + [f.index + 1 for f in files if f.type == file.type and f.kind == file.kind]
            )
            files.append(file)
    return files


def read_errors(folder: Path, job: ExportJob, max_line: int = MAX_LINE_BYTES) -> list[ErrorEntry]:
    """Every issue in the job's error files (OperationOutcome NDJSON), never raising."""
    entries: list[ErrorEntry] = []
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


async def _kick_off(bulk: BulkClient, job: ExportJob, notes: list[str]) -> None:
    request = job.request
    try:
        job.status_url = await bulk.kick_off(request)
    except FhirServerError as exc:
        if not (request.type_filters and exc.status in REFUSED):
            raise
        notes.append(
            f"the server refused the kick-off with _typeFilter (HTTP {exc.status}); sent again "
            "without it (prescreen filters locally)"
        )
        job.request = request.without_type_filters()
        job.type_filter = f"not sent: the server refused it (HTTP {exc.status})"
        job.status_url = await bulk.kick_off(job.request)


def _start(state: ExportState, request: ExportRequest, options: ExportOptions) -> ExportJob:
    if request.since is None:
        for old in list(state.jobs):
            state.drop(old)
    elif options.require_base and not any(
        job.phase == "finished" and _covers(job.request, request) for job in state.jobs
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
        if _same_request(saved.request, request):
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
        job.files = plan_files(state, manifest)
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
