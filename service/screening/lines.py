"""NDJSON lines: where they are parsed, counted and reported, for every screening.

Every screening reads its lines through here: the local reader (``ndjson.py``: one process, or
the spans of a file in the ``--workers`` processes) and Spark's reading tasks
(``service/spark/tasks.py``, which get the lines from Spark's text source). So the runs of the
command line, of a Bulk Data download and of the service all split, parse, count and report a
line alike.

- Splitting is in ``service/ndjson_files.py`` (``blocks``, ``span_blocks``, ``split_points``),
  below this package, because two readers outside a screening split lines too: ``prescreen
  load`` (``service/fhir/loader.py``) and the scan for referenced ids after a Bulk Data download
  (``service/fhir/bulk/references.py``). It keeps the one limit on a line's length: a longer
  line is dropped as it is read.
- Parsing: ``LineParser`` knows which collectors read a resource type (each with the line test
  it needs in a portfolio), parses a line (orjson), counts it, reports one that is not valid
  JSON, hands the resource to the collectors, and checks the shape of the lines left unparsed
  (``{`` first, ``}`` last, else "not a JSON object").

A rule about single lines belongs here, written once: a line too long to read is reported by
``LineParser.too_long`` (Spark's driver reports the lines Spark's text source skipped with the
same kind and message: ``service/spark/driver.py``). A new kind of input issue about a line is
reported by ``LineParser`` as well.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from functools import cached_property
from typing import Any

import orjson

from service.mapping.mapper import code_prefilter
from service.ndjson_files import LINE_TOO_LONG, MAX_LINE_BYTES, too_long_message
from service.screening.source import Collector, InputIssue, ReadStats

# A collector reading a resource type, with the line test it needs (None: every parsed line).
Taker = tuple[Collector, re.Pattern[bytes] | None]


def constant(number: int) -> Callable[[], int]:
    """A line's ``locate`` when its number is known already."""
    return lambda: number


def not_an_object(line: bytes) -> bool:
    """The shape rule for a line left unparsed: stripped, it is neither empty nor ``{...}``."""
    line = line.strip()
    return bool(line) and (line[:1] != b"{" or line[-1:] != b"}")


# --- parsing ---------------------------------------------------------------------------------


class LineParser:
    """Parses the lines of one reading and hands every resource to the collectors reading its
    type; reports the lines that cannot be read, to every collector.

    ``locate`` (a function giving a line's number) is only called to report a problem: counting
    the lines before one costs a pass over its block.
    """

    def __init__(self, collectors: Sequence[Collector], max_line: int = MAX_LINE_BYTES) -> None:
        self.collectors = list(collectors)
        self.max_line = max_line
        self.stats = ReadStats()
        self.wanted = frozenset(
            rtype for collector in collectors for rtype in collector.mapper.resource_types
        )
        self.targets = frozenset(
            rtype for collector in collectors for rtype in collector.mapper.join_targets
        )
        self.takers: list[Taker] = []  # of the resource type being read: see ``use``
        self._takers: dict[str, list[Taker]] = {}

    @cached_property
    def prefilters(self) -> dict[str, re.Pattern[bytes] | None]:
        """Per wanted type, the pattern of the codes one of which a line must hold to be parsed
        (None: every line is): every mapping's codes, unless one of them reads every line."""
        found: dict[str, re.Pattern[bytes] | None] = {}
        for rtype in self.wanted:
            code_sets = [
                c.mapper.prefilter_codes.get(rtype)
                for c in self.collectors
                if rtype in c.mapper.resource_types
            ]
            if any(codes is None for codes in code_sets):
                found[rtype] = None
            else:
                codes: set[str] = set().union(*code_sets)  # type: ignore[arg-type]
                found[rtype] = code_prefilter(codes)
        return found

    def use(self, resource_type: str) -> None:
        """The lines parsed next are of this type (its file's)."""
        takers = self._takers.get(resource_type)
        if takers is None:
            takers = self._takers[resource_type] = self._takers_of(resource_type)
        self.takers = takers

    def _takers_of(self, resource_type: str) -> list[Taker]:
        """The collectors reading this type, each with the line test it needs, if any."""
        takers = [c for c in self.collectors if resource_type in c.mapper.resource_types]
        if len(takers) == 1:
            return [(takers[0], None)]  # the reading's own prefilter is this trial's
        return [(c, c.mapper.prefilters.get(resource_type)) for c in takers]

    def report(self, issue: InputIssue) -> None:
        """A problem of the input is every trial's problem."""
        for collector in self.collectors:
            collector.issues.add(issue)

    def parse(self, line: bytes, name: str, locate: Callable[[], int]) -> Any:
        """Parse one stripped, non-empty line of file ``name`` and hand the resource to the
        takers. The parsed JSON value; None when the line is not valid JSON (reported) or is
        ``null``."""
        try:
            resource = orjson.loads(line)
        except orjson.JSONDecodeError:
            self.report(InputIssue(name, locate(), "malformed-json", "line is not valid JSON"))
            return None
        self.stats.parsed += 1
        for collector, own_codes in self.takers:
            # A line this trial alone would have skipped unparsed stays unseen by it, so each
            # trial of a portfolio gets exactly what a run of it alone gets.
            if own_codes is None or own_codes.search(line):
                collector.add_resource(resource, name, locate)
        return resource

    def too_long(self, name: str, number: int) -> None:
        """A line too long to read, skipped unread by the splitting (the reader counts it as
        a line): reported to every trial. Spark's driver reports the lines Spark's text source
        skipped with the same kind and message."""
        self.report(InputIssue(name, number, LINE_TOO_LONG, too_long_message(self.max_line)))

    def check_shape(self, line: bytes, name: str, number: int) -> None:
        """One line left unparsed: reported when it is not plainly one JSON object."""
        if not_an_object(line):
            self._not_an_object(name, number)

    def _not_an_object(self, name: str, number: int) -> None:
        self.report(InputIssue(name, number, "malformed-json", "not a JSON object"))

    # Lines of a block (``blocks``): ``lines_before`` lines of the file come before it.

    def parse_block(self, block: bytes, lines: int, name: str, lines_before: int) -> None:
        """Every line of a block."""
        for offset, raw in enumerate(block.split(b"\n")[:lines]):
            line = raw.strip()
            if line:
                self.parse(line, name, constant(lines_before + offset + 1))

    def parse_at(
        self, block: bytearray, end: int, starts: list[int], name: str, lines_before: int
    ) -> None:
        """The lines of ``block[:end]`` starting at these offsets."""
        for start in starts:
            stop = block.find(b"\n", start, end)
            line = bytes(block[start : stop if stop != -1 else end]).strip()

            def locate(start: int = start) -> int:
                # Line numbers are counted only for lines that turn out to have a problem.
                return lines_before + block.count(b"\n", 0, start) + 1

            self.parse(line, name, locate)

    def check_shapes(self, block: bytes, parsed: set[int], name: str, lines_before: int) -> None:
        """The lines of a block not starting at an offset in ``parsed``: the slow path, for a
        block where some line does not look like a JSON object."""
        start = 0
        for offset, raw in enumerate(block.split(b"\n")):
            if start not in parsed and not_an_object(raw):
                self._not_an_object(name, lines_before + offset + 1)
            start += len(raw) + 1
