"""``prescreen trial new NAME``: a new trial that passes ``rules check`` and ``rules test`` as
written, to edit from there (the files: ``scaffold.py``). Beside the screening package
because it proves the new trial with the rule tests (``ruletests.py``)."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.markup import escape

from service import catalog
from service.console import EXIT_OK, EXIT_PARTIAL, settings_for, stdout
from service.fhir.codesystems import write_criteria_files
from service.ruleset.engines import ENGINE_NAMES
from service.screening.scaffold import plan_trial, write_trial


def register_trial(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    trial = sub.add_parser("trial", help="add a trial")
    trial_sub = trial.add_subparsers(dest="trial_command", required=True)
    new = trial_sub.add_parser(
        "new",
        parents=[common],
        help="write a new trial (mapping, value sets, rules, rule tests) to edit from",
    )
    new.add_argument("name", help="the trial's id: lower case, digits, hyphens (e.g. rtog-0631)")
    new.add_argument("--nct", help="its NCT number (default: NCT00000000, to replace)")
    new.add_argument("--acronym", help="its short name (default: NAME in capitals)")
    new.add_argument("--title", help="its official title")
    new.set_defaults(func=cmd_trial_new)


def cmd_trial_new(args: argparse.Namespace) -> int:
    from service.screening.ruletests import run_rule_tests

    settings = settings_for(args)
    planned = plan_trial(
        args.name,
        settings.rules_dir,
        settings.mappings_dir,
        nct_id=args.nct,
        acronym=args.acronym,
        title=args.title,
    )
    for path in write_trial(planned):
        stdout.print(f"wrote {escape(str(path))}")
    ruleset = catalog.load_trial(args.name, settings, every_engine=True)
    criteria_dir = settings.mappings_dir.parent / "terminology" / "criteria"
    for path in write_criteria_files([ruleset], criteria_dir):
        stdout.print(f"wrote {escape(str(path))} (the criterion codes write-back uses)")
    report = run_rule_tests(ruleset, catalog.test_file(args.name, settings))
    stdout.print(
        f"[green]✓[/] rules check: {len(ruleset.criteria)} criteria compiled on "
        f"{', '.join(ENGINE_NAMES)}; rules test: {report.tests} tests "
        + ("[green]passed[/]" if report.ok else "[red]failed[/]")
    )
    rules, tests = catalog.rule_file(args.name, settings), catalog.test_file(args.name, settings)
    mapping = settings.mappings_dir / f"{args.name}.yaml"
    stdout.print(
        "\nNext: write the trial's criteria into "
        f"{escape(_shown(rules))} (its comments say how), the facts they need into "
        f"{escape(_shown(mapping))}, the codes into its value sets, and a test per rule into "
        f"{escape(_shown(tests))}; then\n"
        f"  prescreen rules check --trial {args.name}\n"
        f"  prescreen rules test --trial {args.name}\n"
        f"  prescreen screen --trial {args.name} --source samples/hospital --out out/{args.name}\n"
        'Every key: docs/reference/; the way through: docs/trials.md, "Adding a trial".'
    )
    return EXIT_OK if report.ok else EXIT_PARTIAL


def _shown(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)
