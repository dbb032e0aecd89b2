"""Cutting an offline screening into pieces for several processes, and the files between them.

Reading is cut by input: each *span* is one file, or a byte range of a big plain file between
two cuts the whole-file reader makes itself (so blocks, line numbers and the order of reports
come out as in one reading). Evaluation is cut by patient: each patient belongs to one *bucket*,
by a hash of its id that is the same in every process. Readers write what they kept for each
bucket to spill files, one per span and bucket, so no process holds the whole population.
"""

from __future__ import annotations

import itertools
import pickle
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from service import ndjson_files
from service.ndjson_files import NdjsonFile


@dataclass(frozen=True, slots=True)
class Span:
    """A piece of the input: ``bounds`` (start, end) of ``file``, or the whole file (None)."""

    index: int  # its place in the order of one whole reading
    file: NdjsonFile
    bounds: tuple[int, int] | None

    @property
    def start(self) -> int:
        return 0 if self.bounds is None else self.bounds[0]

    @property
    def size(self) -> int:
        return self.file.size if self.bounds is None else self.bounds[1] - self.bounds[0]


def plan_spans(files: list[NdjsonFile], every: int) -> list[Span]:
    """The files, in reading order, cut into spans of about ``every`` bytes where possible.

    A gzipped file cannot be entered in the middle: it stays whole, as does a small file.
    """
    every = max(every, ndjson_files.BLOCK_BYTES)
    spans: list[Span] = []
    for file in files:
        size = file.size
        gzipped = file.path.suffix == ".gz"
        points = [] if gzipped else ndjson_files.split_points(file.path, size, every)
        if not points:
            spans.append(Span(len(spans), file, None))
            continue
        edges = [0, *points, size]
        for start, end in itertools.pairwise(edges):
            spans.append(Span(len(spans), file, (start, end)))
    return spans


def span_size(total_bytes: int, workers: int) -> int:
    """Spans small enough that every worker gets several (a slow one holds up less), large
    enough that each costs little to hand out: at most 64 MB."""
    return min(64 << 20, max(ndjson_files.BLOCK_BYTES, total_bytes // (workers * 4)))


def bucket_of(patient_id: str, buckets: int) -> int:
    """The bucket of a patient: CRC-32 of its id, the same in every process (``hash`` of a
    string is salted per process)."""
    return zlib.crc32(patient_id.encode()) % buckets


def write_spill(path: Path, items: Any) -> None:
    """One pickled object per call, appended: the file is a stream of them."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("ab") as handle:
        pickle.dump(items, handle, protocol=pickle.HIGHEST_PROTOCOL)


def read_spill(path: Path) -> Iterator[Any]:
    """The objects ``write_spill`` appended, in order. Spill files are written by this run's
    own processes in its private temporary folder; nothing else is ever unpickled."""
    with path.open("rb") as handle:
        while True:
            try:
                yield pickle.load(handle)
            except EOFError:
                return
