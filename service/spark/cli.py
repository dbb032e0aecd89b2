"""``prescreen screen --executor spark``: its options, and the run on a Spark cluster (or
local[*]). The screening package owns ``screen`` but must not import this one, so the top-level
command line hands :data:`SPARK` to it."""

from __future__ import annotations

import argparse
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING

from service.console import RichProgress
from service.screening.cli import Executor
from service.screening.cli_tables import print_overlap, print_summary
from service.settings import Settings

if TYPE_CHECKING:  # imported lazily at run time: start-up stays fast for every command
    from service.ruleset.loader import RuleSet


def add_arguments(screen: argparse.ArgumentParser) -> None:
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


def screen_on_spark(
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
            max_line=settings.max_line_bytes,
        )
    for summary in portfolio.summaries:
        print_summary(summary)
    if portfolio.overview:
        print_overlap(portfolio.overview, Path(args.out))
    return portfolio.exit_code


SPARK = Executor(add_arguments=add_arguments, screen=screen_on_spark)
