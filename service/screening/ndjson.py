"""Reading Bulk-Data NDJSON folders once, for one trial or a portfolio of them.

Each file is read in blocks of whole lines (``lines.blocks``); each line is scanned once and
parsed at most once, and the parsed resource goes to every collector (one per trial's mapping):
the lines themselves are split, parsed, counted and checked by ``lines.LineParser``, which
Spark's tasks share. Lines of resource types no mapping reads are counted and skipped without
parsing. Where every mapping reading a type restricts it to listed codes, a block is searched for
those codes in one pass (C speed) and only the lines holding one are parsed; the other lines are
only checked, block-wise, to look like one JSON object each. Bad lines are reported with file
and line, to every collector, and never stop a run.
"""

from __future__ import annotations

import gzip
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from service.ndjson_files import (
    MAX_LINE_BYTES,
    NdjsonFile,
    blocks,
    discover,
    open_ndjson,
    span_blocks,
)
from service.screening.blockscan import BlockScanner, block_scanner
from service.screening.lines import LineParser
from service.screening.source import Collector, InputIssue, ReadStats, is_fhir_resource_type


def reading_order(files: list[NdjsonFile], targets: frozenset[str]) -> list[NdjsonFile]:
    """Files of resolve() targets (Medication) first, so references find them when read."""
    return sorted(files, key=lambda f: f.resource_type not in targets)


class NdjsonReader:
    """Reads files once and hands every parsed resource to each collector."""

    def __init__(self, collectors: Sequence[Collector], max_line: int = MAX_LINE_BYTES) -> None:
        self.collectors = list(collectors)
        self.parser = LineParser(collectors, max_line)
        self.wanted = self.parser.wanted
        self.targets = self.parser.targets
        self._scanners: dict[str, BlockScanner] = {}

    @property
    def stats(self) -> ReadStats:
        """The counts of the reading (a worker starts each span with new ones)."""
        return self.parser.stats

    @stats.setter
    def stats(self, stats: ReadStats) -> None:
        self.parser.stats = stats

    def read_files(
        self, files: list[NdjsonFile], progress: Callable[[int, int], None] | None = None
    ) -> None:
        """Read the files (targets of references first); ``progress(done, total)`` in bytes."""
        ordered = reading_order(files, self.targets)
        total = sum(f.size for f in ordered)
        offset = 0
        for file in ordered:
            size = file.size

            def report(done: int, base: int = offset, size: int = size) -> None:
                if progress is not None:
                    progress(base + min(done, size), total)

            self._read_file(file, report)
            offset += size
        for collector in self.collectors:
            # Every trial read the same lines; the records each mapping kept are its own.
            records = collector.stats.records
            collector.stats.__dict__.update(self.stats.__dict__)
            collector.stats.records = records

    def read_span(
        self, file: NdjsonFile, span: tuple[int, int] | None, progress: Callable[[int], None]
    ) -> None:
        """One file, or the bytes ``span`` of it (between two ``split_points``), with the
        blocks, line numbers (counted from the span's start) and reports of a whole reading.

        ``progress`` gets file offsets. Only the span at offset 0 counts the file and reports
        a file name that is no resource type."""
        self._read_file(file, progress, span)

    def _read_file(
        self,
        file: NdjsonFile,
        progress: Callable[[int], None],
        span: tuple[int, int] | None = None,
    ) -> None:
        parser = self.parser
        stats = parser.stats
        first = span is None or span[0] == 0
        if first:
            stats.files += 1
        wanted = file.resource_type in self.wanted
        if first and not wanted and not is_fhir_resource_type(file.resource_type):
            parser.report(
                InputIssue(
                    file.path.name, 0, "unknown-resource-type", "file name is not a FHIR R4 type"
                )
            )
        prefilter = self._scanner(file.resource_type) if wanted else None
        parser.use(file.resource_type)
        lines_before = 0
        try:
            with open_ndjson(file.path) as handle:
                raw_handle: Any = handle.fileobj if isinstance(handle, gzip.GzipFile) else handle
                max_line = parser.max_line
                read = (
                    blocks(handle, max_line)
                    if span is None
                    else span_blocks(handle, *span, max_line)
                )
                name = file.path.name
                for block, end, skipped in read:
                    if skipped:  # a line too long to read, before the block's lines
                        stats.lines += 1
                        lines_before += 1
                        parser.too_long(name, lines_before)
                    if not end:
                        progress(raw_handle.tell())
                        continue
                    lines = block.count(b"\n", 0, end) + (block[end - 1 : end] != b"\n")
                    stats.lines += lines
                    if not wanted:
                        stats.skipped_type += lines
                    elif prefilter is None:
                        parser.parse_block(bytes(block[:end]), lines, name, lines_before)
                    else:
                        starts, all_objects = prefilter.scan(block, end, lines)
                        parser.parse_at(block, end, starts, name, lines_before)
                        stats.skipped_prefilter += lines - len(starts)
                        if not all_objects:
                            parser.check_shapes(bytes(block[:end]), set(starts), name, lines_before)
                    lines_before += lines
                    progress(raw_handle.tell())
        except (OSError, EOFError, zlib.error):
            # A corrupt or truncated gzip stream, or a read error: what was read before counts.
            parser.report(
                InputIssue(
                    file.path.name,
                    lines_before + 1,
                    "unreadable-file",
                    "the file could not be read past this line (corrupt or truncated)",
                )
            )
        progress(file.size if span is None else span[1])

    def _scanner(self, resource_type: str) -> BlockScanner | None:
        pattern = self.parser.prefilters.get(resource_type)
        if pattern is None:
            return None
        if resource_type not in self._scanners:
            self._scanners[resource_type] = block_scanner(pattern)
        return self._scanners[resource_type]


def read_folder(
    collectors: Collector | Sequence[Collector],
    folder: Path,
    max_line: int = MAX_LINE_BYTES,
    files: list[NdjsonFile] | None = None,
) -> ReadStats:
    """Every NDJSON file of a folder (or these of its files), read once into the collectors,
    without progress."""
    reader = NdjsonReader(
        [collectors] if isinstance(collectors, Collector) else collectors, max_line
    )
    reader.read_files(discover(folder) if files is None else files)
    return reader.stats
