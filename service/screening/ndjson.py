"""Reading Bulk-Data NDJSON folders once, for one trial or a portfolio of them.

Each file is read in blocks; each line is scanned once and parsed at most once, and the parsed
resource goes to every collector (one per trial's mapping). Lines of resource types no mapping
reads are counted and skipped without parsing. Where every mapping reading a type restricts it to
listed codes, a block is searched for those codes in one pass (C speed) and only the lines holding
one are parsed; the other lines are only checked, block-wise, to look like one JSON object each.
Bad lines are reported with file and line, to every collector, and never stop a run.
"""

from __future__ import annotations

import gzip
import re
import zlib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any

import orjson

from service.mapping.mapper import code_prefilter
from service.ndjson_files import NdjsonFile, discover, open_ndjson
from service.screening.blockscan import BlockScanner, block_scanner
from service.screening.source import Collector, InputIssue, ReadStats, is_fhir_resource_type

BLOCK_BYTES = 4 << 20


def _blocks(handle: IO[bytes]) -> Iterator[tuple[bytearray, int]]:
    """(buffer, end): whole lines in ``buffer[:end]``, about BLOCK_BYTES at a time.

    One buffer is reused and filled in place (``readinto``): copying 4 MB blocks around cost
    more than scanning them. The buffer is only valid until the next block is asked for.
    """
    buffer = bytearray(BLOCK_BYTES * 2)
    view = memoryview(buffer)
    filled = 0
    first = True
    while True:
        if len(buffer) - filled < BLOCK_BYTES:  # one line longer than a block: grow
            view.release()
            buffer.extend(bytes(len(buffer)))
            view = memoryview(buffer)
        read = handle.readinto(view[filled : filled + BLOCK_BYTES])  # type: ignore[attr-defined]
        if first and buffer.startswith(b"\xef\xbb\xbf"):
            # A UTF-8 byte-order mark, which some Windows exporters write: not part of the JSON.
            buffer[: read - 3] = buffer[3:read]
            read -= 3
        first = False
        if not read:
            if filled:
                yield buffer, filled
            return
        filled += read
        cut = buffer.rfind(b"\n", 0, filled) + 1
        if cut == 0:
            continue
        yield buffer, cut
        tail = filled - cut
        buffer[:tail] = buffer[cut:filled]
        filled = tail


def _span_blocks(handle: IO[bytes], start: int, end: int) -> Iterator[tuple[bytearray, int]]:
    """The blocks ``_blocks`` would give for the bytes ``start..end`` of a whole-file reading.

    ``_blocks`` reads BLOCK_BYTES at a time and cuts each block after the last line end read so
    far, so its blocks end at the last line end before each multiple of BLOCK_BYTES (or at the
    end of the file). A span between two such cuts is read with the same cuts, so the lines of
    each block, and the order in which their problems are reported, are those of a whole-file
    reading (see ``split_points``). One buffer is filled in place, as in ``_blocks``.
    """
    handle.seek(start)
    buffer = bytearray(BLOCK_BYTES * 2)
    view = memoryview(buffer)
    filled = 0
    position = start
    while position < end:
        wanted = min((position // BLOCK_BYTES + 1) * BLOCK_BYTES, end) - position
        if len(buffer) - filled < wanted:  # one line longer than a block: grow
            view.release()
            buffer.extend(bytes(len(buffer)))
            view = memoryview(buffer)
        read = handle.readinto(view[filled : filled + wanted])  # type: ignore[attr-defined]
        if not read:
            break  # the file is shorter than it was
        if position == 0 and buffer.startswith(b"\xef\xbb\xbf"):
            # A UTF-8 byte-order mark, as in _blocks.
            buffer[: read - 3] = buffer[3:read]
            filled -= 3
        position += read
        filled += read
        cut = buffer.rfind(b"\n", 0, filled) + 1
        if cut:
            yield buffer, cut
            tail = filled - cut
            buffer[:tail] = buffer[cut:filled]
            filled = tail
    if filled:
        yield buffer, filled


def split_points(path: Path, size: int, every: int) -> list[int]:
    """Offsets about ``every`` bytes apart where a reading of the file may be split in spans.

    Each is a cut ``_blocks`` makes: just after the last line end before a multiple of
    BLOCK_BYTES. A multiple with no line end in the block before it gives no point.
    """
    points: list[int] = []
    step = max(1, round(every / BLOCK_BYTES))
    with path.open("rb") as handle:
        for multiple in range(step * BLOCK_BYTES, size, step * BLOCK_BYTES):
            handle.seek(multiple - BLOCK_BYTES)
            before = handle.read(BLOCK_BYTES)
            cut = before.rfind(b"\n")
            if cut != -1:
                point = multiple - BLOCK_BYTES + cut + 1
                if point < size and (not points or point > points[-1]):
                    points.append(point)
    return points


def reading_order(files: list[NdjsonFile], targets: frozenset[str]) -> list[NdjsonFile]:
    """Files of resolve() targets (Medication) first, so references find them when read."""
    return sorted(files, key=lambda f: f.resource_type not in targets)


def _constant(number: int) -> Callable[[], int]:
    return lambda: number


class NdjsonReader:
    """Reads files once and hands every parsed resource to each collector."""

    def __init__(self, collectors: Sequence[Collector]) -> None:
        self.collectors = list(collectors)
        self.stats = ReadStats()
        self.wanted = frozenset(
            rtype for collector in collectors for rtype in collector.mapper.resource_types
        )
        self.targets = frozenset(
            rtype for collector in collectors for rtype in collector.mapper.join_targets
        )
        self._takers: list[tuple[Collector, re.Pattern[bytes] | None]] = []
        self.prefilters: dict[str, re.Pattern[bytes] | None] = {}
        self._scanners: dict[str, BlockScanner] = {}
        for rtype in self.wanted:
            code_sets = [
                c.mapper.prefilter_codes.get(rtype)
                for c in collectors
                if rtype in c.mapper.resource_types
            ]
            if any(codes is None for codes in code_sets):
                self.prefilters[rtype] = None
            else:
                codes: set[str] = set().union(*code_sets)  # type: ignore[arg-type]
                self.prefilters[rtype] = code_prefilter(codes)

    def report(self, issue: InputIssue) -> None:
        for collector in self.collectors:
            collector.issues.add(issue)

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
        first = span is None or span[0] == 0
        if first:
            self.stats.files += 1
        wanted = file.resource_type in self.wanted
        if first and not wanted and not is_fhir_resource_type(file.resource_type):
            self.report(
                InputIssue(
                    file.path.name, 0, "unknown-resource-type", "file name is not a FHIR R4 type"
                )
            )
        prefilter = self._scanner(file.resource_type) if wanted else None
        self._takers = self._takers_of(file.resource_type)
        lines_before = 0
        try:
            with open_ndjson(file.path) as handle:
                raw_handle: Any = handle.fileobj if isinstance(handle, gzip.GzipFile) else handle
                blocks = _blocks(handle) if span is None else _span_blocks(handle, *span)
                for block, end in blocks:
                    lines = block.count(b"\n", 0, end) + (block[end - 1 : end] != b"\n")
                    self.stats.lines += lines
                    name = file.path.name
                    if not wanted:
                        self.stats.skipped_type += lines
                    elif prefilter is None:
                        self._parse_all(bytes(block[:end]), lines, name, lines_before)
                    else:
                        self._parse_matching(block, end, lines, prefilter, name, lines_before)
                    lines_before += lines
                    progress(raw_handle.tell())
        except (OSError, EOFError, zlib.error):
            # A corrupt or truncated gzip stream, or a read error: what was read before counts.
            self.report(
                InputIssue(
                    file.path.name,
                    lines_before + 1,
                    "unreadable-file",
                    "the file could not be read past this line (corrupt or truncated)",
                )
            )
        progress(file.size if span is None else span[1])

    def _scanner(self, resource_type: str) -> BlockScanner | None:
        pattern = self.prefilters.get(resource_type)
        if pattern is None:
            return None
        if resource_type not in self._scanners:
            self._scanners[resource_type] = block_scanner(pattern)
        return self._scanners[resource_type]

    def _parse_line(self, line: bytes, name: str, locate: Callable[[], int]) -> None:
        try:
            resource = orjson.loads(line)
        except orjson.JSONDecodeError:
            self.report(InputIssue(name, locate(), "malformed-json", "line is not valid JSON"))
            return
        self.stats.parsed += 1
        for collector, own_codes in self._takers:
            # A line this trial alone would have skipped unparsed stays unseen by it, so each
            # trial of a portfolio gets exactly what a run of it alone gets.
            if own_codes is None or own_codes.search(line):
                collector.add_resource(resource, name, locate)

    def _takers_of(self, resource_type: str) -> list[tuple[Collector, re.Pattern[bytes] | None]]:
        """The collectors reading this file type, each with the line test it needs, if any."""
        takers = [c for c in self.collectors if resource_type in c.mapper.resource_types]
        if len(takers) == 1:
            return [(takers[0], None)]  # the reader's own prefilter is this trial's
        return [(c, c.mapper.prefilters.get(resource_type)) for c in takers]

    def _parse_all(self, block: bytes, lines: int, name: str, lines_before: int) -> None:
        for offset, raw in enumerate(block.split(b"\n")[:lines]):
            line = raw.strip()
            if line:
                self._parse_line(line, name, _constant(lines_before + offset + 1))

    def _parse_matching(
        self,
        block: bytearray,
        end: int,
        lines: int,
        prefilter: BlockScanner,
        name: str,
        lines_before: int,
    ) -> None:
        starts, all_objects = prefilter.scan(block, end, lines)
        for start in starts:
            stop = block.find(b"\n", start, end)
            line = bytes(block[start : stop if stop != -1 else end]).strip()

            def locate(start: int = start) -> int:
                # Line numbers are counted only for lines that turn out to have a problem.
                return lines_before + block.count(b"\n", 0, start) + 1

            self._parse_line(line, name, locate)
        self.stats.skipped_prefilter += lines - len(starts)
        if not all_objects:
            self._report_shapes(bytes(block[:end]), set(starts), name, lines_before)

    def _report_shapes(self, block: bytes, matched: set[int], name: str, lines_before: int) -> None:
        """The slow path, for a block where some line does not look like a JSON object."""
        start = 0
        for offset, raw in enumerate(block.split(b"\n")):
            if start not in matched:
                line = raw.strip()
                if line and (line[:1] != b"{" or line[-1:] != b"}"):
                    self.report(
                        InputIssue(
                            name, lines_before + offset + 1, "malformed-json", "not a JSON object"
                        )
                    )
            start += len(raw) + 1


def read_folder(collectors: Collector | Sequence[Collector], folder: Path) -> ReadStats:
    """Every NDJSON file of a folder, read once into the collectors, without progress."""
    reader = NdjsonReader([collectors] if isinstance(collectors, Collector) else collectors)
    reader.read_files(discover(folder))
    return reader.stats
