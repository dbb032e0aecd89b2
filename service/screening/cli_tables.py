"""The tables a screening command prints: each trial's summary and, for several trials, how
their patients overlap. Used by every way ``prescreen screen`` runs (one process, workers, a live
server, a Bulk export, Spark)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from service.console import stdout

if TYPE_CHECKING:  # the summary's module loads the rule engine: only when a run needs it
    from service.screening.summary import ScreeningSummary


def print_summary(summary: ScreeningSummary, out: Console = stdout) -> None:
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


def print_overlap(overview: dict[str, object], out: Path) -> None:
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
