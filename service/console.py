"""What every ``prescreen`` command shares on the terminal: the two consoles, progress bars, exit
codes, and the parsing of options several commands have (--as-of, --trial, the folder and engine
overrides).

Each command lives beside the package that does its work (``service/<package>/cli.py``) and
imports this module; it sits low (settings, catalog, errors, rich) so that any of them may.
Nothing here imports a FHIR model, FastAPI or PySpark: ``prescreen --help`` stays fast.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from datetime import UTC, date, datetime

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

from service import catalog
from service.errors import PrescreenError
from service.settings import Settings, get_settings

# 0 done; 1 done, but some input was unusable or doubtful; 2 could not start; 3 stopped by an
# internal error (outputs of an earlier run are left as they were).
EXIT_OK, EXIT_PARTIAL, EXIT_UNUSABLE, EXIT_INTERNAL = 0, 1, 2, 3

# Messages, errors and progress on stderr; results (tables, summaries) on stdout.
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

    def status(self, description: str) -> Callable[[str], None]:
        """A line without a total whose text changes (a Bulk export's X-Progress)."""
        task_id = self._progress.add_task(description, total=None, amount="")
        return lambda text: self._progress.update(task_id, amount=escape(text))


def settings_for(args: argparse.Namespace) -> Settings:
    """The settings, with --rules-dir, --mappings-dir and --engine applied where the command
    has them and they were given (``users`` and ``synth`` have none of them)."""
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


def parse_as_of(text: str | None) -> date:
    """--as-of: a date as YYYY-MM-DD; today (UTC) when not given."""
    if text is None:
        return datetime.now(UTC).date()
    try:
        return date.fromisoformat(text)
    except ValueError as exc:
        raise PrescreenError(f"--as-of must be a date as YYYY-MM-DD, not '{text}'") from exc


def trial_names(text: str, settings: Settings) -> list[str]:
    """``relieve``, ``relieve,ssrs`` or ``all`` (every rule set in the rules folder)."""
    if text.strip() == "all":
        names = catalog.available_trials(settings.rules_dir)
    else:
        names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise PrescreenError(f"no trial named in --trial '{text}'")
    return list(dict.fromkeys(names))


def listed_trials(args: argparse.Namespace, settings: Settings) -> list[str]:
    """A repeatable --trial; every rule set in the rules folder when none is given."""
    trials = args.trial or catalog.available_trials(settings.rules_dir)
    if not trials:
        raise PrescreenError(f"no rule sets in {settings.rules_dir}")
    return list(trials)
