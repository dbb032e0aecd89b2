"""The ``prescreen`` command line.

Exit codes: 0 success; 1 finished, but some input lines or rule evaluations were unusable, or a
rule test failed; 2 the job could not start (unknown trial, missing folder, invalid rule file).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import orjson
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from service import catalog, synth_cli, web_cli
from service.console import (
    EXIT_INTERNAL,
    EXIT_OK,
    EXIT_PARTIAL,
    EXIT_UNUSABLE,
    RichProgress,
    console,
    listed_trials,
    parse_as_of,
    settings_for,
    stdout,
    trial_names,
)
from service.errors import PrescreenError, RuleSetError
from service.fhir import cli as fhir_cli
from service.ruleset.engines import ENGINE_NAMES, EngineName
from service.settings import Settings
from service.ui import cli as ui_cli

if TYPE_CHECKING:  # imported lazily at run time: start-up stays fast for every command
    from service.ruleset.loader import RuleSet
    from service.screening.bulk import BulkExportRun, BulkScope
    from service.screening.live import Selection
    from service.screening.pool import WorkerPool
    from service.screening.summary import ScreeningSummary

T = TypeVar("T")
DEMO_SAMPLE = "hospital"

# --- screen -----------------------------------------------------------------------------------


def cmd_screen(args: argparse.Namespace) -> int:
    # The workers of an offline run start first: they load the rule sets while this process
    # starts up and loads them too.
    with _offline_workers(args) as workers:
        return _cmd_screen(args, workers)


def _cmd_screen(args: argparse.Namespace, workers: WorkerPool | None) -> int:
    from service.screening.run import screen_portfolio

    settings = settings_for(args)
    rulesets = [catalog.load_trial(trial, settings) for trial in trial_names(args.trial, settings)]
    as_of = parse_as_of(args.as_of)
    fhir_url = getattr(args, "fhir_url", None)  # `demo` screens files and has no such option
    if getattr(args, "bulk", False):
        return _screen_bulk(args, settings, rulesets, as_of, Path(args.out))
    if fhir_url or (args.source is None and settings.fhir_url):
        if len(rulesets) == 1:
            return _screen_live(args, settings, rulesets[0], as_of, Path(args.out))
        # A live portfolio: each trial in turn, into OUT/<trial>/.
        return max(
            _screen_live(args, settings, ruleset, as_of, Path(args.out) / ruleset.id)
            for ruleset in rulesets
        )
    if args.source is None:
        raise PrescreenError("give --source DIR (NDJSON) or --fhir-url URL (a FHIR server)")
    if getattr(args, "executor", "local") == "spark":
        return _screen_spark(args, settings, rulesets, as_of)
    with RichProgress(enabled=not args.no_progress) as progress:
        portfolio = screen_portfolio(
            rulesets,
            Path(args.source),
            as_of,
            Path(args.out),
            engine=settings.cel_engine,
            subject_identifier_system=settings.subject_identifier_system,
            progress=progress,
            workers=workers if workers is not None else 1,
        )
    for summary in portfolio.summaries:
        _print_summary(summary)
    if portfolio.overview:
        _print_overlap(portfolio.overview, Path(args.out))
    return portfolio.exit_code


def _offline_workers(args: argparse.Namespace) -> AbstractContextManager[WorkerPool | None]:
    """Worker processes for an offline run (``--source``) on more than one, started now."""
    from contextlib import nullcontext

    from service.screening.pool import WorkerPool, auto_workers, source_bytes

    if args.source is None or getattr(args, "bulk", False) or getattr(args, "fhir_url", None):
        return nullcontext()
    if getattr(args, "executor", "local") == "spark":
        return nullcontext()  # Spark's executors do the work
    if args.workers is not None and args.workers < 1:
        raise PrescreenError("--workers must be 1 or more")
    count = auto_workers(source_bytes(Path(args.source))) if args.workers is None else args.workers
    if count == 1:
        return nullcontext()  # the run itself decides whether one process spills (run.py)
    settings = settings_for(args)
    rules = [
        (catalog.rule_file(trial, settings), settings.mappings_dir)
        for trial in trial_names(args.trial, settings)
    ]
    return WorkerPool(count, rules, settings.cel_engine, parse_as_of(args.as_of))


def _screen_spark(
    args: argparse.Namespace, settings: Settings, rulesets: list[RuleSet], as_of: date
) -> int:
    """``--executor spark``: the same files, computed on a Spark cluster (or local[*])."""
    from service.spark.driver import screen_portfolio_spark

    with RichProgress(enabled=not args.no_progress) as progress:
        portfolio = screen_portfolio_spark(
            rulesets,
            args.source,  # a folder, or any Hadoop URI (hdfs://, s3a://...): not a Path
            as_of,
            Path(args.out),
            engine=settings.cel_engine,
            subject_identifier_system=settings.subject_identifier_system,
            master=args.spark_master,
            progress=progress,
        )
    for summary in portfolio.summaries:
        _print_summary(summary)
    if portfolio.overview:
        _print_overlap(portfolio.overview, Path(args.out))
    return portfolio.exit_code


def _workers_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--workers",
        type=int,
        help="processes screening an NDJSON folder (default: one per core; one for a folder "
        "under 256 MB); the output files are the same for any number",
    )


def _print_overlap(overview: dict[str, object], out: Path) -> None:
    table = Table(title=f"Patients across trials, as of {overview['as_of']}")
    trials = list(overview["trials"])  # type: ignore[call-overload]
    for trial in trials:
        table.add_column(trial)
    table.add_column("patients", justify="right")
    for row in overview["combinations"]:  # type: ignore[attr-defined]
        table.add_row(*(row["verdicts"].get(t, "-") for t in trials), str(row["patients"]))
    stdout.print(table)
    stdout.print(
        f"{overview['candidates_for_several_trials']} patient(s) are candidates for more than one "
        f"trial; {overview['flagged_for_several_trials']} are candidates or potential candidates "
        f"for more than one. Wrote {out}/<trial>/ for each trial, {out}/summary.json and "
        f"{out}/patients.ndjson."
    )


def _selection(args: argparse.Namespace) -> Selection:
    from service.screening.live import Selection

    ids: list[str] = []
    if args.patients:
        ids += [p.strip() for p in args.patients.split(",") if p.strip()]
    if args.patients_file:
        lines = Path(args.patients_file).read_text(encoding="utf-8").splitlines()
        ids += [line.strip() for line in lines if line.strip()]
    if ids and args.since:
        raise PrescreenError("give patient ids or --since, not both")
    if ids:
        return Selection("ids", ids=tuple(ids))
    if args.since:
        return Selection("since", since=args.since)
    return Selection("cohort")


def _screen_live(
    args: argparse.Namespace, settings: Settings, ruleset: RuleSet, as_of: date, out: Path
) -> int:
    import asyncio

    from service.screening.live import live_options, screen_url

    options = live_options(
        settings,
        as_of=as_of,
        out=out,
        selection=_selection(args),
        write_back=args.write_back,
        dry_run=args.dry_run,
        resume=args.resume,
    )
    # A dry run's stdout is the transaction Bundles alone, one JSON per line (NDJSON), so it
    # can be piped; the tables and messages go to stderr.
    report = console if args.dry_run else stdout
    with RichProgress(enabled=not args.no_progress) as progress:
        summary = asyncio.run(
            screen_url(
                settings,
                args.fhir_url,
                ruleset,
                options,
                progress=progress,
                echo=lambda bundle: print(orjson.dumps(bundle).decode(), flush=True),
            )
        )
    _print_summary(summary, report)
    live = summary.extra_json()["live"]
    for warning in live["capability_warnings"]:
        report.print(f"[yellow]CapabilityStatement:[/] {escape(warning)}")
    report.print(
        f"Selected {live['selected']} patients ({live['resumed_from_checkpoint']} already done); "
        f"{live['requests']} HTTP requests, {live['requests_per_screened_patient']} per screened "
        f"patient, {live['retries']} retries."
    )
    if "write_back" in live:
        report.print(f"Write-back{' (dry run)' if args.dry_run else ''}: {live['write_back']}")
    if summary.unscreened:
        report.print(
            f"[red]{len(summary.unscreened)} patient(s) not screened[/]; listed in "
            f"{summary.out / 'unscreened.ndjson'}. Run again with --resume to finish."
        )
    return summary.exit_code


# --- Bulk Data export -------------------------------------------------------------------------


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


def _screen_bulk(
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
        _print_summary(summary)
    if run.portfolio.overview:
        _print_overlap(run.portfolio.overview, out)
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
    return EXIT_PARTIAL if any(entry.is_error for entry in run.report.errors) else EXIT_OK


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


def cmd_demo(args: argparse.Namespace) -> int:
    manifest_path = settings_for(args).samples_dir / DEMO_SAMPLE / "sample.json"
    manifest = orjson.loads(manifest_path.read_bytes())
    args.trial = ",".join(manifest.get("trials") or [manifest["trial"]])
    args.source = str(manifest_path.parent)
    args.as_of = manifest["as_of"]
    console.print(
        f"Screening the shipped sample hospital ({manifest['patients']} synthetic patients) "
        f"for [bold]{args.trial.replace(',', ', ')}[/] as of {args.as_of}"
    )
    code = cmd_screen(args)
    console.print(
        "\n[bold]Web worklist[/] on this sample: run [bold]make demo-ui[/] in the prescreen "
        "checkout. It starts a local FHIR server holding the sample, screens it, and serves "
        "http://127.0.0.1:8000/ui/ (sign in as [bold]demo[/], password [bold]demo-password[/]; "
        "Ctrl-C stops it)."
    )
    return code


def _print_summary(summary: ScreeningSummary, out: Console = stdout) -> None:
    table = Table(title=f"{summary.trial} pre-screening, as of {summary.as_of.isoformat()}")
    table.add_column("verdict")
    table.add_column("patients", justify="right")
    for verdict in ("candidate", "potential-candidate", "ineligible"):
        table.add_row(verdict, str(summary.verdicts.get(verdict, 0)))
    table.add_row("[bold]total", f"[bold]{summary.patients}")
    out.print(table)

    criteria = Table(title="Most common reasons")
    criteria.add_column("criterion")
    criteria.add_column("unknown in potential candidates", justify="right")
    criteria.add_column("excluding patients", justify="right")
    names = [n for n, _ in summary.unknown.most_common()] + [
        n for n, _ in summary.blocking.most_common() if n not in summary.unknown
    ]
    for name in names[:10]:
        criteria.add_row(
            name, str(summary.unknown.get(name, 0)), str(summary.blocking.get(name, 0))
        )
    out.print(criteria)

    stats = summary.stats
    if stats.files:
        out.print(
            f"Read {stats.lines} lines in {stats.files} files: {stats.parsed} parsed, "
            f"{stats.skipped_type} of unneeded types and {stats.skipped_prefilter} without a "
            f"relevant code skipped unparsed; {summary.read_seconds:.2f}s reading, "
            f"{summary.evaluate_seconds:.2f}s screening ({summary.engine})."
        )
    if summary.rule_errors:
        out.print(f"[red]Rule errors:[/] {dict(summary.rule_errors)}")
    if summary.issues.total:
        out.print(
            f"[yellow]{summary.issues.total} input problem(s)[/] {dict(summary.issues.counts)}; "
            f"each with file and line in {summary.out / 'issues.ndjson'}. First ones:"
        )
        for issue in summary.issues.first[:10]:
            out.print(escape(f"  {issue.file}:{issue.line}: {issue.kind}: {issue.message}"))
    out.print(f"Wrote {summary.out}/verdicts.ndjson, ResearchStudy.ndjson, ResearchSubject.ndjson")


# --- rules ------------------------------------------------------------------------------------


def cmd_rules_check(args: argparse.Namespace) -> int:
    settings = settings_for(args)
    failed = False
    for trial in listed_trials(args, settings):
        try:
            ruleset = catalog.load_trial(trial, settings, every_engine=True)
        except RuleSetError as exc:
            failed = True
            for problem in exc.problems:
                stdout.print(f"[red]✗[/] {escape(problem)}")
            continue
        stdout.print(
            f"[green]✓[/] {trial} {ruleset.version}: {len(ruleset.criteria)} criteria, "
            f"{len(ruleset.derived)} derived values, mapping {ruleset.mapper.id} "
            f"{ruleset.mapper.version} ({len(ruleset.mapper.valuesets)} value sets); "
            f"compiled on {', '.join(ENGINE_NAMES)}"
        )
    return EXIT_UNUSABLE if failed else EXIT_OK


def cmd_rules_test(args: argparse.Namespace) -> int:
    from service.screening.ruletests import run_rule_tests

    settings = settings_for(args)
    engines: tuple[EngineName, ...] = tuple(args.engines) if args.engines else ENGINE_NAMES
    ok = True
    for trial in listed_trials(args, settings):
        ruleset = catalog.load_trial(trial, settings, every_engine=True)
        report = run_rule_tests(ruleset, catalog.test_file(trial, settings), engines)
        for failure in report.failures:
            stdout.print(f"[red]FAIL[/] {trial}/{failure.test_id}: {escape(failure.message)}")
        for failure in report.disagreements:
            stdout.print(
                f"[red]ENGINES DISAGREE[/] {trial}/{failure.test_id}: {escape(failure.message)}"
            )
        for missing in report.uncovered:
            stdout.print(f"[yellow]NOT COVERED[/] {trial}: {missing}")
        status = "[green]passed[/]" if report.ok else "[red]failed[/]"
        stdout.print(
            f"{trial}: {report.tests} tests on {', '.join(report.engines)}: {status}; "
            f"{len(report.failures)} failures, {len(report.disagreements)} disagreements, "
            f"{len(report.uncovered)} uncovered results"
        )
        ok = ok and report.ok
    return EXIT_OK if ok else EXIT_PARTIAL


# --- parser -----------------------------------------------------------------------------------


def _export_arguments(group: argparse._ActionsContainer) -> None:
    group.add_argument("--group", help="export the members of this Group (Group/ID/$export)")
    group.add_argument(
        "--export-level",
        choices=("patient", "system"),
        default="patient",
        help="without --group: Patient/$export (default) or the system-level $export",
    )
    group.add_argument(
        "--keep-export", action="store_true", help="do not delete the export job on the server"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="prescreen", description="FHIR clinical-trial eligibility pre-screening."
    )
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--rules-dir", type=Path, help="rule sets folder (PRESCREEN_RULES_DIR)")
    common.add_argument(
        "--mappings-dir", type=Path, help="mappings folder (PRESCREEN_MAPPINGS_DIR)"
    )
    common.add_argument(
        "--engine", choices=ENGINE_NAMES, help="CEL engine (PRESCREEN_CEL_ENGINE, default cel)"
    )
    sub = parser.add_subparsers(dest="command", required=True)

    screen = sub.add_parser("screen", parents=[common], help="screen a Bulk-Data NDJSON folder")
    screen.add_argument(
        "--trial",
        required=True,
        help="rule set (relieve), several (relieve,ssrs: one reading, OUT/<trial>/ each), or all",
    )
    screen.add_argument("--source", help="folder of <ResourceType>.ndjson files (offline)")
    screen.add_argument("--fhir-url", help="FHIR R4 base URL to screen live (PRESCREEN_FHIR_URL)")
    screen.add_argument("--as-of", help="reference date YYYY-MM-DD (default: today, UTC)")
    screen.add_argument("--out", required=True, help="output folder")
    screen.add_argument("--no-progress", action="store_true", help="no progress bars")
    _workers_argument(screen)
    screen.add_argument(
        "--executor",
        choices=("local", "spark"),
        default="local",
        help="where an offline run computes: this machine (local), or Apache Spark (needs "
        "prescreen[spark]; --source may then be any Hadoop URI: hdfs://, s3a://...)",
    )
    screen.add_argument(
        "--spark-master",
        help="Spark master URL (spark://host:7077, local[4]...; default: as spark-submit "
        "configured it, else local[*])",
    )
    live = screen.add_argument_group("live runs (--fhir-url)")
    live.add_argument("--patients", help="comma-separated patient ids (default: the cohort)")
    live.add_argument("--patients-file", help="file with one patient id per line")
    live.add_argument("--since", help="patients with resources updated after this instant")
    live.add_argument("--write-back", action="store_true", help="write ResearchSubjects back")
    live.add_argument(
        "--dry-run", action="store_true", help="print the write-back transactions, send nothing"
    )
    live.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.ndjson")
    bulk = screen.add_argument_group(
        "Bulk Data export (--fhir-url with --bulk; --since adds the changes to OUT/bulk)"
    )
    bulk.add_argument(
        "--bulk", action="store_true", help="$export into OUT/bulk, then screen it as --source"
    )
    _export_arguments(bulk)
    screen.set_defaults(func=cmd_screen)

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

    fhir_cli.register_load(sub, common)

    demo = sub.add_parser(
        "demo", parents=[common], help="screen the sample hospital shipped in the repository"
    )
    demo.add_argument("--out", default="out/demo", help="output folder (default out/demo)")
    demo.add_argument("--no-progress", action="store_true", help="no progress bars")
    _workers_argument(demo)
    demo.set_defaults(func=cmd_demo)

    rules = sub.add_parser("rules", help="validate and test rule sets")
    rules_sub = rules.add_subparsers(dest="rules_command", required=True)
    check = rules_sub.add_parser("check", parents=[common], help="validate rule sets")
    check.add_argument("--trial", action="append", help="rule set (repeatable; default all)")
    check.set_defaults(func=cmd_rules_check)
    test = rules_sub.add_parser("test", parents=[common], help="run rule tests on the engines")
    test.add_argument("--trial", action="append", help="rule set (repeatable; default all)")
    test.add_argument(
        "--engines", nargs="+", choices=ENGINE_NAMES, help="engines to run (default: all)"
    )
    test.set_defaults(func=cmd_rules_test)

    web_cli.register_serve(sub, common)
    ui_cli.register_users(sub, common)
    fhir_cli.register_subscriptions(sub, common)
    synth_cli.register_synth(sub, common)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code: int = args.func(args)
    except RuleSetError as exc:
        for problem in exc.problems:
            console.print(f"[red]error:[/] {escape(problem)}", highlight=False)
        return EXIT_UNUSABLE
    except PrescreenError as exc:
        console.print(f"[red]error:[/] {escape(str(exc))}", highlight=False)
        return EXIT_UNUSABLE
    except Exception as exc:
        # No traceback and no message text by default: either could quote patient data.
        console.print(
            f"[red]internal error:[/] {type(exc).__name__}; the run stopped and its output files "
            "were not written (set PRESCREEN_DEBUG=1 for a traceback)",
            highlight=False,
        )
        if os.environ.get("PRESCREEN_DEBUG"):
            console.print_exception()
        return EXIT_INTERNAL
    return code


if __name__ == "__main__":
    sys.exit(main())
