"""Bulk Data ``$export`` on the command line: ``prescreen screen --bulk`` (export, then screen the
files) and ``prescreen export`` (the export alone, into a folder)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from rich.markup import escape

from service import catalog
from service.console import (
    EXIT_OK,
    EXIT_PARTIAL,
    RichProgress,
    console,
    settings_for,
    stdout,
    trial_names,
)
from service.errors import PrescreenError
from service.screening.cli_tables import print_overlap, print_summary
from service.settings import Settings

if TYPE_CHECKING:  # imported lazily at run time: start-up stays fast for every command
    from service.ruleset.loader import RuleSet
    from service.screening.bulk import BulkExportRun, BulkScope

T = TypeVar("T")


def _export_arguments(group: argparse._ActionsContainer) -> None:
    group.add_argument(
        "--group",
        help="the members of this Group: exported (Group/ID/$export), or in a REST screen "
        "(no --bulk) read from Group/ID and screened one by one",
    )
    group.add_argument(
        "--export-level",
        choices=("patient", "system"),
        default="patient",
        help="without --group: Patient/$export (default) or the system-level $export",
    )
    group.add_argument(
        "--keep-export", action="store_true", help="do not delete the export job on the server"
    )


def add_bulk_arguments(screen: argparse.ArgumentParser) -> None:
    """The options of ``prescreen screen --bulk``, in a group of their own."""
    bulk = screen.add_argument_group(
        "Bulk Data export (--fhir-url with --bulk; --since adds the changes to OUT/bulk)"
    )
    bulk.add_argument(
        "--bulk", action="store_true", help="$export into OUT/bulk, then screen it as --source"
    )
    _export_arguments(bulk)


def register_export(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    export = sub.add_parser(
        "export", parents=[common], help="Bulk Data $export of a FHIR server into a folder"
    )
    export.add_argument("--fhir-url", help="FHIR R4 base URL (PRESCREEN_FHIR_URL)")
    export.add_argument("--out", required=True, help="folder for the NDJSON files")
    export.add_argument(
        "--trial", help="export only what these trials read (relieve, relieve,ssrs or all)"
    )
    export.add_argument("--since", help="only resources changed after this FHIR instant")
    export.add_argument("--no-progress", action="store_true", help="no progress bars")
    _export_arguments(export)
    export.set_defaults(func=cmd_export)


def _bulk_scope(args: argparse.Namespace) -> BulkScope:
    from service.screening.bulk import BulkScope

    if args.group and args.export_level == "system":
        raise PrescreenError("give --group ID or --export-level system, not both")
    if args.group:
        return BulkScope("group", args.group, args.since)
    return BulkScope(args.export_level, None, args.since)


def _show_server_diagnostics(run: Callable[[], T]) -> T:
    """Run; a FHIR server's OperationOutcome text goes to the operator before the error line."""
    from service.errors import FhirServerError

    try:
        return run()
    except FhirServerError as exc:
        if exc.diagnostics:
            console.print(f"[red]the server said:[/] {escape(exc.diagnostics[:500])}")
        raise


def screen_bulk_export(
    args: argparse.Namespace,
    settings: Settings,
    rulesets: list[RuleSet],
    as_of: date,
    out: Path,
) -> int:
    import asyncio

    from service.screening.bulk import screen_bulk

    if args.source:
        raise PrescreenError("--bulk exports from a FHIR server: give --fhir-url, not --source")
    for flag, given in (
        ("--patients", args.patients),
        ("--patients-file", args.patients_file),
        ("--appointments", args.appointments),
        ("--write-back", args.write_back),
        ("--dry-run", args.dry_run),
        ("--resume", args.resume),
    ):
        if given:
            raise PrescreenError(
                f"{flag} is for REST runs; --bulk screens every patient of the export (and a "
                "stopped --bulk run resumes by itself)"
            )
    if not (args.fhir_url or settings.fhir_url):
        raise PrescreenError("--bulk needs --fhir-url URL (or PRESCREEN_FHIR_URL)")
    if args.workers is not None and args.workers < 1:
        raise PrescreenError("--workers must be 1 or more")
    scope = _bulk_scope(args)
    with RichProgress(enabled=not args.no_progress) as progress:
        run = _show_server_diagnostics(
            lambda: asyncio.run(
                screen_bulk(
                    settings,
                    args.fhir_url,
                    rulesets,
                    as_of,
                    out,
                    scope,
                    keep_export=args.keep_export,
                    progress=progress,
                    workers=args.workers,
                )
            )
        )
    assert run.portfolio is not None
    for summary in run.portfolio.summaries:
        print_summary(summary)
    if run.portfolio.overview:
        print_overlap(run.portfolio.overview, out)
    _print_export(run)
    return run.portfolio.exit_code


def cmd_export(args: argparse.Namespace) -> int:
    import asyncio

    from service.screening.bulk import export_only

    settings = settings_for(args)
    rulesets = (
        [catalog.load_trial(trial, settings) for trial in trial_names(args.trial, settings)]
        if args.trial
        else []
    )
    if not (args.fhir_url or settings.fhir_url):
        raise PrescreenError("give --fhir-url URL (or set PRESCREEN_FHIR_URL)")
    scope = _bulk_scope(args)
    out = Path(args.out)
    with RichProgress(enabled=not args.no_progress) as progress:
        run = _show_server_diagnostics(
            lambda: asyncio.run(
                export_only(
                    settings,
                    args.fhir_url,
                    rulesets,
                    out,
                    scope,
                    keep_export=args.keep_export,
                    progress=progress,
                )
            )
        )
    _print_export(run)
    stdout.print(f"Wrote {out}/ (screen it with: prescreen screen --source {out} …)")
    doubtful = run.report.lost or any(entry.is_error for entry in run.report.errors)
    return EXIT_PARTIAL if doubtful else EXIT_OK


def _print_export(run: BulkExportRun) -> None:
    report = run.report
    request = report.request
    scope = f"Group/{request.group_id}" if request.group_id else request.level
    since = f", changes since {request.since}" if request.since else ""
    resources = f", {report.resources} resources" if report.resources is not None else ""
    stdout.print(
        f"Bulk export ({scope}{since}): {report.files} files, {report.bytes / 1e6:.1f} MB"
        f"{resources}; {report.downloaded} downloaded by this run"
        f"{' (resumed)' if report.resumed else ''}; {report.referenced} referenced resources "
        f"read by id; {report.requests} HTTP requests; {report.waited_seconds:.0f}s waiting for "
        f"the server. _typeFilter {report.type_filter}."
    )
    for note in report.notes:
        stdout.print(f"[yellow]note:[/] {escape(note)}")
    for rtype, why in sorted(report.lost.items()):
        stdout.print(
            f"[yellow]not exported:[/] {rtype}: {escape(why)} (the criteria reading it are "
            "unknown wherever they would rest on its absence)"
        )
    if report.deleted:
        stdout.print(
            f"{report.deleted} copies of resources the server deleted were removed from the "
            "export's files"
        )
    if report.errors:
        errors = sum(entry.is_error for entry in report.errors)
        stdout.print(
            f"[yellow]The export's error files list {errors} error(s) and "
            f"{len(report.errors) - errors} other issue(s)[/] (in {report.folder}/errors/)"
        )
    if run.deleted is None:
        stdout.print("The export job is kept on the server (--keep-export).")
    elif run.deleted:
        stdout.print("The export job was deleted on the server.")
    else:
        stdout.print("[yellow]The server did not take the deletion of the export job.[/]")
