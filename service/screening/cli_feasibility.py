"""``prescreen feasibility``: patients per trial and funnel step, new candidates per month."""

from __future__ import annotations

import argparse
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING

from rich.markup import escape
from rich.table import Table

from service import catalog
from service.console import (
    EXIT_OK,
    EXIT_PARTIAL,
    RichProgress,
    console,
    parse_as_of,
    settings_for,
    stdout,
    trial_names,
)
from service.errors import PrescreenError

if TYPE_CHECKING:  # imported lazily at run time: start-up stays fast for every command
    from service.screening.feasibility_report import FeasibilityReport


def register_feasibility(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    feasibility = sub.add_parser(
        "feasibility",
        parents=[common],
        help="patients per trial and funnel step, new candidates per month (small counts hidden)",
    )
    feasibility.add_argument("--trial", required=True, help="relieve, relieve,ssrs or all")
    feasibility.add_argument("--source", help="folder of <ResourceType>.ndjson files")
    feasibility.add_argument(
        "--fhir-url", help="FHIR R4 base URL: each trial's cohort, fetched as a live run does"
    )
    feasibility.add_argument(
        "--from",
        dest="start",
        help="first day of the months counted, YYYY-MM-DD (default: the 1st of the month "
        "eleven months before --to's)",
    )
    feasibility.add_argument(
        "--to", dest="end", help="the day counted, YYYY-MM-DD (default: today, UTC)"
    )
    feasibility.add_argument(
        "--suppress-below",
        type=int,
        help="show counts below this as <N (PRESCREEN_FEASIBILITY_SUPPRESS_BELOW, default 5)",
    )
    feasibility.add_argument("--out", required=True, help="folder for the report's files")
    feasibility.add_argument("--no-progress", action="store_true", help="no progress bars")
    feasibility.set_defaults(func=cmd_feasibility)


def cmd_feasibility(args: argparse.Namespace) -> int:
    import asyncio

    from service.screening.facts import doubtful
    from service.screening.feasibility import count_folder, count_server, default_start
    from service.screening.feasibility_files import write_report
    from service.screening.feasibility_report import publish

    settings = settings_for(args)
    threshold = settings.feasibility_suppress_below
    if args.suppress_below is not None:
        threshold = args.suppress_below
    if threshold < 1:
        raise PrescreenError("--suppress-below must be 1 or more")
    rulesets = [catalog.load_trial(trial, settings) for trial in trial_names(args.trial, settings)]
    end = parse_as_of(args.end)
    start = default_start(end) if args.start is None else _day(args.start, "--from")
    fhir_url = args.fhir_url or (settings.fhir_url if args.source is None else None)
    if args.source and args.fhir_url:
        raise PrescreenError("give --source DIR or --fhir-url URL, not both")
    out = Path(args.out)
    with RichProgress(enabled=not args.no_progress) as progress:
        if fhir_url:
            counts = asyncio.run(
                count_server(settings, fhir_url, rulesets, start, end, progress=progress)
            )
        elif args.source:
            source = Path(args.source)
            if not source.is_dir():
                raise PrescreenError(f"--source {source} is not a folder")
            counts = count_folder(
                rulesets, source, start, end, engine=settings.cel_engine, progress=progress
            )
        else:
            raise PrescreenError("give --source DIR (NDJSON) or --fhir-url URL (a FHIR server)")
    report = publish(counts, threshold)
    write_report(report, out)
    print_report(report)
    _plot(report, out)
    stdout.print(
        f"Wrote {out}/feasibility.html, feasibility.csv, feasibility.json and MeasureReport.json"
    )
    if any(doubtful(log) for log in counts.issues) or any(t.rule_errors for t in counts.trials):
        console.print(
            f"[yellow]{report.input_issues} input problem(s)[/] (prescreen screen lists each "
            "with file and line)"
        )
        return EXIT_PARTIAL
    return EXIT_OK


def _day(text: str, option: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError as exc:
        raise PrescreenError(f"{option} must be a date as YYYY-MM-DD, not '{text}'") from exc


def print_report(report: FeasibilityReport) -> None:
    for trial in report.trials:
        table = Table(title=f"{trial.acronym}: patients on {report.end.isoformat()}")
        table.add_column("step")
        table.add_column("patients", justify="right")
        for step in trial.funnel:
            table.add_row(step.label, step.cell.shown)
        for name in ("potential-candidate", "ineligible"):
            table.add_row(f"[dim]{name}", trial.verdicts[name].shown)
        stdout.print(table)
        months = Table(title=f"{trial.acronym}: new candidates per month")
        months.add_column("month")
        months.add_column("new candidates", justify="right")
        for month in trial.months:
            months.add_row(month.month, month.new_candidates.shown)
        months.add_row("[bold]total", f"[bold]{trial.new_candidates.shown}")
        stdout.print(months)
    stdout.print(
        f"Counts below {report.threshold} are shown as <{report.threshold}; 'suppressed' hides "
        "a count from which one of them could be worked out."
    )


def _plot(report: FeasibilityReport, out: Path) -> None:
    from service.screening import plots
    from service.screening.feasibility_files import PLOT

    if not plots.available():
        console.print(f"No plot: {plots.INSTALL_HINT}.")
        return
    plots.monthly_plot(
        out / PLOT,
        f"New candidates per month, {report.start.isoformat()} to {report.end.isoformat()}",
        [m.month for m in report.trials[0].months],
        [
            (t.acronym, [(m.new_candidates.count, m.new_candidates.shown) for m in t.months])
            for t in report.trials
        ],
    )
    console.print(f"Plot: {escape(str(out / PLOT))}")
