"""``prescreen rules check`` and ``prescreen rules test``: validate the rule sets, and run their
tests (``<trial>.tests.yaml``) on the CEL engines. Beside the screening package because the rule
tests screen their records as a run does (``ruletests.py``)."""

from __future__ import annotations

import argparse

from rich.markup import escape

from service import catalog
from service.console import (
    EXIT_OK,
    EXIT_PARTIAL,
    EXIT_UNUSABLE,
    listed_trials,
    settings_for,
    stdout,
)
from service.errors import ConfigError, RuleSetError
from service.ruleset.engines import ENGINE_NAMES, EngineName


def register_rules(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
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


def cmd_rules_check(args: argparse.Namespace) -> int:
    settings = settings_for(args)
    failed = False
    for trial in listed_trials(args, settings):
        try:
            ruleset = catalog.load_trial(trial, settings, every_engine=True)
        except ConfigError as exc:  # every trial is checked, whatever one of them holds
            failed = True
            problems = exc.problems if isinstance(exc, RuleSetError) else [str(exc)]
            for problem in problems:
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
            stdout.print(f"[yellow]NOT COVERED[/] {trial}: {missing} (no test expects it)")
        if report.unconfirmed:
            stdout.print(
                f"[yellow]NOT YET COVERED[/] {trial}: {len(report.unconfirmed)} results are "
                "expected only by tests that fail; they count once those tests pass"
            )
        status = "[green]passed[/]" if report.ok else "[red]failed[/]"
        stdout.print(
            f"{trial}: {report.tests} tests on {', '.join(report.engines)}: {status}; "
            f"{len(report.failures)} failures, {len(report.disagreements)} disagreements, "
            f"{len(report.uncovered)} uncovered results"
        )
        ok = ok and report.ok
    return EXIT_OK if ok else EXIT_PARTIAL
