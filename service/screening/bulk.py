"""Screening by Bulk Data export: export the population's resources, then screen the folder.

The export lands in ``OUT/bulk/`` (``<Type>.<n>.ndjson``), and that folder is screened by the
offline run exactly as ``--source OUT/bulk`` would be, so the outputs are the same files. The
export's error-file entries of severity error or fatal become input issues (``export-error``).
The job is deleted on the server once the screening is written (unless kept); a run stopped
anywhere before that is resumed by the same command (see service/fhir/bulk/job.py).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import date
from pathlib import Path

from service.errors import SourceError
from service.fhir.bulk.export import (
    ErrorEntry,
    ExportOptions,
    ExportProgress,
    ExportReport,
    export_to_folder,
    finish_export,
)
from service.fhir.bulk.kickoff import BodyLimits, BulkClient, PollPolicy
from service.fhir.bulk.plan import (
    ExportLevel,
    ExportRequest,
    plan_export,
    type_filter_support,
)
from service.fhir.client import FhirClient
from service.fhir.connect import connect
from service.fhir.retrieval import MAX_CODE_CHUNKS
from service.mapping.mapper import Mapper
from service.ndjson_files import discover
from service.ruleset.loader import RuleSet
from service.screening.pool import auto_workers, source_bytes
from service.screening.run import screen_portfolio
from service.screening.source import InputIssue
from service.screening.summary import PortfolioSummary
from service.settings import Settings

BULK_FOLDER = "bulk"
EXPORT_ERROR = "export-error"  # the issue kind of an error the server reported in the export


@dataclass(frozen=True)
class BulkScope:
    """What to export: the level (or a Group), and changes since an instant."""

    level: ExportLevel = "patient"
    group_id: str | None = None
    since: str | None = None


@dataclass
class BulkExportRun:
    report: ExportReport
    deleted: bool | None  # the job deleted on the server (None: kept)


@dataclass
class BulkScreening(BulkExportRun):
    portfolio: PortfolioSummary | None = None


def holds_files(folder: Path) -> bool:
    try:
        return bool(discover(folder))
    except SourceError:
        return False


def export_issues(entries: Sequence[ErrorEntry], folder: str = BULK_FOLDER) -> list[InputIssue]:
    """The error-file entries that are errors, as input issues pointing at the file's line."""
    return [
        InputIssue(
            f"{folder}/{entry.file}",
            entry.line,
            EXPORT_ERROR,
            f"the server reported an issue of severity {entry.severity} (code {entry.code}) in "
            "the export's error file; its diagnostics are on that line",
        )
        for entry in entries
        if entry.is_error
    ]


async def plan_request(
    client: FhirClient, mappers: Sequence[Mapper], settings: Settings, scope: BulkScope
) -> tuple[ExportRequest, str]:
    """The kick-off for these mappings, and what was decided about ``_typeFilter`` and why."""
    mode = settings.bulk_type_filter
    if not mappers:
        send, why = False, "no trial given: the export is not restricted"
    elif scope.since is not None:
        send, why = False, "a _since export carries none (a changed record must still arrive)"
    elif mode == "never":
        send, why = False, "PRESCREEN_BULK_TYPE_FILTER=never"
    elif mode == "always":
        send, why = True, "PRESCREEN_BULK_TYPE_FILTER=always"
    else:
        send, why = await type_filter_support(client)
    request = plan_export(
        mappers,
        level=scope.level,
        group_id=scope.group_id,
        since=scope.since,
        filter_types=send,
        max_tokens=settings.fhir_codes_per_request * MAX_CODE_CHUNKS,
    )
    if send and not request.type_filters:
        send, why = False, "the mappings have no filter the server could apply"
    return request, f"{'sent' if send else 'not sent'}: {why}"


def bulk_client(client: FhirClient, settings: Settings) -> BulkClient:
    return BulkClient(
        client,
        timeout=settings.fhir_timeout,
        poll=PollPolicy(
            first=settings.bulk_poll_seconds,
            cap=settings.bulk_poll_max_seconds,
            max_wait=settings.bulk_max_wait_seconds,
            max_retry_after=settings.bulk_retry_after_max_seconds,
            min_interval=settings.bulk_poll_min_seconds,
        ),
        limits=BodyLimits(
            status=settings.bulk_max_status_bytes,
            manifest=settings.bulk_max_manifest_bytes,
            file=settings.bulk_max_file_bytes,
        ),
    )


def _options(settings: Settings, note: str, require_base: bool) -> ExportOptions:
    return ExportOptions(
        concurrency=settings.bulk_download_concurrency,
        ids_per_request=settings.fhir_codes_per_request,
        page_size=settings.fhir_page_size,
        type_filter_note=note,
        require_base=require_base,
        max_line=settings.max_line_bytes,
    )


@asynccontextmanager
async def _exported(
    settings: Settings,
    fhir_url: str | None,
    rulesets: Sequence[RuleSet],
    folder: Path,
    scope: BulkScope,
    *,
    require_base: bool,
    progress: ExportProgress | None,
) -> AsyncIterator[tuple[BulkClient, ExportReport]]:
    """Connect, plan the kick-off for the trials' mappings and export into ``folder``; the
    connection stays open in the body, which finishes the job (``finish_export``) when its
    own work is done."""
    mappers = [ruleset.mapper for ruleset in rulesets]
    read_types = {t for m in mappers for t in m.resource_types}
    client = await connect(settings, fhir_url, read_types)
    async with client, bulk_client(client, settings) as bulk:
        request, note = await plan_request(client, mappers, settings, scope)
        report = await export_to_folder(
            bulk,
            folder,
            request,
            mappers=mappers,
            options=_options(settings, note, require_base=require_base),
            progress=progress,
        )
        yield bulk, report


async def export_only(
    settings: Settings,
    fhir_url: str | None,
    rulesets: Sequence[RuleSet],
    out: Path,
    scope: BulkScope,
    *,
    keep_export: bool,
    progress: ExportProgress | None = None,
) -> BulkExportRun:
    """``prescreen export``: the download alone, into ``out``."""
    async with _exported(
        settings, fhir_url, rulesets, out, scope, require_base=False, progress=progress
    ) as (bulk, report):
        deleted = await finish_export(bulk, out, keep=keep_export)
    return BulkExportRun(report, deleted)


async def screen_bulk(
    settings: Settings,
    fhir_url: str | None,
    rulesets: Sequence[RuleSet],
    as_of: date,
    out: Path,
    scope: BulkScope,
    *,
    keep_export: bool,
    progress: ExportProgress | None = None,
    workers: int | None = 1,
) -> BulkScreening:
    """``prescreen screen --bulk``: export into ``OUT/bulk``, screen it, delete the job.
    ``workers``: processes screening the folder (None: as for ``--source``, by its size)."""
    folder = out / BULK_FOLDER
    async with _exported(
        settings, fhir_url, rulesets, folder, scope, require_base=True, progress=progress
    ) as (bulk, report):
        if not holds_files(folder):
            await finish_export(bulk, folder, keep=keep_export)
            raise SourceError(
                "the export holds no NDJSON file: the server exported nothing for this scope "
                "(an empty Group, or no patients?)"
            )
        # The same offline run as --source: the same reader, mappings and output files.
        portfolio = screen_portfolio(
            rulesets,
            folder,
            as_of,
            out,
            engine=settings.cel_engine,
            subject_identifier_system=settings.subject_identifier_system,
            progress=progress,
            source_issues=export_issues(report.errors),
            workers=auto_workers(source_bytes(folder)) if workers is None else workers,
            max_line=settings.max_line_bytes,
        )
        deleted = await finish_export(bulk, folder, keep=keep_export)
    return BulkScreening(report, deleted, portfolio)
