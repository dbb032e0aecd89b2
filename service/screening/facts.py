"""Reading a source once and keeping every patient's facts, for the commands that evaluate them
many times over (``whatif``: each combination of parameters; ``feasibility``: each month's end).

The reading is the screening's own (``ndjson.NdjsonReader`` and ``source.Collector``), so the
facts are those a screening evaluates, with the same input issues. Unlike a screening, the facts
stay in memory until the command ends: these commands are for one hospital's population, not for
sources larger than memory.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from service.ndjson_files import discover
from service.screening.ndjson import NdjsonReader
from service.screening.source import NOT_SCREENED, Collector, InputIssue, IssueLog, ReadStats
from service.screening.summary import ProgressSink

Facts = dict[str, Any]


def read_source(
    collectors: Sequence[Collector], source: Path, progress: ProgressSink | None = None
) -> tuple[ReadStats, float]:
    """Read the NDJSON folder once into the collectors; the reading's counts and seconds."""
    files = discover(source)
    reader = NdjsonReader(collectors)
    started = time.perf_counter()
    total = sum(f.size for f in files)
    advance = progress.task("Reading NDJSON", total, unit="bytes") if progress else None
    reader.read_files(files, (lambda done, _total: advance(done)) if advance else None)
    return reader.stats, time.perf_counter() - started


def report_reading(collector: Collector, issues: IssueLog) -> None:
    """What a screening reports after reading, into ``issues``: records of patients without a
    Patient resource, and the patients the mapping says not to screen."""
    for fact, count in collector.orphans().items():
        issues.add(
            InputIssue(
                "*", 0, "no-patient", f"{count} {fact} record(s) name a Patient not in the source"
            )
        )
    for patient_id, reason, where in collector.not_screened():
        file, _, line = where.rpartition(":")
        issues.add(
            InputIssue(
                file,
                int(line) if line.isdigit() else 0,
                NOT_SCREENED,
                f"Patient/{patient_id} is not screened: {reason}",
            )
        )


def screened_facts(collector: Collector) -> list[tuple[str, Facts]]:
    """(patient id, facts) of every patient to screen, in patient id order."""
    return [(patient_id, facts) for patient_id, _, facts in collector.screened_patients()]


def doubtful(issues: IssueLog) -> bool:
    """Input a screening would exit 1 for (patients not to screen are no such input)."""
    return issues.total - issues.counts.get(NOT_SCREENED, 0) > 0
