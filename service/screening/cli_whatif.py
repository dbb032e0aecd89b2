"""``prescreen whatif``: one trial's verdicts under other parameter values, on one reading."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from rich.markup import escape
from rich.table import Table

from service import catalog
from service.console import RichProgress, console, parse_as_of, settings_for, stdout
from service.errors import PrescreenError

if TYPE_CHECKING:  # imported lazily at run time: start-up stays fast for every command
    from service.ruleset.overrides import Value
    from service.screening.whatif import Varied, WhatIf


def register_whatif(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    whatif = sub.add_parser(
        "whatif",
        parents=[common],
        help="verdict counts of a trial under other parameter values (one reading)",
    )
    whatif.add_argument("--trial", required=True, help="the rule set (one trial)")
    whatif.add_argument("--source", required=True, help="folder of <ResourceType>.ndjson files")
    whatif.add_argument("--as-of", help="reference date YYYY-MM-DD (default: today, UTC)")
    whatif.add_argument(
        "--vary",
        action="append",
        default=[],
        required=True,
        metavar="NAME=V1,V2,...",
        help="a parameter and the values to try (repeatable: every combination is evaluated)",
    )
    whatif.add_argument("--out", required=True, help="folder for whatif.json and whatif.png")
    whatif.add_argument("--no-progress", action="store_true", help="no progress bars")
    whatif.set_defaults(func=cmd_whatif)


def cmd_whatif(args: argparse.Namespace) -> int:
    from service.screening import output
    from service.screening.whatif import WHATIF, parse_vary, what_if

    settings = settings_for(args)
    if "," in args.trial or args.trial.strip() == "all":
        raise PrescreenError("whatif takes one trial (--trial relieve)")
    ruleset = catalog.load_trial(args.trial.strip(), settings)
    varied = parse_vary(ruleset, args.vary)
    as_of = parse_as_of(args.as_of)
    source = Path(args.source)
    if not source.is_dir():
        raise PrescreenError(f"--source {source} is not a folder")
    out = Path(args.out)
    with RichProgress(enabled=not args.no_progress) as progress:
        result = what_if(
            ruleset, varied, source, as_of, engine=settings.cel_engine, progress=progress
        )
    with output.OutputSet(out) as outputs:
        outputs.json(WHATIF, result.as_json())
    print_whatif(result)
    _plot(result, out)
    if result.issues.total:
        console.print(
            f"[yellow]{result.issues.total} input problem(s)[/] {dict(result.issues.counts)} "
            "(prescreen screen lists each with file and line)"
        )
    stdout.print(f"Wrote {out / WHATIF}")
    return result.exit_code


def print_whatif(result: WhatIf) -> None:
    from service.ruleset.overrides import value_text

    own = result.own
    table = Table(
        title=f"{result.ruleset.id}: what if, as of {result.as_of.isoformat()} "
        f"({len(own.verdicts)} patients)"
    )
    for varied in result.varied:
        table.add_column(varied.name, justify="right", min_width=len(varied.name))
    for heading in ("candidate", "potential", "ineligible", "+cand", "-cand", ""):
        table.add_column(heading, justify="right")
    own_candidates = set(own.with_verdict("candidate"))
    for row in result.rows:
        counts = row.counts()
        candidates = set(row.with_verdict("candidate"))
        table.add_row(
            *(value_text(row.values[v.name]) for v in result.varied),
            str(counts["candidate"]),
            str(counts["potential-candidate"]),
            str(counts["ineligible"]),
            str(len(candidates - own_candidates)),
            str(len(own_candidates - candidates)),
            "protocol" if row.own_values else "",
            style="bold" if row.own_values else None,
        )
    stdout.print(table)
    stdout.print(
        "+cand / -cand: candidates gained / lost against the protocol's values (patients "
        "listed in whatif.json, with potential candidates)."
    )


def _plot(result: WhatIf, out: Path) -> None:
    from service.ruleset.overrides import value_text
    from service.screening import plots
    from service.screening.whatif import PLOT, row_label

    if not plots.available():
        console.print(f"No plot: {plots.INSTALL_HINT}.")
        return
    first, others = result.varied[0], result.varied[1:]
    rows = {tuple(row.values[v.name] for v in result.varied): row for row in result.rows}
    series = []
    for rest in _product(others):
        label = row_label(dict(zip((v.name for v in others), rest, strict=True)))
        picked = [rows[(x, *rest)].counts() for x in first.values]
        series.append(
            (
                label,
                [c["candidate"] for c in picked],
                [c["potential-candidate"] for c in picked],
            )
        )
    own = result.own.values[first.name]
    plots.whatif_plot(
        out / PLOT,
        f"{result.ruleset.trial.acronym}: what if, as of {result.as_of.isoformat()}",
        first.name,
        [value_text(x) for x in first.values],
        series,
        first.values.index(own) if own in first.values else None,
    )
    console.print(f"Plot: {escape(str(out / PLOT))}")


def _product(varied: list[Varied]) -> list[tuple[Value, ...]]:
    import itertools

    return list(itertools.product(*(v.values for v in varied)))
