"""What Spark's Python workers run for ``--executor spark`` (the driver's side: driver.py).

Reading: each task gets the lines of one split of a plain NDJSON file as Arrow batches (Spark's
text source reads them, from any Hadoop file system), or one whole gzipped file. It scans the
lines for the mappings' codes, parses and maps the relevant ones with prescreen's own collectors,
and returns per patient what the collectors kept, the problems found and the split's counts.
A line is located by its split and its place in the split; the driver turns that into a line
number once every split has been counted.

Evaluation: each task gets the records of a range of patients, sorted by patient id, rebuilds
each patient exactly as one reading would have built it (copies in read order, resources in the
order first read), and evaluates it with prescreen's evaluator.

Rule sets are loaded (and their CEL compiled) once per Python worker process, from the rule,
mapping and value set files the driver ships in the plan: the executors need prescreen
installed, not the rule folders.
"""

from __future__ import annotations

import atexit
import bisect
import dataclasses
import hashlib
import itertools
import os
import pickle
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import date
from functools import partial
from pathlib import Path, PurePath
from typing import TYPE_CHECKING, Any

from service.ndjson_files import BLOCK_BYTES, MAX_LINE_BYTES, NdjsonFile
from service.ruleset.engines import EngineName
from service.ruleset.evaluate import CriterionResult, Evaluator, PatientVerdict
from service.ruleset.loader import RuleSet, load_ruleset
from service.screening.inmemory import evaluate_reporting
from service.screening.lines import LineParser, constant
from service.screening.ndjson import NdjsonReader
from service.screening.source import (
    NO_NOTES,
    Collector,
    Copies,
    Copy,
    InputIssue,
    IssueLog,
    PatientData,
    ReadStats,
    SourceNotes,
    add_copy,
)

if TYPE_CHECKING:
    import re

    import pyarrow as pa

# The kinds of row a reading task returns (column ``kind``).
SPLIT, RECORDS, ISSUE, PATIENT, TARGET, STRAY = range(6)
# The kinds of row an evaluation task returns.
VERDICT, NOT_SCREENED, ORPHAN, SCREENED = range(4)

READ_SCHEMA = (
    "kind tinyint, pid string, trial int, file int, block long, idx long, pos long, "
    "phase tinyint, seq long, payload binary"
)
EVALUATE_SCHEMA = "kind tinyint, trial int, pid string, payload binary"

# A line's place in the whole input, the read order of one reading: its file's place in the
# reading order, the start of its split in the file (bytes), its place in the split. The same
# order as the local reader's counter, so the copy read last wins ties alike.
SPLIT_SHIFT = 40  # a split holds fewer than 2**40 lines
FILE_SHIFT = 84  # and starts before 2**44 bytes (16 TiB)
ROWS_PER_BATCH = 4096


def read_order(file: int, block: int, index: int) -> int:
    return (file << FILE_SHIFT) | (block << SPLIT_SHIFT) | index


def split_of(order: int) -> tuple[int, int, int]:
    """(file, split start, place in the split) of a ``read_order``."""
    mask = (1 << SPLIT_SHIFT) - 1
    return order >> FILE_SHIFT, (order >> SPLIT_SHIFT) & ((1 << 44) - 1), order & mask


@dataclass(frozen=True, slots=True)
class SourceFile:
    """One input file: ``index`` is its place in the reading order (targets first)."""

    index: int
    uri: str  # as Spark reads it
    name: str  # as problems name it
    resource_type: str
    size: int
    gzipped: bool


@dataclass(frozen=True)
class Plan:
    """Everything a task needs, shipped once to the executors as a broadcast."""

    rule_files: dict[str, bytes]  # rule sets, mappings and value sets, by their driver path
    trials: tuple[tuple[str, str], ...]  # (rule set file, mappings folder), driver paths
    engine: EngineName
    as_of: date
    files: tuple[SourceFile, ...]
    max_line: int = MAX_LINE_BYTES  # the longest line read (PRESCREEN_MAX_LINE_BYTES)
    key: str = field(default="", compare=False)
    notes: SourceNotes = NO_NOTES  # what the source lacks (lost types, deleted Patients)

    def with_key(self) -> Plan:
        """The plan with the key its loaded rule sets are kept under in a worker process."""
        digest = hashlib.sha256(
            pickle.dumps((sorted(self.rule_files.items()), self.trials, self.engine, self.as_of))
        ).hexdigest()
        return dataclasses.replace(self, key=digest)


class Runtime:
    """The rule sets of a plan, loaded in this worker process, and what follows from them."""

    def __init__(self, plan: Plan) -> None:
        self.as_of = plan.as_of
        self.engine = plan.engine
        self._root = _rules_folder(plan.rule_files)
        self.rulesets: list[RuleSet] = [
            # The driver loaded (and checked) the same files first.
            load_ruleset(
                self._here(rules), self._here(mappings), (plan.engine,), shapes_checked=True
            )
            for rules, mappings in plan.trials
        ]
        probe = LineParser([Collector(rs.mapper, plan.as_of, IssueLog()) for rs in self.rulesets])
        self.wanted = probe.wanted
        self.targets = probe.targets
        self.prefilters = probe.prefilters
        self._evaluators: list[Evaluator] = []

    def _here(self, driver_path: str) -> Path:
        return self._root / _relative(driver_path)

    def evaluators(self) -> list[Evaluator]:
        if not self._evaluators:
            self._evaluators = [Evaluator(rs, self.engine, memoize=True) for rs in self.rulesets]
        return self._evaluators

    def collectors(self, targets: list[dict[str, Copies]] | None) -> list[PlacedCollector]:
        found = []
        for trial, ruleset in enumerate(self.rulesets):
            collector = PlacedCollector(ruleset.mapper, self.as_of, IssueLog())
            if targets is not None:
                collector.targets = dict(targets[trial])  # this task's own: reading adds to it
            found.append(collector)
        return found


def _rules_folder(files: dict[str, bytes]) -> Path:
    """The rule files under the temporary folder, at their driver paths: one folder per set of
    contents, written once and shared by the worker processes (and runs) that need it."""
    digest = hashlib.sha256(pickle.dumps(sorted(files.items()))).hexdigest()[:32]
    folder = Path(tempfile.gettempdir()) / f"prescreen-rules-{digest}"
    if folder.is_dir() and _holds(folder, files):
        return folder
    staging = Path(tempfile.mkdtemp(prefix="prescreen-rules-new-"))
    for name, content in files.items():
        target = staging / _relative(name)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(content)
    try:
        staging.rename(folder)  # atomic: another process may have put it there first
    except OSError:
        if folder.is_dir() and _holds(folder, files):
            shutil.rmtree(staging, ignore_errors=True)
            return folder
        atexit.register(shutil.rmtree, staging, True)
        return staging  # a folder of that name holds something else: use this one
    return folder


def _relative(driver_path: str) -> PurePath:
    path = PurePath(driver_path)
    return path.relative_to(path.anchor)


def _holds(folder: Path, files: dict[str, bytes]) -> bool:
    """Whether the folder is this user's and holds exactly these contents."""
    if folder.stat().st_uid != os.getuid():
        return False
    for name, content in files.items():
        path = folder / _relative(name)
        if not path.is_file() or path.read_bytes() != content:
            return False
    return True


_runtimes: dict[str, Runtime] = {}


def runtime(plan: Plan) -> Runtime:
    """The plan's rule sets, loaded once per worker process (Spark reuses the processes)."""
    found = _runtimes.get(plan.key)
    if found is None:
        _runtimes.clear()  # a long-lived worker serves one run after another
        found = _runtimes[plan.key] = Runtime(plan)
    return found


class PlacedCollector(Collector):
    """A collector told where each resource sits in the whole input, so the copies it keeps
    carry the read order of one reading (the local reader counts them one by one)."""

    def place(self, order: int) -> None:
        self._order = order - 1  # add_resource counts this resource first

    def target_count(self) -> int:
        return sum(len(c) if isinstance(c, list) else 1 for c in self.targets.values())


# --- reading ----------------------------------------------------------------------------------


@dataclass
class SplitTally(ReadStats):
    """The counts of one split: the reader's (lines, parsed, skipped) and its bytes (each line
    with its line end)."""

    size: int = 0
    long_rows: int = 0  # rows longer than the limit: pieces of a line too long to read


Row = tuple[Any, ...]


class PartitionReader:
    """Reads the lines of one task and keeps what it returns to the driver."""

    def __init__(self, plan: Plan, targets: list[dict[str, Copies]] | None, mode: str) -> None:
        self.plan = plan
        self.runtime = runtime(plan)
        self.mode = mode  # "targets": only the resolve() targets are wanted back
        self.collectors = self.runtime.collectors(targets)
        for trial, collector in enumerate(self.collectors):
            collector.issues = IssueLog(sink=partial(self._found, trial), keep=0)
        self.tallies: dict[tuple[int, int], SplitTally] = {}
        self.rows: list[Row] = []
        # Where the line being read sits: (file, split start, place, line end); None while a
        # whole file is read by NdjsonReader, whose problems carry their own line numbers.
        self._at: tuple[int, int, int, int] | None = None
        self._phase = 0
        self._seq = 0
        self._stray = False
        # The lines are parsed, counted and checked as by the local reader.
        self.parser = LineParser(self.collectors, plan.max_line)

    # Problems, in the order one reading reports them: the driver sorts by (file, 4 MB block
    # of the local reader, phase, line, seq); see driver.py.
    def _found(self, trial: int, issue: InputIssue) -> None:
        self._seq += 1
        payload = pickle.dumps((issue.file, issue.kind, issue.message))
        if self._at is None:
            file = self._file_index(issue.file)
            self.rows.append((ISSUE, None, trial, file, 0, issue.line, 0, 0, self._seq, payload))
        else:
            file, block, index, end = self._at
            row = (ISSUE, None, trial, file, block, index, end, self._phase, self._seq, payload)
            self.rows.append(row)

    def _file_index(self, name: str) -> int:
        return next(f.index for f in self.plan.files if f.name == name)

    def _tally(self, file: int, block: int) -> SplitTally:
        tally = self.tallies.get((file, block))
        if tally is None:
            tally = self.tallies[(file, block)] = SplitTally()
        return tally

    # --- plain files: lines from Spark's text source ---

    def plain_batch(self, batch: pa.RecordBatch) -> None:
        import pyarrow.compute as pc

        files = batch.column("file")
        blocks = batch.column("block")
        block_range = pc.min_max(blocks)
        file_range = pc.min_max(files)
        values, sizes = batch.column("value"), batch.column("size")
        if block_range["min"] == block_range["max"] and file_range["min"] == file_range["max"]:
            self._plain_rows(files[0].as_py(), blocks[0].as_py(), values, sizes)
            return
        # Rare: one task reading several splits. Cut the batch where the split changes.
        keys = list(zip(files.to_pylist(), blocks.to_pylist(), strict=True))
        start = 0
        for end in range(1, len(keys) + 1):
            if end == len(keys) or keys[end] != keys[start]:
                file, block = keys[start]
                length = end - start
                self._plain_rows(
                    file, block, values.slice(start, length), sizes.slice(start, length)
                )
                start = end

    def _plain_rows(self, file_index: int, block: int, values: pa.Array, sizes: pa.Array) -> None:
        import pyarrow.compute as pc

        file = self.plan.files[file_index]
        tally = self._tally(file_index, block)
        count = len(values)
        # Every line's bytes, the types no trial reads included: lines that do not add up to
        # the file's size, or a row longer than the limit, show a line too long to read there
        # (see driver.SplitTable: the file is then read whole, by the local reader).
        total = pc.sum(sizes).as_py() or 0
        tally.long_rows += pc.sum(pc.greater(sizes, self.plan.max_line)).as_py() or 0
        if file.resource_type in self.runtime.wanted:
            self._plain_lines(file, block, values, tally)
        else:
            tally.skipped_type += count
        tally.lines += count
        tally.size += total + count

    def _plain_lines(
        self, file: SourceFile, block: int, values: pa.Array, tally: SplitTally
    ) -> None:
        file_index = file.index
        count = len(values)
        offsets, data = _binary_parts(values)
        base = offsets[0]
        if file.size == 3 and block == 0 and count == 1 and offsets[1] == base:
            return  # only a byte-order mark: the local reader finds no line in it
        prefilter = self.runtime.prefilters.get(file.resource_type)
        if prefilter is None:
            taken: Iterable[int] = range(count)
            misshapen: list[int] = []
        else:
            taken = _matching_rows(prefilter, data, offsets)
            chosen = set(taken)
            misshapen = [i for i in _not_plain_objects(values) if i not in chosen]
            tally.skipped_prefilter += count - len(chosen)
        parser = self.parser
        parser.stats = tally  # counts the parsed lines of this split
        parser.use(file.resource_type)
        for i in taken:
            line = bytes(data[offsets[i] : offsets[i + 1]]).strip()
            if line:
                end = tally.size + offsets[i + 1] - base + i  # this line's line end
                self._at = (file_index, block, tally.lines + i, end)
                self._phase = 0
                order = read_order(file_index, block, tally.lines + i)
                for collector in self.collectors:
                    collector.place(order)
                resource = parser.parse(line, file.name, constant(order))
                if _stray_target(resource, file, self.runtime.targets):
                    self._stray = True
        for i in misshapen:
            end = tally.size + offsets[i + 1] - base + i
            self._at = (file_index, block, tally.lines + i, end)
            self._phase = 1  # the local reader checks shapes after a block's parsed lines
            parser.check_shape(bytes(data[offsets[i] : offsets[i + 1]]), file.name, 0)
        self._at = None

    # --- gzipped files: read whole, by the local reader ---

    def gzipped_file(self, file: SourceFile, content: bytes) -> None:
        """A gzipped file cannot be entered in the middle: one task reads it with the local
        reader itself (a corrupt or cut stream is reported as it is locally)."""
        folder = Path(tempfile.mkdtemp(prefix="prescreen-gz-"))
        try:
            path = folder / file.name
            path.write_bytes(content)
            self.whole_file(file, path)
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    def whole_file(self, file: SourceFile, path: Path) -> None:
        """One file read whole by the local reader (its lines numbered as one reading numbers
        them, lines too long to read skipped in bounded memory): a gzipped file, or a plain one
        in which Spark's text source met a line too long to read."""
        for collector in self.collectors:
            collector.place(read_order(file.index, 0, 0) + 1)
        reader = NdjsonReader(self.collectors, self.plan.max_line)
        reader.read_files([NdjsonFile(path, file.resource_type)])
        tally = self._tally(file.index, 0)
        stats: ReadStats = reader.stats
        tally.lines += stats.lines
        tally.parsed += stats.parsed
        tally.skipped_type += stats.skipped_type
        tally.skipped_prefilter += stats.skipped_prefilter

    # --- what goes back ---

    def note_strays(self, file: SourceFile, targets_before: list[int]) -> None:
        """A gzipped file read whole gave resolve() targets of another type: see
        ``_stray_target``."""
        if file.resource_type in self.runtime.targets:
            return
        after = [c.target_count() for c in self.collectors]
        if after != targets_before:
            self._stray = True

    def output(self) -> Iterator[pa.RecordBatch]:
        rows = self.rows
        if self.mode == "targets":
            rows = [
                (TARGET, None, trial, 0, 0, 0, 0, 0, 0, pickle.dumps(c.targets))
                for trial, c in enumerate(self.collectors)
                if c.targets
            ]
            yield from _batches(rows, READ_SCHEMA)
            return
        for (file, block), tally in self.tallies.items():
            counts = (tally.parsed, tally.skipped_type, tally.skipped_prefilter, tally.long_rows)
            payload = pickle.dumps(counts)
            rows.append((SPLIT, None, 0, file, block, tally.lines, tally.size, 0, 0, payload))
        records = [c.stats.records for c in self.collectors]
        problems = sum(1 for row in rows if row[0] == ISSUE)
        rows.append((RECORDS, None, 0, 0, 0, 0, 0, 0, 0, pickle.dumps((records, problems))))
        if self._stray:
            rows.append((STRAY, None, 0, 0, 0, 0, 0, 0, 0, b""))
        kept: dict[str, list[tuple[int, Copies | None, dict[str, Copies] | None]]] = {}
        for trial, collector in enumerate(self.collectors):
            for patient_id, data in collector.patients.items():
                entry = (trial, data.patient_copies, data.resources)
                kept.setdefault(patient_id, []).append(entry)
        for patient_id, entries in kept.items():
            payload = pickle.dumps(entries, protocol=pickle.HIGHEST_PROTOCOL)
            rows.append((PATIENT, patient_id, 0, 0, 0, 0, 0, 0, 0, payload))
        yield from _batches(rows, READ_SCHEMA)


def _stray_target(resource: Any, file: SourceFile, targets: frozenset[str]) -> bool:
    """A resolve() target (a Medication) in another type's file: one reading would resolve
    the references read after it, which a split-up reading cannot do."""
    if not isinstance(resource, dict):
        return False
    rtype = resource.get("resourceType")
    return rtype in targets and rtype != file.resource_type and bool(resource.get("id"))


def _binary_parts(values: pa.Array) -> tuple[list[int], memoryview]:
    """The value offsets (one more than values) and the data buffer of a binary array."""
    import pyarrow as pa

    buffers = values.buffers()
    raw = memoryview(buffers[1])
    offsets = raw.cast("q") if pa.types.is_large_binary(values.type) else raw.cast("i")
    data = memoryview(buffers[2]) if buffers[2] is not None else memoryview(b"")
    return offsets[values.offset : values.offset + len(values) + 1].tolist(), data


def _matching_rows(pattern: re.Pattern[bytes], data: memoryview, offsets: list[int]) -> list[int]:
    """Rows holding a match of the pattern, in order: one scan of the batch's data, in C.

    Values lie end to end in the buffer; a match running from one row into the next (a cut
    line) is checked row by row, so a row is taken exactly when it alone holds a match.
    """
    rows: list[int] = []
    last = len(offsets) - 1
    for match in pattern.finditer(data, offsets[0], offsets[last]):
        first = bisect.bisect_right(offsets, match.start()) - 1
        through = bisect.bisect_right(offsets, match.end() - 1) - 1
        candidates = [first] if first == through else range(first, through + 1)
        for row in candidates:
            if rows and rows[-1] >= row:
                continue
            if first == through or pattern.search(data[offsets[row] : offsets[row + 1]]):
                rows.append(row)
    return rows


def _not_plain_objects(values: pa.Array) -> list[int]:
    """Rows that do not plainly look like one JSON object (``{...}``, maybe with a CR): the
    only ones worth a closer look when they are not parsed."""
    import pyarrow.compute as pc

    plain = pc.and_(
        pc.starts_with(values, "{"),
        pc.or_(pc.ends_with(values, "}"), pc.ends_with(values, "}\r")),
    )
    rows: list[int] = pc.indices_nonzero(pc.invert(pc.fill_null(plain, False))).to_pylist()
    return rows


def _batches(rows: list[Row], schema: str) -> Iterator[pa.RecordBatch]:
    import pyarrow as pa

    names = [part.split()[0] for part in schema.split(",")]
    types = {
        "tinyint": pa.int8(),
        "int": pa.int32(),
        "long": pa.int64(),
        "string": pa.string(),
        "binary": pa.binary(),
    }
    kinds = [types[part.split()[1]] for part in schema.split(",")]
    for start in range(0, len(rows), ROWS_PER_BATCH):
        chunk = rows[start : start + ROWS_PER_BATCH]
        columns = [pa.array([row[i] for row in chunk], type=kind) for i, kind in enumerate(kinds)]
        yield pa.RecordBatch.from_arrays(columns, names=names)


def read_plain(
    plan: Any, targets: Any, mode: str, batches: Iterator[pa.RecordBatch]
) -> Iterator[pa.RecordBatch]:
    """mapInArrow over the lines of plain files: columns file, block, value."""
    reader = PartitionReader(plan.value, targets.value if targets else None, mode)
    for batch in batches:
        reader.plain_batch(batch)
    yield from reader.output()


def read_gzipped(
    plan: Any, targets: Any, mode: str, batches: Iterator[pa.RecordBatch]
) -> Iterator[pa.RecordBatch]:
    """mapInArrow over whole gzipped files: columns file, content."""
    reader = PartitionReader(plan.value, targets.value if targets else None, mode)
    for batch in batches:
        indexes = batch.column("file").to_pylist()
        contents = batch.column("content")
        for row, index in enumerate(indexes):
            file = reader.plan.files[index]
            before = [c.target_count() for c in reader.collectors]
            reader.gzipped_file(file, contents[row].as_py())
            reader.note_strays(file, before)
    yield from reader.output()


# --- numbering and ordering problems -----------------------------------------------------------

LAST_BLOCK = 1 << 62  # after every block: the local reader's last line when it has no line end
KEYED_SCHEMA = (
    "trial int, file int, k_block long, phase tinyint, k_line long, seq long, line long, "
    "payload binary"
)


@dataclass(frozen=True)
class LinePlaces:
    """Where each split's lines start in their file, once every split has been counted: the
    line number of a place in a split, and where one reading reports a problem found there."""

    bases: dict[tuple[int, int], tuple[int, int]]  # (file, split start) -> lines, bytes before
    open_last: dict[int, int]  # file -> its last line, when that has no line end
    whole: frozenset[int]  # files read whole (gzipped...): their problems carry line numbers

    def line(self, file: int, block: int, index: int) -> int:
        return self.bases[(file, block)][0] + index + 1

    def key(self, row: Any) -> tuple[int, ...]:
        """(trial, file, block, phase, line, seq, line number) of a problem row. The local
        reader reads 4 MB blocks; in each it parses the relevant lines first, reporting what
        it finds, then checks the shape of the others; a gzipped file's problems are already
        in that order (seq)."""
        if row.file in self.whole:
            return (row.trial, row.file, 0, 0, 0, row.seq, row.idx)
        before, size = self.bases[(row.file, row.block)]
        line = before + row.idx + 1
        if self.open_last.get(row.file) == line:
            block = LAST_BLOCK  # a last line without a line end is a block of its own
        else:
            block = (size + row.pos) // BLOCK_BYTES  # the block holding its line end
        return (row.trial, row.file, block, row.phase, line, row.seq, line)


def keyed_issues(places: Any, batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    """mapInArrow over problem rows: their sort keys and line numbers (KEYED_SCHEMA)."""
    table = places.value
    for batch in batches:
        keyed = [(*table.key(row), row.payload) for row in _rows(batch)]
        yield from _batches(keyed, KEYED_SCHEMA)


@dataclass(frozen=True, slots=True)
class _Row:
    trial: int
    file: int
    block: int
    idx: int
    pos: int
    phase: int
    seq: int
    payload: bytes


def _rows(batch: pa.RecordBatch) -> Iterator[_Row]:
    columns = [batch.column(name).to_pylist() for name in _Row.__slots__]
    for values in zip(*columns, strict=True):
        yield _Row(*values)


# --- evaluating -------------------------------------------------------------------------------

Kept = list[tuple[int, Copies | None, dict[str, Copies] | None]]
# A verdict as plain tuples: smaller and quicker to pickle than the dataclasses.
PackedVerdict = tuple[str, str, tuple[tuple[Any, ...], ...]]


def pack(verdict: PatientVerdict) -> PackedVerdict:
    return (
        verdict.patient_id,
        verdict.verdict,
        tuple(
            (c.id, c.kind, c.result, c.evidence, c.reason, c.manual, c.error)
            for c in verdict.criteria
        ),
    )


def unpack(packed: PackedVerdict) -> PatientVerdict:
    patient_id, verdict, criteria = packed
    return PatientVerdict(
        patient_id,
        verdict,  # type: ignore[arg-type]
        tuple(CriterionResult(*criterion) for criterion in criteria),
    )


def _copies(copies: Copies | None) -> list[Copy]:
    if copies is None:
        return []
    return copies if isinstance(copies, list) else [copies]


def merge_patient(parts: list[Kept], trials: int) -> list[tuple[PatientData, int] | None]:
    """Per trial, one patient's records from every split that held some, as one reading keeps
    them (resources in the order first read), with the read order it was first met at."""
    found: list[tuple[list[Copy], dict[str, list[Copy]]] | None] = [None] * trials
    for kept in parts:
        for trial, patient_copies, resources in kept:
            copies = found[trial]
            if copies is None:
                copies = found[trial] = ([], {})
            copies[0].extend(_copies(patient_copies))
            for ref, ref_copies in (resources or {}).items():
                copies[1].setdefault(ref, []).extend(_copies(ref_copies))
    return [None if copies is None else _patient(*copies) for copies in found]


def _patient(
    patient_copies: list[Copy], resources: dict[str, list[Copy]]
) -> tuple[PatientData, int]:
    data = PatientData()
    for copy in sorted(patient_copies, key=_order):
        data.patient_copies = add_copy(data.patient_copies, copy)
    if resources:
        kept: dict[str, Copies] = {}
        for ref, ref_copies in sorted(resources.items(), key=lambda kv: min(map(_order, kv[1]))):
            for copy in sorted(ref_copies, key=_order):
                kept[ref] = add_copy(kept.get(ref), copy)
        data.resources = kept
    first = min(map(_order, itertools.chain(patient_copies, *resources.values())))
    return data, first


def _order(copy: Copy) -> int:
    return copy[2]


class PatientScreener:
    """Evaluates the patients of one task, one at a time, as their records arrive sorted."""

    def __init__(self, plan: Plan) -> None:
        self.runtime = runtime(plan)
        self.as_of = plan.as_of
        self.evaluators = self.runtime.evaluators()
        self.collectors = [
            Collector(rs.mapper, self.as_of, IssueLog(), plan.notes) for rs in self.runtime.rulesets
        ]
        self.rows: list[Row] = []
        # Per trial: fact -> [records, (read order the patient was first met, place among
        # its facts)], to count records without a Patient in the order one reading does.
        self.orphans: list[dict[str, list[Any]]] = [{} for _ in self.collectors]
        self.screened = [0 for _ in self.collectors]  # patients evaluated, for progress

    def screen(self, patient_id: str, parts: list[Kept]) -> None:
        merged = merge_patient(parts, len(self.collectors))
        for trial, found in enumerate(merged):
            if found is None:
                continue
            data, first = found
            if data.patient_copies is None:
                for place, (fact, records) in enumerate(data.facts().items()):
                    tally = self.orphans[trial].setdefault(fact, [0, (first, place)])
                    tally[0] += len(records)
                    tally[1] = min(tally[1], (first, place))
                continue
            collector = self.collectors[trial]
            collector.patients = {patient_id: data}
            for _, reason, where in collector.not_screened():
                payload = pickle.dumps((reason, where))
                self.rows.append((NOT_SCREENED, trial, patient_id, payload))
            for _, _patient, facts in collector.screened_patients():
                issues: list[InputIssue] = []
                log = IssueLog(sink=issues.append, keep=0)
                verdict = evaluate_reporting(
                    self.evaluators[trial], patient_id, facts, self.as_of, log
                )
                payload = pickle.dumps((pack(verdict), issues), protocol=pickle.HIGHEST_PROTOCOL)
                self.rows.append((VERDICT, trial, patient_id, payload))
                self.screened[trial] += 1

    def output(self) -> Iterator[pa.RecordBatch]:
        for trial, facts in enumerate(self.orphans):
            for fact, (count, first) in facts.items():
                self.rows.append((ORPHAN, trial, None, pickle.dumps((fact, count, first))))
        for trial, count in enumerate(self.screened):
            self.rows.append((SCREENED, trial, None, pickle.dumps(count)))
        yield from _batches(self.rows, EVALUATE_SCHEMA)
        self.rows = []


def evaluate_patients(plan: Any, batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    """mapInArrow over (pid, payload) rows sorted by pid: one verdict per patient and trial."""
    screener = PatientScreener(plan.value)
    current: str | None = None
    parts: list[Kept] = []
    for batch in batches:
        patient_ids = batch.column("pid").to_pylist()
        payloads = batch.column("payload").to_pylist()
        for patient_id, payload in zip(patient_ids, payloads, strict=True):
            if patient_id != current:
                if current is not None:
                    screener.screen(current, parts)
                current, parts = patient_id, []
            parts.append(pickle.loads(payload))
        if len(screener.rows) >= ROWS_PER_BATCH:
            yield from _batches(screener.rows, EVALUATE_SCHEMA)
            screener.rows = []
    if current is not None:
        screener.screen(current, parts)
    yield from screener.output()
