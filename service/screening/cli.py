"""``prescreen screen`` and ``prescreen demo``.

``screen`` reads an NDJSON folder here (this module), a FHIR server's REST API (``cli_live``) or
a Bulk Data export (``cli_bulk``); another executor (Spark) is handed in by the package that
holds it, since this package must not import the ones above it.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import date
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import orjson

from service import catalog
from service.console import RichProgress, console, parse_as_of, settings_for, trial_names
from service.errors import PrescreenError
from service.screening.cli_bulk import add_bulk_arguments, screen_bulk_export
from service.screening.cli_live import add_live_arguments, screen_live_portfolio
from service.screening.cli_tables import print_overlap, print_summary
from service.settings import Settings

if TYPE_CHECKING:  # imported lazily at run time: start-up stays fast for every command
    from service.ruleset.loader import RuleSet
    from service.screening.pool import WorkerPool

DEMO_SAMPLE = "hospital"


@dataclass(frozen=True)
class Executor:
    """Somewhere other than this machine that an offline run (--source) can compute, chosen by
    ``--executor``. The package that holds it (service.spark, above this one) builds it and the
    top-level command line hands it to :func:`register_screen`."""

    add_arguments: Callable[[argparse.ArgumentParser], None]
    """Adds --executor and the executor's own options, after --workers."""
    screen: Callable[[argparse.Namespace, Settings, list[RuleSet], date], int]
    """Screens --source there; called once the rule sets are loaded and --as-of is parsed."""


def workers_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--workers",
        type=int,
        help="processes screening an NDJSON folder (default: one per core; one for a folder "
        "under 256 MB); the output files are the same for any number",
    )


def set_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a rule parameter for this run only (TRIAL.NAME=VALUE in a portfolio; repeatable); "
        "recorded in the outputs; not with --write-back",
    )


def register_screen(
    sub: argparse._SubParsersAction[argparse.ArgumentParser],
    common: argparse.ArgumentParser,
    executor: Executor | None = None,
) -> None:
    screen = sub.add_parser("screen", parents=[common], help="screen a Bulk-Data NDJSON folder")
    screen.add_argument(
        "--trial",
        required=True,
        help="rule set (relieve), several (relieve,ssrs: one reading, OUT/<trial>/ each), or all",
    )
    screen.add_argument("--source", help="folder of <ResourceType>.ndjson files (offline)")
    screen.add_argument("--fhir-url", help="FHIR R4 base URL to screen live (PRESCREEN_FHIR_URL)")
    screen.add_argument("--as-of", help="reference date YYYY-MM-DD (default: today, UTC)")
    set_argument(screen)
    screen.add_argument("--out", required=True, help="output folder")
    screen.add_argument("--no-progress", action="store_true", help="no progress bars")
    workers_argument(screen)
    if executor is not None:
        executor.add_arguments(screen)
    add_live_arguments(screen)
    add_bulk_arguments(screen)
    screen.set_defaults(func=partial(cmd_screen, executor=executor))


def register_demo(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    demo = sub.add_parser(
        "demo", parents=[common], help="screen the sample hospital shipped in the repository"
    )
    demo.add_argument("--out", default="out/demo", help="output folder (default out/demo)")
    demo.add_argument("--no-progress", action="store_true", help="no progress bars")
    workers_argument(demo)
    demo.set_defaults(func=cmd_demo)


def cmd_screen(args: argparse.Namespace, executor: Executor | None = None) -> int:
    # The workers of an offline run start first: they load the rule sets while this process
    # starts up and loads them too.
    with _offline_workers(args) as workers:
        return _cmd_screen(args, workers, executor)


def _cmd_screen(
    args: argparse.Namespace, workers: WorkerPool | None, executor: Executor | None
) -> int:
    from service.ruleset.overrides import apply_settings
    from service.screening.run import screen_portfolio

    settings = settings_for(args)
    parameters = getattr(args, "set", [])  # `demo` screens with the rule files' values
    _check_settings_allowed(args, parameters, executor)
    rulesets = [catalog.load_trial(trial, settings) for trial in trial_names(args.trial, settings)]
    rulesets = apply_settings(rulesets, parameters)
    as_of = parse_as_of(args.as_of)
    fhir_url = getattr(args, "fhir_url", None)  # `demo` screens files and has no such option
    if getattr(args, "bulk", False):
        return screen_bulk_export(args, settings, rulesets, as_of, Path(args.out))
    if fhir_url or (args.source is None and settings.fhir_url):
        # One reading of the server for every trial (several: OUT/<trial>/ each).
        return screen_live_portfolio(args, settings, rulesets, as_of, Path(args.out))
    if args.source is None:
        raise PrescreenError("give --source DIR (NDJSON) or --fhir-url URL (a FHIR server)")
    if executor is not None and _elsewhere(args):
        return executor.screen(args, settings, rulesets, as_of)
    with RichProgress(enabled=not args.no_progress) as progress:
        portfolio = screen_portfolio(
            rulesets,
            Path(args.source),
            as_of,
            Path(args.out),
            engine=settings.cel_engine,
            subject_identifier_system=settings.subject_identifier_system,
            progress=progress,
            workers=workers if workers is not None else _worker_count(args),
            max_line=settings.max_line_bytes,
        )
    for summary in portfolio.summaries:
        print_summary(summary)
    if portfolio.overview:
        print_overlap(portfolio.overview, Path(args.out))
    return portfolio.exit_code


def _check_settings_allowed(
    args: argparse.Namespace, parameters: list[str], executor: Executor | None
) -> None:
    """``--set`` changes the protocol: its verdicts are never written to the EHR."""
    if not parameters:
        return
    from service.ruleset.overrides import split_assignment

    names = ", ".join(
        f"{trial}.{name}" if trial else name
        for trial, name, _ in (split_assignment(text, "--set") for text in parameters)
    )
    if getattr(args, "write_back", False):
        raise PrescreenError(
            f"--set {names}: verdicts under parameters other than the protocol's are never "
            "written to the EHR, so --set cannot be used with --write-back (--dry-run shows "
            "what would be written)"
        )
    if executor is not None and _elsewhere(args):
        raise PrescreenError(
            f"--set {names}: not available with --executor {args.executor}; screen on this "
            "machine (--workers N) instead"
        )


def _elsewhere(args: argparse.Namespace) -> bool:
    """--executor names another executor than this machine (`demo` has no such option)."""
    return getattr(args, "executor", "local") != "local"


def _offline_workers(args: argparse.Namespace) -> AbstractContextManager[WorkerPool | None]:
    """Worker processes for an offline run (``--source``) on more than one, started now."""
    from contextlib import nullcontext

    from service.screening.pool import WorkerPool

    if args.source is None or getattr(args, "bulk", False) or getattr(args, "fhir_url", None):
        return nullcontext()
    if _elsewhere(args):
        return nullcontext()  # the other executor (Spark) does the work
    count = _worker_count(args)
    if count == 1:
        return nullcontext()  # the run itself decides whether one process spills (run.py)
    if getattr(args, "set", None):
        # Parameters set for the run are checked against the loaded rule sets first; the
        # workers start after that (parallel.py), with the checked values.
        return nullcontext()
    settings = settings_for(args)
    rules = [
        (catalog.rule_file(trial, settings), settings.mappings_dir)
        for trial in trial_names(args.trial, settings)
    ]
    return WorkerPool(
        count, rules, settings.cel_engine, parse_as_of(args.as_of), max_line=settings.max_line_bytes
    )


def _worker_count(args: argparse.Namespace) -> int:
    """--workers, or the default for the size of --source."""
    from service.screening.pool import auto_workers, source_bytes

    if args.workers is not None and args.workers < 1:
        raise PrescreenError("--workers must be 1 or more")
    if args.workers is not None:
        return int(args.workers)
    return auto_workers(source_bytes(Path(args.source)))


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
