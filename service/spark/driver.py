"""``--executor spark``: the offline screening on Apache Spark, with the same output files.

The driver (this module) lists the source, ships the rule sets to the executors and writes the
outputs; the executors (tasks.py) read, map and evaluate. Steps:

1. The files of resolve() targets (Medication) are read first and their resources, as one
   reading keeps them, are broadcast to every executor.
2. Every file is read once: plain files by Spark's text source (any Hadoop file system: local
   paths, ``hdfs://``, ``s3a://``...; split like any text file), gzipped files whole, one task
   each. The executors scan the lines for the mappings' codes, parse and map the relevant ones,
   and return what they kept per patient, the problems found and each split's counts.
3. The records are grouped by patient (a range partitioning on the patient id), each patient is
   evaluated in ``mapInArrow`` (Spark's mapPartitions over Arrow batches) with prescreen's own
   evaluator, rules compiled once per executor process.
4. The driver streams the verdicts back in patient id order and writes the files of the local
   executor, byte for byte (summary.json differs only in its timings).

Problems are reported as the local reader reports them: each carries its split and place in the
split, turned into a line number once all splits are counted, and they are sorted in the order
of one reading (by file, then by the 4 MB block the local reader would have read the line in,
its parsed lines' problems before its shape checks, then by line).

A line too long to read (PRESCREEN_MAX_LINE_BYTES) never reaches an executor whole: Hadoop's
line reader, under Spark's text source, is given the limit (``line.maxlength``). It skips such a
line, or hands on a piece of it where the line crosses a split, without saying so; but then the
file's lines do not add up to its size, or a row is longer than the limit. Such a file is read
again, whole, by the local reader on the driver (streamed, in bounded memory: the line is
skipped, counted and reported as ``line-too-long`` exactly as locally), and the reading's other
files again by Spark.

PySpark is optional (``pip install 'prescreen[spark]'``): nothing here imports it at module level.
"""

from __future__ import annotations

import heapq
import os
import pickle
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import date
from functools import partial, reduce
from pathlib import Path
from typing import TYPE_CHECKING, Any

from service.errors import PrescreenError, SourceError
from service.mapping.spec import read_mapping_doc
from service.ndjson_files import (
    _NDJSON_NAME,
    BLOCK_BYTES,
    MAX_LINE_BYTES,
    discover,
)
from service.private_files import open_private
from service.ruleset.engines import EngineName
from service.ruleset.loader import RuleSet
from service.screening import output
from service.screening.results import write_overview, write_results
from service.screening.run import folder_notes
from service.screening.source import (
    NO_NOTES,
    Copies,
    InputIssue,
    IssueLog,
    ReadStats,
    SourceNotes,
    current_copy,
    is_fhir_resource_type,
)
from service.screening.summary import (
    PortfolioSummary,
    ProgressSink,
    ScreeningSummary,
    report_lost_sources,
    report_not_screened,
    report_orphans,
)
from service.spark.tasks import (
    EVALUATE_SCHEMA,
    ISSUE,
    KEYED_SCHEMA,
    NOT_SCREENED,
    ORPHAN,
    PATIENT,
    READ_SCHEMA,
    RECORDS,
    SCREENED,
    SPLIT,
    STRAY,
    TARGET,
    VERDICT,
    LinePlaces,
    PartitionReader,
    Plan,
    SourceFile,
    evaluate_patients,
    keyed_issues,
    read_gzipped,
    read_plain,
    split_of,
    unpack,
)

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

INSTALL_HINT = "--executor spark needs PySpark: pip install 'prescreen[spark]'"
# Hadoop's line reader holds at most this many bytes of a line (given the limit plus one).
MAX_LENGTH_OPTION = "mapreduce.input.linerecordreader.line.maxlength"
PATIENTS_PER_PARTITION = 25_000
ISSUES_IN_MEMORY = 500_000  # problems sorted on the driver; beyond, sorted by Spark


def start_session(master: str | None) -> tuple[SparkSession, bool]:
    """A Spark session, and whether it was started here (else it was already running, and is
    left running): on ``master`` when given, else as spark-submit configured it, else
    ``local[*]``. Without PySpark (an optional extra) or Java: a clear error, exit code 2."""
    try:
        import pandas  # noqa: F401  (mapInArrow checks for it on the driver)
        import pyarrow  # noqa: F401
        from pyspark.sql import SparkSession
    except ImportError as exc:
        raise PrescreenError(INSTALL_HINT) from exc
    if "PYSPARK_GATEWAY_PORT" not in os.environ:
        # Not under spark-submit: executors run this interpreter (the one prescreen is
        # installed in) unless PYSPARK_PYTHON names another.
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    builder = SparkSession.builder.appName("prescreen").config(
        "spark.ui.showConsoleProgress", "false"
    )
    if master:
        builder = builder.master(master)
    running = SparkSession.getActiveSession()
    try:
        session = builder.getOrCreate()
    except Exception as exc:  # the JVM did not start: no Java, or one Spark does not run on
        raise PrescreenError(
            f"Spark did not start ({type(exc).__name__}); it needs Java 17 or 21 "
            "(check `java -version` and JAVA_HOME)"
        ) from exc
    if running is None and not os.environ.get("PRESCREEN_DEBUG"):
        session.sparkContext.setLogLevel("ERROR")
    return session, running is None


# --- the source -------------------------------------------------------------------------------


def list_source(session: SparkSession, source: str, targets: frozenset[str]) -> list[SourceFile]:
    """The NDJSON files of a folder (a local path or a Hadoop URI), in reading order."""
    if "://" in source or source.startswith("file:"):
        found = _list_hadoop(session, source)
    else:
        found = [
            (f"file:{f.path.resolve()}", f.path.name, f.resource_type, f.size, f.path.suffix)
            for f in discover(Path(source))
        ]
    # As the local reader: targets of references first, then in name order.
    ordered = sorted(found, key=lambda f: f[2] not in targets)
    return [
        SourceFile(index, uri, name, rtype, size, suffix == ".gz")
        for index, (uri, name, rtype, size, suffix) in enumerate(ordered)
    ]


def _list_hadoop(session: SparkSession, source: str) -> list[tuple[str, str, str, int, str]]:
    jvm: Any = session.sparkContext._jvm
    conf = session.sparkContext._jsc.hadoopConfiguration()
    folder = jvm.org.apache.hadoop.fs.Path(source)
    filesystem = folder.getFileSystem(conf)
    if not filesystem.exists(folder):
        raise SourceError(f"source folder {source} does not exist")
    if not filesystem.getFileStatus(folder).isDirectory():
        raise SourceError(f"source {source} is not a folder")
    found = []
    for status in filesystem.listStatus(folder):
        name = status.getPath().getName()
        match = _NDJSON_NAME.match(name)
        if match and status.isFile():
            suffix = ".gz" if name.endswith(".gz") else ".ndjson"
            found.append(
                (status.getPath().toString(), name, match.group(1), status.getLen(), suffix)
            )
    if not found:
        raise SourceError(f"source folder {source} has no <ResourceType>.ndjson files")
    return sorted(found, key=lambda f: f[1])


def rule_files(rulesets: Sequence[RuleSet]) -> dict[str, bytes]:
    """The files the rule sets were loaded from, for executors that lack the rule folders:
    each rule set, its mapping and the value sets of the mapping's folders."""
    files: dict[str, bytes] = {}
    for ruleset in rulesets:
        mapping = ruleset.mapper.source_file.resolve()
        paths = [ruleset.path.resolve(), mapping]
        for folder in read_mapping_doc(mapping).valuesets:
            paths += sorted((mapping.parent / folder).glob("*.json"))
        for path in paths:
            files[str(path.resolve())] = path.read_bytes()
    return files


# --- reading ----------------------------------------------------------------------------------


def _read_frame(
    session: SparkSession,
    files: list[SourceFile],
    wanted: frozenset[str],
    tasks: Any,
    max_line: int,
) -> DataFrame | None:
    """The reading tasks' rows (READ_SCHEMA) for these files; None when all are empty.

    One read for all plain files and one for all gzipped ones, so Spark packs small files
    into few tasks. Each line is tagged with its file's place in the reading order, found by
    its file name (names are unique in a folder and need no URL escaping).
    """
    from pyspark.sql import functions as F  # noqa: N812

    def place(chosen: list[SourceFile]) -> Any:
        names = F.create_map(*(F.lit(x) for f in chosen for x in (f.name, f.index)))
        return F.element_at(names, F.col("_metadata.file_name")).cast("int").alias("file")

    # The driver has listed the files already: Spark need not list them again in a job.
    threshold = "spark.sql.sources.parallelPartitionDiscovery.threshold"
    session.conf.set(threshold, str(max(32, len(files) + 1)))
    frames = []
    plain = [f for f in files if not f.gzipped and f.size > 0]
    if plain:
        # A line longer than the limit (its line end included) never reaches an executor
        # whole (see the module's docstring).
        lines = (
            session.read.option("lineSep", "\n")
            .option(MAX_LENGTH_OPTION, str(max_line + 1))
            .text([f.uri for f in plain])
        )
        # Lines of types no trial reads are counted, never looked at: not shipped.
        read = [f.index for f in plain if f.resource_type in wanted]
        value = F.when(place(plain).isin(read), F.col("value").cast("binary"))
        rows = lines.select(
            place(plain),
            F.col("_metadata.file_block_start").alias("block"),
            value.alias("value"),
            F.length(F.col("value").cast("binary")).alias("size"),  # bytes, every line's
        )
        frames.append(rows.mapInArrow(tasks[0], READ_SCHEMA))
    gzipped = [f for f in files if f.gzipped and f.size > 0]
    if gzipped:
        wholes = session.read.format("binaryFile").load([f.uri for f in gzipped])
        frames.append(
            wholes.select(place(gzipped), F.col("content")).mapInArrow(tasks[1], READ_SCHEMA)
        )
    return reduce(lambda a, b: a.union(b), frames) if frames else None


class SplitTable:
    """Every split's counts: the read statistics, and where each split's lines start.

    ``flagged``: plain files whose lines do not add up to their size, or that gave a row longer
    than the limit: Spark's text source met a line too long to read there, and the file is to
    be read whole (see the module's docstring). ``whole``: files read whole already."""

    def __init__(
        self,
        rows: list[Any],
        files: list[SourceFile],
        trials: int,
        whole: frozenset[int] = frozenset(),
    ) -> None:
        self.stats = ReadStats(files=len(files))
        self.records = [0] * trials
        self.problems = 0
        self.stray = False
        splits: dict[int, list[tuple[int, int, int]]] = {}
        long_rows: set[int] = set()
        for row in rows:
            if row.kind == SPLIT:
                parsed, skipped_type, skipped_prefilter, long = pickle.loads(row.payload)
                self.stats.lines += row.idx
                self.stats.parsed += parsed
                self.stats.skipped_type += skipped_type
                self.stats.skipped_prefilter += skipped_prefilter
                splits.setdefault(row.file, []).append((row.block, row.idx, row.pos))
                if long:
                    long_rows.add(row.file)
            elif row.kind == RECORDS:
                records, problems = pickle.loads(row.payload)
                self.records = [a + b for a, b in zip(self.records, records, strict=True)]
                self.problems += problems
            elif row.kind == STRAY:
                self.stray = True
        whole = whole | {f.index for f in files if f.gzipped}
        bases: dict[tuple[int, int], tuple[int, int]] = {}
        open_last: dict[int, int] = {}
        flagged: set[int] = set()
        for file in files:
            if file.index in whole or file.size == 0:
                continue  # read whole by the local reader: its line numbers are right
            parts = sorted(splits.get(file.index, []))
            # Each line was counted with a line end: the file's size tells whether the last
            # one had none, and whether a byte-order mark (which Spark drops) came first.
            missing = file.size - sum(part_size for _, _, part_size in parts)
            if missing not in (-1, 0, 2, 3) or file.index in long_rows:
                flagged.add(file.index)
                continue
            lines, size = 0, (3 if missing in (2, 3) else 0)
            for block, count, part_size in parts:
                bases[(file.index, block)] = (lines, size)
                lines += count
                size += part_size
            if missing in (-1, 2):
                open_last[file.index] = lines
        self.flagged = frozenset(flagged)
        self.places = LinePlaces(bases, open_last, frozenset(whole))
        self._by_name = {f.name: f for f in files}

    def where(self, where: str) -> str:
        """``file:line`` of a Patient not to screen: a place in a split becomes its line."""
        name, _, place = where.rpartition(":")
        file = self._by_name.get(name)
        if file is None or file.index in self.places.whole or not place.isdigit():
            return where  # a file read whole: its line numbers are already right
        index, block, row = split_of(int(place))
        return f"{name}:{self.places.line(index, block, row)}"

    def trial_stats(self, trial: int) -> ReadStats:
        stats = ReadStats(**self.stats.__dict__)
        stats.records = self.records[trial]
        return stats


def _issue_rows(session: SparkSession, read: DataFrame, table: SplitTable) -> Iterator[Any]:
    """The reading's problems as (trial, file, line, payload), in the order one reading
    reports them: sorted here when they fit in memory, else by Spark."""
    from pyspark.sql import functions as F  # noqa: N812

    if table.problems == 0:
        return iter(())
    found = read.filter(F.col("kind") == ISSUE)
    if table.problems <= ISSUES_IN_MEMORY:
        keyed = sorted((*table.places.key(row), row.payload) for row in found.collect())
        return iter([(k[0], k[1], k[6], k[7]) for k in keyed])
    places = session.sparkContext.broadcast(table.places)
    rows = found.mapInArrow(partial(keyed_issues, places), KEYED_SCHEMA).orderBy(
        "trial", "file", "k_block", "phase", "k_line", "seq"
    )
    return (
        (row.trial, row.file, row.line, row.payload)
        for row in rows.toLocalIterator(prefetchPartitions=True)
    )


@contextmanager
def local_copy(session: SparkSession, file: SourceFile) -> Iterator[Path]:
    """A local path holding the source file: its own for a local file, else a temporary copy
    streamed from Hadoop's file system (as Spark reads it) 4 MB at a time."""
    if file.uri.startswith("file:"):
        path = file.uri.removeprefix("file:")
        while path.startswith("//"):
            path = path[1:]
        yield Path(path)
        return
    folder = Path(tempfile.mkdtemp(prefix="prescreen-whole-"))
    try:
        copy = folder / file.name
        jvm: Any = session.sparkContext._jvm
        conf = session.sparkContext._jsc.hadoopConfiguration()
        hadoop_path = jvm.org.apache.hadoop.fs.Path(file.uri)
        stream = hadoop_path.getFileSystem(conf).open(hadoop_path)
        try:
            with open_private(copy) as out:
                while chunk := stream.readNBytes(BLOCK_BYTES):  # a byte[] comes back as bytes
                    out.write(chunk)
        finally:
            stream.close()
        yield copy
    finally:
        shutil.rmtree(folder, ignore_errors=True)


# --- the run ----------------------------------------------------------------------------------


class SparkScreening:
    """One run: the rule sets of a portfolio, one source, one output folder."""

    def __init__(
        self,
        session: SparkSession,
        rulesets: Sequence[RuleSet],
        source: str,
        as_of: date,
        out: Path,
        engine: EngineName,
        subject_identifier_system: str,
        progress: ProgressSink | None,
        max_line: int = MAX_LINE_BYTES,
    ) -> None:
        self.session = session
        self.max_line = max_line
        self._targets_bc: Any = None
        self.rulesets = list(rulesets)
        self.source = source
        self.as_of = as_of
        self.out = out
        self.engine = engine
        self.subject_identifier_system = subject_identifier_system
        self.progress = progress
        mappers = [ruleset.mapper for ruleset in self.rulesets]
        self.wanted = frozenset(t for m in mappers for t in m.resource_types)
        self.targets = frozenset(t for m in mappers for t in m.join_targets)

    @property
    def several(self) -> bool:
        return len(self.rulesets) > 1

    def folder(self, ruleset: RuleSet) -> str:
        return f"{ruleset.id}/" if self.several else ""

    def run(self) -> PortfolioSummary:
        files = list_source(self.session, self.source, self.targets)
        plan = Plan(
            rule_files(self.rulesets),
            tuple(
                (str(rs.path.resolve()), str(rs.mapper.source_file.resolve().parent))
                for rs in self.rulesets
            ),
            self.engine,
            self.as_of,
            tuple(files),
            self.max_line,
            notes=self.notes(),
        ).with_key()
        plan_bc = self.session.sparkContext.broadcast(plan)
        started = time.perf_counter()
        read, table = self._read(files, plan_bc)
        with output.OutputSet(self.out) as outputs:
            logs = []
            lost = []
            for ruleset in self.rulesets:
                issue_file = outputs.ndjson(f"{self.folder(ruleset)}{output.ISSUES}")
                logs.append(IssueLog(sink=partial(_write_issue, issue_file)))
                lost.append(report_lost_sources(logs[-1], ruleset, plan.notes.lost))
            self._report_read_issues(read, table, files, logs)
            read_seconds = time.perf_counter() - started
            evaluated = self._evaluate(read, plan_bc)
            from pyspark.sql import functions as F  # noqa: N812

            others = evaluated.filter(F.col("kind") != VERDICT).collect() if evaluated else []
            verdicts_by_patient: dict[str, dict[str, str]] = {}
            summaries = []
            for trial, ruleset in enumerate(self.rulesets):
                summary = ScreeningSummary(
                    ruleset.id,
                    ruleset.version,
                    self.engine,
                    self.as_of,
                    Path(self.source),
                    self.out / ruleset.id if self.several else self.out,
                    table.trial_stats(trial),
                    logs[trial],
                )
                summary.read_seconds = read_seconds
                summary.sources_unavailable = lost[trial]
                self._write_trial(
                    trial, summary, others, evaluated, table, outputs, verdicts_by_patient
                )
                summaries.append(summary)
            portfolio = PortfolioSummary(summaries, self.out)
            if self.several:
                portfolio.overview = write_overview(
                    self.rulesets, self.as_of, verdicts_by_patient, outputs
                )
        return portfolio

    def notes(self) -> SourceNotes:
        """What a local folder a Bulk Data export wrote says it lacks (as for local runs);
        a source elsewhere (hdfs://, s3a://) says nothing."""
        folder = Path(self.source.removeprefix("file://"))
        return folder_notes(folder) if folder.is_dir() else NO_NOTES

    def _read(self, files: list[SourceFile], plan_bc: Any) -> tuple[DataFrame | None, SplitTable]:
        """Targets first, then every file: the reading's rows (kept for the steps after) and
        the splits' counts."""
        from pyspark.sql import functions as F  # noqa: N812

        total = sum(f.size for f in files)
        advance = (
            self.progress.task("Reading NDJSON (Spark)", total, "bytes") if self.progress else None
        )
        targets_bc = self.session.sparkContext.broadcast(self._read_targets(files, plan_bc))
        self._targets_bc = targets_bc
        tasks = (
            partial(read_plain, plan_bc, targets_bc, "main"),
            partial(read_gzipped, plan_bc, targets_bc, "main"),
        )
        read = _read_frame(self.session, files, self.wanted, tasks, self.max_line)
        if read is not None:
            read = read.persist()
        counts = read.filter(F.col("kind").isin(SPLIT, RECORDS, STRAY)).collect() if read else []
        table = SplitTable(counts, files, len(self.rulesets))
        if table.flagged:
            # Lines too long to read: those files whole, here; the others by Spark again.
            if read is not None:
                read.unpersist()
            rest = [f for f in files if f.index not in table.flagged]
            spark_read = _read_frame(self.session, rest, self.wanted, tasks, self.max_line)
            whole = self._read_whole([f for f in files if f.index in table.flagged], plan_bc)
            read = whole if spark_read is None else spark_read.union(whole)
            read = read.persist()
            counts = read.filter(F.col("kind").isin(SPLIT, RECORDS, STRAY)).collect()
            table = SplitTable(counts, files, len(self.rulesets), table.flagged)
        if table.stray:
            raise PrescreenError(
                "a file holds resources of a type references are resolved to (such as "
                "Medication) besides its own type; --executor spark needs each type in its own "
                "files, as Bulk Data exports them: screen this source with --executor local"
            )
        if advance is not None:
            advance(total)
        return read, table

    def _read_whole(self, files: list[SourceFile], plan_bc: Any) -> DataFrame:
        """Files read whole by the local reader here, as a task reads a gzipped file: the
        reading's rows (READ_SCHEMA), for the steps after."""
        import pyarrow as pa

        targets = self._targets_bc.value if self._targets_bc is not None else None
        reader = PartitionReader(plan_bc.value, targets, "main")
        for file in files:
            before = [c.target_count() for c in reader.collectors]
            with local_copy(self.session, file) as path:
                reader.whole_file(file, path)
            reader.note_strays(file, before)
        table = pa.Table.from_batches(list(reader.output()))
        return self.session.createDataFrame(table, schema=READ_SCHEMA)

    def _write_trial(
        self,
        trial: int,
        summary: ScreeningSummary,
        others: list[Any],
        evaluated: DataFrame | None,
        table: SplitTable,
        outputs: output.OutputSet,
        verdicts_by_patient: dict[str, dict[str, str]],
    ) -> None:
        """One trial's files, as the local run writes them."""
        begun = time.perf_counter()
        ruleset = self.rulesets[trial]
        self._report_unscreened(trial, summary, others, table)
        screened = sum(
            pickle.loads(row.payload)
            for row in others
            if row.kind == SCREENED and row.trial == trial
        )
        title = f"Screening patients ({ruleset.id})" if self.several else "Screening patients"
        advance = self.progress.task(title, screened) if self.progress else None
        rows = self._verdict_rows(evaluated, trial)
        contracts = self._contracts(ruleset, summary, rows, verdicts_by_patient, advance)
        folder = self.folder(ruleset)
        write_results(
            ruleset, contracts, self.as_of, outputs, self.subject_identifier_system, folder
        )
        summary.evaluate_seconds = time.perf_counter() - begun
        outputs.json(f"{folder}{output.SUMMARY}", summary.as_json())

    def _read_targets(self, files: list[SourceFile], plan_bc: Any) -> list[dict[str, Copies]]:
        """resolve() targets (Medications) by reference, per trial: the copy that is the
        record, as the local reader resolves references once it has read them all."""
        found: list[dict[str, list[Any]]] = [{} for _ in self.rulesets]
        target_files = [f for f in files if f.resource_type in self.targets]
        tasks = (
            partial(read_plain, plan_bc, None, "targets"),
            partial(read_gzipped, plan_bc, None, "targets"),
        )
        frame = (
            _read_frame(self.session, target_files, self.wanted, tasks, self.max_line)
            if target_files
            else None
        )
        for row in frame.collect() if frame is not None else []:
            if row.kind != TARGET:
                continue
            for ref, copies in pickle.loads(row.payload).items():
                kept = found[row.trial].setdefault(ref, [])
                kept.extend(copies if isinstance(copies, list) else [copies])
        return [{ref: current_copy(copies) for ref, copies in t.items()} for t in found]

    def _report_read_issues(
        self,
        read: DataFrame | None,
        table: SplitTable,
        files: list[SourceFile],
        logs: list[IssueLog],
    ) -> None:
        # A file named for no resource type is reported before its lines (by the local reader
        # itself for a gzipped file, read whole by one task; here for the others).
        named: list[tuple[int, int, InputIssue]] = [
            (
                trial,
                f.index,
                InputIssue(f.name, 0, "unknown-resource-type", "file name is not a FHIR R4 type"),
            )
            for trial in range(len(self.rulesets))
            for f in files
            if f.resource_type not in self.wanted
            and not is_fhir_resource_type(f.resource_type)
            and (f.index not in table.places.whole or f.size == 0)
        ]
        rows = _issue_rows(self.session, read, table) if read is not None else iter(())
        found = (
            (trial, file, InputIssue(name, line, kind, message))
            for trial, file, line, payload in rows
            for name, kind, message in [pickle.loads(payload)]
        )
        for trial, _, issue in heapq.merge(named, found, key=lambda item: item[:2]):
            logs[trial].add(issue)

    def _evaluate(self, read: DataFrame | None, plan_bc: Any) -> DataFrame | None:
        """Patients grouped by id over a range partitioning, evaluated partition by partition."""
        from pyspark.sql import functions as F  # noqa: N812

        if read is None:
            return None
        patients = read.filter(F.col("kind") == PATIENT).select("pid", "payload")
        count = patients.count()
        parallelism = self.session.sparkContext.defaultParallelism
        partitions = max(2 * parallelism, count // PATIENTS_PER_PARTITION + 1)
        return (
            patients.repartitionByRange(partitions, "pid")
            .sortWithinPartitions("pid")
            .mapInArrow(partial(evaluate_patients, plan_bc), EVALUATE_SCHEMA)
            .persist()
        )

    def _report_unscreened(
        self, trial: int, summary: ScreeningSummary, others: list[Any], table: SplitTable
    ) -> None:
        """Records without a Patient, then patients not to screen: as the local run, before
        any evaluation problem."""
        counts: dict[str, int] = {}
        firsts: dict[str, tuple[int, int]] = {}
        not_screened: list[tuple[str, str, str]] = []
        for row in others:
            if row.trial != trial:
                continue
            if row.kind == ORPHAN:
                fact, count, first = pickle.loads(row.payload)
                counts[fact] = counts.get(fact, 0) + count
                firsts[fact] = min(firsts.get(fact, first), first)
            elif row.kind == NOT_SCREENED:
                reason, where = pickle.loads(row.payload)
                not_screened.append((row.pid, reason, table.where(where)))
        # Counted in the order one reading meets them: by the patient first met, then fact.
        orphans = sorted((firsts[fact], fact, count) for fact, count in counts.items())
        summary.orphans = Counter({fact: count for _, fact, count in orphans})
        report_orphans(summary)
        report_not_screened(sorted(not_screened), summary)

    def _verdict_rows(self, evaluated: DataFrame | None, trial: int) -> Iterator[Any]:
        from pyspark.sql import functions as F  # noqa: N812

        if evaluated is None:
            return iter(())
        rows = evaluated.filter((F.col("kind") == VERDICT) & (F.col("trial") == trial))
        return rows.select("pid", "payload").toLocalIterator(prefetchPartitions=True)

    def _contracts(
        self,
        ruleset: RuleSet,
        summary: ScreeningSummary,
        rows: Iterator[Any],
        verdicts_by_patient: dict[str, dict[str, str]],
        advance: Callable[[int], None] | None,
    ) -> Iterator[dict[str, Any]]:
        """The verdict lines of one trial, as the local run makes them: problems, tallies and
        the portfolio's record of each patient first."""
        previous: str | None = None
        done = 0
        for row in rows:
            if previous is not None and row.pid <= previous:
                # The range partitioning gives patient id order; never write out of it.
                raise RuntimeError("Spark returned patients out of order")
            previous = row.pid
            packed, issues = pickle.loads(row.payload)
            for issue in issues:
                summary.issues.add(issue)
            verdict = unpack(packed)
            summary.tally(verdict)
            verdicts_by_patient.setdefault(row.pid, {})[ruleset.id] = verdict.verdict
            yield verdict.as_contract(ruleset, self.as_of)
            done += 1
            if advance is not None and done % 256 == 0:
                advance(done)
        if advance is not None:
            advance(done)


def _write_issue(file: output.AtomicNdjson, issue: InputIssue) -> None:
    file.write(issue.as_json())


def screen_portfolio_spark(
    rulesets: Sequence[RuleSet],
    source: str,
    as_of: date,
    out: Path,
    *,
    engine: EngineName = "cel",
    subject_identifier_system: str,
    master: str | None = None,
    progress: ProgressSink | None = None,
    max_line: int = MAX_LINE_BYTES,
) -> PortfolioSummary:
    """screen_portfolio on Spark: the same files, read from a folder or any Hadoop URI."""
    interrupt_handler = signal.getsignal(signal.SIGINT)
    session, started = start_session(master)
    try:
        run = SparkScreening(
            session,
            rulesets,
            source,
            as_of,
            out,
            engine,
            subject_identifier_system,
            progress,
            max_line,
        )
        return run.run()
    finally:
        if started:
            session.stop()
            _restore_interrupt_handler(interrupt_handler)


def _restore_interrupt_handler(handler: Any) -> None:
    """Put back the SIGINT handler a session started here replaced.

    A SparkContext started in the main thread installs a SIGINT handler bound to itself (it
    cancels the context's jobs, then raises KeyboardInterrupt) and leaves it installed when it
    stops. A later Ctrl-C in this process then raises ``AttributeError: 'NoneType' object has
    no attribute 'sc'`` wherever the process happens to be: in the test suite, a rule set
    loading after a Spark run reported it as a rule problem of its own.
    """
    if handler is None or threading.current_thread() is not threading.main_thread():
        return  # a handler not set from Python, or one only the main thread may set
    if signal.getsignal(signal.SIGINT) is not handler:
        signal.signal(signal.SIGINT, handler)
