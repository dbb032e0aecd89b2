"""The ``prescreen`` command line: parses, hands the command to its module, maps errors to exit
codes.

Each command lives beside the package that does its work (``register_*`` adds its options,
``cmd_*`` runs it); what they share on the terminal is in ``service/console.py``:

- screen, demo: ``service/screening/cli.py`` (REST runs in ``cli_live.py``, ``--bulk`` in
  ``cli_bulk.py``; ``--executor spark`` in ``service/spark/cli.py``)
- export: ``service/screening/cli_bulk.py``
- whatif, feasibility: ``service/screening/cli_whatif.py``, ``cli_feasibility.py``
- rules check, rules test: ``service/screening/cli_rules.py``
- trial new: ``service/screening/cli_trial.py``
- load, subscriptions install: ``service/fhir/cli.py``
- users: ``service/ui/cli.py``; serve: ``service/web_cli.py``; synth: ``service/synth_cli.py``

Exit codes: 0 success; 1 finished, but some input lines or rule evaluations were unusable, or a
rule test failed; 2 the job could not start (unknown trial, missing folder, invalid rule file);
3 stopped by an internal error.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from pydantic import ValidationError
from rich.markup import escape

from service import synth_cli, web_cli
from service.console import EXIT_INTERNAL, EXIT_UNUSABLE, console
from service.errors import PrescreenError, RuleSetError
from service.fhir import cli as fhir_cli
from service.ruleset.engines import ENGINE_NAMES
from service.screening import cli as screening_cli
from service.screening import cli_bulk, cli_feasibility, cli_rules, cli_trial, cli_whatif
from service.spark import cli as spark_cli
from service.ui import cli as ui_cli


def _common_options() -> argparse.ArgumentParser:
    """The options of every command that reads rule sets (a parent parser)."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--rules-dir", type=Path, help="rule sets folder (PRESCREEN_RULES_DIR)")
    common.add_argument(
        "--mappings-dir", type=Path, help="mappings folder (PRESCREEN_MAPPINGS_DIR)"
    )
    common.add_argument(
        "--engine", choices=ENGINE_NAMES, help="CEL engine (PRESCREEN_CEL_ENGINE, default cel)"
    )
    return common


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="prescreen", description="FHIR clinical-trial eligibility pre-screening."
    )
    common = _common_options()
    sub = parser.add_subparsers(dest="command", required=True)
    # In the order `prescreen --help` lists them.
    screening_cli.register_screen(sub, common, executor=spark_cli.SPARK)
    cli_bulk.register_export(sub, common)
    fhir_cli.register_load(sub, common)
    screening_cli.register_demo(sub, common)
    cli_whatif.register_whatif(sub, common)
    cli_feasibility.register_feasibility(sub, common)
    cli_rules.register_rules(sub, common)
    cli_trial.register_trial(sub, common)
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
    except ValidationError as exc:
        if exc.title != "Settings":
            raise
        # A setting refused at start: its name and why, never the value (it may be a secret).
        for refused in exc.errors(include_input=False, include_url=False):
            name = "PRESCREEN_" + "_".join(str(part) for part in refused["loc"]).upper()
            message = str(refused["msg"]).removeprefix("Value error, ")
            console.print(f"[red]error:[/] {name}: {escape(message)}", highlight=False)
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
