"""``prescreen screen --fhir-url``: a live run against a FHIR server's REST API (the patients of
the cohort, the ids given, or those changed since an instant); several trials share one reading
of the server."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING

import orjson
from rich.markup import escape

from service.console import RichProgress, console, stdout
from service.errors import PrescreenError
from service.screening.cli_tables import print_overlap, print_summary
from service.settings import Settings

if TYPE_CHECKING:  # imported lazily at run time: start-up stays fast for every command
    from rich.console import Console

    from service.ruleset.loader import RuleSet
    from service.screening.live import LiveSummary, Selection


def add_live_arguments(screen: argparse.ArgumentParser) -> None:
    live = screen.add_argument_group("live runs (--fhir-url)")
    live.add_argument(
        "--patients",
        help="comma-separated patient ids (default: the cohort; without --bulk, --group ID "
        "screens the members of a Group)",
    )
    live.add_argument("--patients-file", help="file with one patient id per line")
    live.add_argument("--since", help="patients with resources updated after this instant")
    live.add_argument(
        "--appointments",
        metavar="DATE[..DATE]",
        help="the patients with an appointment on these days (both included, in "
        "PRESCREEN_CLINIC_TIMEZONE); cancelled, no-show and entered-in-error ones left out",
    )
    live.add_argument(
        "--appointment-filter",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="an Appointment search parameter narrowing --appointments (practitioner=..., "
        "location=..., service-type=...; repeatable)",
    )
    live.add_argument("--write-back", action="store_true", help="write ResearchSubjects back")
    live.add_argument(
        "--dry-run", action="store_true", help="print the write-back transactions, send nothing"
    )
    live.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.ndjson")


def selection(args: argparse.Namespace, settings: Settings) -> Selection:
    from service.fhir.appointments import parse_days, parse_filters
    from service.screening.live import Selection

    ids: list[str] = []
    if args.patients:
        ids += [p.strip() for p in args.patients.split(",") if p.strip()]
    if args.patients_file:
        lines = Path(args.patients_file).read_text(encoding="utf-8").splitlines()
        ids += [line.strip() for line in lines if line.strip()]
    group = getattr(args, "group", None)
    appointments = getattr(args, "appointments", None)
    filters = getattr(args, "appointment_filter", None) or []
    given = [
        name
        for name, value in (
            ("patient ids", ids),
            ("--since", args.since),
            ("--group", group),
            ("--appointments", appointments),
        )
        if value
    ]
    if len(given) > 1:
        raise PrescreenError(
            f"give one of patient ids, --since, --group, --appointments, not {given}"
        )
    if filters and not appointments:
        raise PrescreenError("--appointment-filter narrows --appointments: give that too")
    if ids:
        return Selection("ids", ids=tuple(ids))
    if args.since:
        return Selection("since", since=args.since)
    if group:
        return Selection("group", group=group)
    if appointments:
        return Selection(
            "appointments",
            days=parse_days(appointments, settings.clinic_timezone),
            filters=parse_filters(filters),
            ignored_statuses=settings.ignored_appointment_statuses,
        )
    return Selection("cohort")


def screen_live(
    args: argparse.Namespace, settings: Settings, ruleset: RuleSet, as_of: date, out: Path
) -> int:
    """One trial, its files in ``out``."""
    return screen_live_portfolio(args, settings, [ruleset], as_of, out)


def screen_live_portfolio(
    args: argparse.Namespace,
    settings: Settings,
    rulesets: Sequence[RuleSet],
    as_of: date,
    out: Path,
) -> int:
    """Every trial on one reading of the server (several: ``out/<trial>/`` each)."""
    import asyncio

    from service.screening.live import live_options, screen_portfolio_url

    options = live_options(
        settings,
        as_of=as_of,
        out=out,
        selection=selection(args, settings),
        write_back=args.write_back,
        dry_run=args.dry_run,
        resume=args.resume,
    )
    # A dry run's stdout is the transaction Bundles alone, one JSON per line (NDJSON), so it
    # can be piped; the tables and messages go to stderr.
    report = console if args.dry_run else stdout
    with RichProgress(enabled=not args.no_progress) as progress:
        portfolio = asyncio.run(
            screen_portfolio_url(
                settings,
                args.fhir_url,
                rulesets,
                options,
                progress=progress,
                echo=lambda bundle: print(orjson.dumps(bundle).decode(), flush=True),
            )
        )
    _report_reading(portfolio.summaries[0], report)
    for summary in portfolio.summaries:
        _report_trial(summary, report, args.dry_run)
    if len(portfolio.summaries) > 1:
        print_overlap(portfolio.overview, out)
        per_patient = portfolio.requests / portfolio.screened if portfolio.screened else 0.0
        report.print(
            f"One reading for {len(portfolio.summaries)} trials: {portfolio.requests} HTTP "
            f"requests, {per_patient:.3f} per screened patient ({portfolio.screened} patients)."
        )
    return portfolio.exit_code


def _report_reading(summary: LiveSummary, report: Console) -> None:
    """Once for all the trials: what the server allowed, and the clinic list read."""
    live = summary.extra_json()["live"]
    for notice in live["server_notices"]:
        report.print(f"[yellow]FHIR server:[/] {escape(notice)}")
    chosen = live["selection"]
    if chosen.get("kind") == "appointments":
        days = chosen["days"]
        report.print(
            f"Clinic list {days['first']}..{days['last']} ({days['zone']}): "
            f"{chosen['appointments_read']} appointments read, {chosen['appointments_kept']} "
            f"kept, ignored {chosen['appointments_ignored'] or 'none'}; "
            f"{chosen['patients']} patients."
        )


def _report_trial(summary: LiveSummary, report: Console, dry_run: bool) -> None:
    print_summary(summary, report)
    live = summary.extra_json()["live"]
    for warning in live["capability_warnings"]:
        report.print(f"[yellow]CapabilityStatement:[/] {escape(warning)}")
    report.print(
        f"Selected {live['selected']} patients ({live['resumed_from_checkpoint']} already done); "
        f"{live['requests']} HTTP requests, {live['requests_per_screened_patient']} per screened "
        f"patient, {live['retries']} retries."
    )
    if "write_back" in live:
        report.print(f"Write-back{' (dry run)' if dry_run else ''}: {live['write_back']}")
    if summary.unscreened:
        report.print(
            f"[red]{len(summary.unscreened)} patient(s) not screened[/]; listed in "
            f"{summary.out / 'unscreened.ndjson'}. Run again with --resume to finish."
        )
