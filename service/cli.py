"""The ``prescreen`` command line.

Exit codes: 0 success; 1 finished, but some input lines or rule evaluations were unusable, or a
rule test failed; 2 the job could not start (unknown trial, missing folder, invalid rule file).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, date, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import orjson
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from service import catalog
from service.errors import PrescreenError, RuleSetError
from service.ruleset.engines import ENGINE_NAMES, EngineName
from service.settings import Settings, get_settings

if TYPE_CHECKING:  # imported lazily at run time: start-up stays fast for every command
    from service.ruleset.loader import RuleSet
    from service.screening.live import Selection
    from service.screening.run import ScreeningSummary

# 0 done; 1 done, but some input was unusable or doubtful; 2 could not start; 3 stopped by an
# internal error (outputs of an earlier run are left as they were).
EXIT_OK, EXIT_PARTIAL, EXIT_UNUSABLE, EXIT_INTERNAL = 0, 1, 2, 3
DEMO_SAMPLE = "hospital"

console = Console(stderr=True, soft_wrap=True)
stdout = Console(soft_wrap=True)


class RichProgress:
    """Progress bars on stderr; the ProgressSink the screening run reports to."""

    def __init__(self, enabled: bool) -> None:
        self._progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            TaskProgressColumn(),
            TextColumn("{task.fields[amount]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=console,
            disable=not enabled,
            transient=False,
        )

    def __enter__(self) -> RichProgress:
        self._progress.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._progress.stop()

    def task(self, description: str, total: int, unit: str = "") -> Callable[[int], None]:
        def amount(done: int) -> str:
            if unit == "bytes":
                return f"{done / 1e6:.1f}/{total / 1e6:.1f} MB"
            return f"{done}/{total}"

        task_id = self._progress.add_task(description, total=total, amount=amount(0))
        return lambda done: self._progress.update(task_id, completed=done, amount=amount(done))


def _settings(args: argparse.Namespace) -> Settings:
    overrides = {
        key: value
        for key, value in (
            ("rules_dir", getattr(args, "rules_dir", None)),
            ("mappings_dir", getattr(args, "mappings_dir", None)),
            ("cel_engine", getattr(args, "engine", None)),
        )
        if value is not None
    }
    return get_settings().model_copy(update=overrides)


def _as_of(text: str | None) -> date:
    if text is None:
        return datetime.now(UTC).date()
    try:
        return date.fromisoformat(text)
    except ValueError as exc:
        raise PrescreenError(f"--as-of must be a date as YYYY-MM-DD, not '{text}'") from exc


# --- screen -----------------------------------------------------------------------------------


def cmd_screen(args: argparse.Namespace) -> int:
    from service.screening.run import screen_portfolio

    settings = _settings(args)
    rulesets = [catalog.load_trial(trial, settings) for trial in _trial_names(args.trial, settings)]
    as_of = _as_of(args.as_of)
    fhir_url = getattr(args, "fhir_url", None)  # `demo` screens files and has no such option
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
    with RichProgress(enabled=not args.no_progress) as progress:
        portfolio = screen_portfolio(
            rulesets,
            Path(args.source),
            as_of,
            Path(args.out),
            engine=settings.cel_engine,
            subject_identifier_system=settings.subject_identifier_system,
            progress=progress,
        )
    for summary in portfolio.summaries:
        _print_summary(summary)
    if portfolio.overview:
        _print_overlap(portfolio.overview, Path(args.out))
    return portfolio.exit_code


def _trial_names(text: str, settings: Settings) -> list[str]:
    """``relieve``, ``relieve,ssrs`` or ``all`` (every rule set in the rules folder)."""
    if text.strip() == "all":
        names = catalog.available_trials(settings.rules_dir)
    else:
        names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise PrescreenError(f"no trial named in --trial '{text}'")
    return list(dict.fromkeys(names))


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
    _print_summary(summary)
    live = summary.extra_json()["live"]
    for warning in live["capability_warnings"]:
        stdout.print(f"[yellow]CapabilityStatement:[/] {escape(warning)}")
    stdout.print(
        f"Selected {live['selected']} patients ({live['resumed_from_checkpoint']} already done); "
        f"{live['requests']} HTTP requests, {live['requests_per_screened_patient']} per screened "
        f"patient, {live['retries']} retries."
    )
    if "write_back" in live:
        stdout.print(f"Write-back{' (dry run)' if args.dry_run else ''}: {live['write_back']}")
    if summary.unscreened:
        stdout.print(
            f"[red]{len(summary.unscreened)} patient(s) not screened[/]; listed in "
            f"{summary.out / 'unscreened.ndjson'}. Run again with --resume to finish."
        )
    return summary.exit_code


def cmd_load(args: argparse.Namespace) -> int:
    import asyncio

    from service.fhir.connect import connect
    from service.fhir.loader import load_resources, read_folder

    settings = _settings(args)
    resources = list(read_folder(Path(args.source)))

    async def run() -> int:
        client = await connect(settings, args.fhir_url)
        async with client:
            with RichProgress(enabled=not args.no_progress) as progress:
                advance = progress.task("Loading resources", len(resources))
                return await load_resources(
                    client, resources, per_bundle=args.per_bundle, progress=advance
                )

    written = asyncio.run(run())
    stdout.print(f"Loaded {written} resources into {args.fhir_url or settings.fhir_url}")
    return EXIT_OK


def cmd_demo(args: argparse.Namespace) -> int:
    manifest_path = _settings(args).samples_dir / DEMO_SAMPLE / "sample.json"
    manifest = orjson.loads(manifest_path.read_bytes())
    args.trial = ",".join(manifest.get("trials") or [manifest["trial"]])
    args.source = str(manifest_path.parent)
    args.as_of = manifest["as_of"]
    console.print(
        f"Screening the shipped sample hospital ({manifest['patients']} synthetic patients) "
        f"for [bold]{args.trial.replace(',', ', ')}[/] as of {args.as_of}"
    )
    return cmd_screen(args)


def _print_summary(summary: ScreeningSummary) -> None:
    table = Table(title=f"{summary.trial} pre-screening, as of {summary.as_of.isoformat()}")
    table.add_column("verdict")
    table.add_column("patients", justify="right")
    for verdict in ("candidate", "potential-candidate", "ineligible"):
        table.add_row(verdict, str(summary.verdicts.get(verdict, 0)))
    table.add_row("[bold]total", f"[bold]{summary.patients}")
    stdout.print(table)

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
    stdout.print(criteria)

    stats = summary.stats
    if stats.files:
        stdout.print(
            f"Read {stats.lines} lines in {stats.files} files: {stats.parsed} parsed, "
            f"{stats.skipped_type} of unneeded types and {stats.skipped_prefilter} without a "
            f"relevant code skipped unparsed; {summary.read_seconds:.2f}s reading, "
            f"{summary.evaluate_seconds:.2f}s screening ({summary.engine})."
        )
    if summary.rule_errors:
        stdout.print(f"[red]Rule errors:[/] {dict(summary.rule_errors)}")
    if summary.issues.total:
        stdout.print(
            f"[yellow]{summary.issues.total} input problem(s)[/] {dict(summary.issues.counts)}; "
            f"each with file and line in {summary.out / 'issues.ndjson'}. First ones:"
        )
        for issue in summary.issues.first[:10]:
            stdout.print(escape(f"  {issue.file}:{issue.line}: {issue.kind}: {issue.message}"))
    stdout.print(
        f"Wrote {summary.out}/verdicts.ndjson, ResearchStudy.ndjson, ResearchSubject.ndjson"
    )


# --- rules ------------------------------------------------------------------------------------


def _trials(args: argparse.Namespace, settings: Settings) -> list[str]:
    trials = args.trial or catalog.available_trials(settings.rules_dir)
    if not trials:
        raise PrescreenError(f"no rule sets in {settings.rules_dir}")
    return list(trials)


def cmd_rules_check(args: argparse.Namespace) -> int:
    settings = _settings(args)
    failed = False
    for trial in _trials(args, settings):
        try:
            ruleset = catalog.load_trial(trial, settings)
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

    settings = _settings(args)
    engines: tuple[EngineName, ...] = tuple(args.engines) if args.engines else ENGINE_NAMES
    ok = True
    for trial in _trials(args, settings):
        ruleset = catalog.load_trial(trial, settings)
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


# --- synth ------------------------------------------------------------------------------------


def cmd_synth(args: argparse.Namespace) -> int:
    from service.synth import write_population

    as_of = _as_of(args.as_of)
    counts = write_population(
        Path(args.out),
        args.patients,
        args.seed,
        as_of,
        spinal_fraction=args.spinal_fraction,
        median_background=args.median_background,
    )
    stdout.print(
        f"Wrote {args.patients} patients ({sum(counts.values())} resources) to {args.out}: "
        + ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
    )
    return EXIT_OK


# --- service ----------------------------------------------------------------------------------


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    settings = _settings(args)
    from service.api.app import create_app

    uvicorn.run(
        create_app(settings),
        host=args.host or settings.host,
        port=args.port or settings.port,
        log_level=settings.log_level.lower(),
        access_log=False,  # request lines carry patient ids in paths and queries
    )
    return EXIT_OK


def cmd_subscriptions_install(args: argparse.Namespace) -> int:
    import asyncio

    from service.fhir.connect import connect
    from service.fhir.subscriptions import install, subscription_resources

    settings = _settings(args)
    endpoint = args.endpoint or f"{(settings.public_url or '').rstrip('/')}/notifications"
    if not endpoint.startswith(("http://", "https://")):
        raise PrescreenError("give --endpoint URL or set PRESCREEN_PUBLIC_URL")
    headers = [f"X-API-Key: {args.api_key}"] if args.api_key else []
    rulesets = [catalog.load_trial(trial, settings) for trial in _trials(args, settings)]
    resources = subscription_resources(rulesets, endpoint, headers, settings.fhir_codes_per_request)

    async def run() -> int:
        client = await connect(settings, args.fhir_url)
        async with client:
            return await install(client, resources)

    stdout.print(f"Installed {asyncio.run(run())} Subscriptions notifying {endpoint}")
    return EXIT_OK


# --- parser -----------------------------------------------------------------------------------


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
    live = screen.add_argument_group("live runs (--fhir-url)")
    live.add_argument("--patients", help="comma-separated patient ids (default: the cohort)")
    live.add_argument("--patients-file", help="file with one patient id per line")
    live.add_argument("--since", help="patients with resources updated after this instant")
    live.add_argument("--write-back", action="store_true", help="write ResearchSubjects back")
    live.add_argument(
        "--dry-run", action="store_true", help="print the write-back transactions, send nothing"
    )
    live.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.ndjson")
    screen.set_defaults(func=cmd_screen)

    load = sub.add_parser(
        "load", parents=[common], help="load an NDJSON folder into a FHIR server (transactions)"
    )
    load.add_argument("--source", required=True, help="folder of <ResourceType>.ndjson files")
    load.add_argument("--fhir-url", help="FHIR R4 base URL (PRESCREEN_FHIR_URL)")
    load.add_argument("--per-bundle", type=int, default=200, help="resources per transaction")
    load.add_argument("--no-progress", action="store_true", help="no progress bars")
    load.set_defaults(func=cmd_load)

    demo = sub.add_parser(
        "demo", parents=[common], help="screen the sample hospital shipped in the repository"
    )
    demo.add_argument("--out", default="out/demo", help="output folder (default out/demo)")
    demo.add_argument("--no-progress", action="store_true", help="no progress bars")
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

    serve = sub.add_parser("serve", parents=[common], help="run the HTTP service")
    serve.add_argument("--host", help="listen address (PRESCREEN_HOST, default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="listen port (PRESCREEN_PORT, default 8000)")
    serve.set_defaults(func=cmd_serve)

    subs = sub.add_parser("subscriptions", help="FHIR Subscriptions for event-driven screening")
    subs_sub = subs.add_subparsers(dest="subscriptions_command", required=True)
    install = subs_sub.add_parser("install", parents=[common], help="create them on the server")
    install.add_argument("--trial", action="append", help="rule set (repeatable; default all)")
    install.add_argument("--fhir-url", help="FHIR R4 base URL (PRESCREEN_FHIR_URL)")
    install.add_argument("--endpoint", help="notification URL (default PUBLIC_URL/notifications)")
    install.add_argument("--api-key", help="API key (scope notify) the server sends back")
    install.set_defaults(func=cmd_subscriptions_install)

    synth = sub.add_parser("synth", help="generate a synthetic hospital as Bulk-Data NDJSON")
    synth.add_argument("--patients", type=int, required=True, help="number of patients")
    synth.add_argument("--seed", type=int, default=1, help="random seed (same seed, same data)")
    synth.add_argument("--as-of", help="the date the data is generated around (default today)")
    synth.add_argument("--out", required=True, help="output folder")
    synth.add_argument(
        "--spinal-fraction", type=float, default=0.02, help="share with spinal metastases"
    )
    synth.add_argument(
        "--median-background",
        type=int,
        default=90,
        help="median routine resources per patient (long-tailed)",
    )
    synth.set_defaults(func=cmd_synth)
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
