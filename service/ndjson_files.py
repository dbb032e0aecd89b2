"""Bulk-Data NDJSON files in a folder: which there are, of which resource type, opening them,
and splitting them into lines, for every reader.

``<ResourceType>.ndjson`` and ``<ResourceType>.<n>.ndjson``, optionally gzipped, as a Bulk Data
``$export`` writes them.

Splitting (here, so that the readers below the screening share it: ``prescreen load`` and the
Bulk Data reference scan, besides the screenings' own readers in ``screening/``): ``blocks``
reads a file in blocks of whole lines, ``span_blocks`` the same blocks for a span of it,
``split_points`` where a file may be cut into spans, ``numbered_lines`` the lines one by one.

One limit holds for every line read: a line of more than ``max_line`` bytes, its line end
included (the setting PRESCREEN_MAX_LINE_BYTES), is never held in memory. The splitting drops its
bytes as they come and says where it was (see ``blocks``); the reader reports it as the input
issue ``line-too-long`` with file and line number, never its content, and goes on with the next
line. A buffer never grows past about the limit and two blocks.
"""

from __future__ import annotations

import gzip
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from service.errors import SourceError

BLOCK_BYTES = 4 << 20
MAX_LINE_BYTES = 16 << 20
LINE_TOO_LONG = "line-too-long"
_BOM = b"\xef\xbb\xbf"  # a UTF-8 byte-order mark, which some Windows exporters write

_NDJSON_NAME = re.compile(r"^([A-Za-z]+)(?:\.[A-Za-z0-9_-]+)?\.ndjson(?:\.gz)?$")


@dataclass(frozen=True, slots=True)
class NdjsonFile:
    path: Path
    resource_type: str

    @property
    def size(self) -> int:
        return self.path.stat().st_size


def discover(folder: Path) -> list[NdjsonFile]:
    """``<Type>.ndjson``, ``<Type>.<n>.ndjson`` (optionally gzipped), in a stable order."""
    if not folder.exists():
        raise SourceError(f"source folder {folder} does not exist")
    if not folder.is_dir():
        raise SourceError(f"source {folder} is not a folder")
    found = []
    for path in sorted(folder.iterdir()):
        match = _NDJSON_NAME.match(path.name)
        if match and path.is_file():
            found.append(NdjsonFile(path, match.group(1)))
    if not found:
        raise SourceError(f"source folder {folder} has no <ResourceType>.ndjson files")
    return found


def open_ndjson(path: Path) -> IO[bytes]:
    if path.suffix == ".gz":
        return gzip.open(path, "rb")  # type: ignore[return-value]
    return path.open("rb")


def too_long_message(max_line: int) -> str:
    """The message of a ``line-too-long`` issue (it never quotes the line)."""
    return f"the line is longer than {max_line} bytes (line end included): skipped unread"


# --- splitting -------------------------------------------------------------------------------

# (buffer, end, skipped): ``buffer[:end]`` holds whole lines; ``skipped`` says that one line too
# long to read came just before them (it is counted as a line, and reported, first).
Block = tuple[bytearray, int, bool]


def blocks(handle: IO[bytes], max_line: int = MAX_LINE_BYTES) -> Iterator[Block]:
    """A file's lines in blocks, about BLOCK_BYTES at a time.

    Reads go BLOCK_BYTES at a time from offset 0, and each block ends after the last line end
    read so far: a block holds the lines whose line end lies in the bytes of that read (a last
    line without a line end comes alone, at the end). A line of more than ``max_line`` bytes
    with its line end is dropped as it is read and marked ``skipped`` on the block of the read
    its line end (or the file's end) lies in, before that block's lines. (Hadoop's line reader,
    which Spark's text source uses, skips exactly these lines when given ``max_line + 1`` as its
    ``mapreduce.input.linerecordreader.line.maxlength``.)

    One buffer is reused and filled in place (``readinto``): copying 4 MB blocks around cost
    more than scanning them. The buffer is only valid until the next block is asked for.
    """
    return _blocks(handle, 0, None, max_line)


def span_blocks(
    handle: IO[bytes], start: int, end: int, max_line: int = MAX_LINE_BYTES
) -> Iterator[Block]:
    """The blocks ``blocks`` would give for the bytes ``start..end`` of a whole-file reading.

    ``blocks`` cuts each block after the last line end read so far, so its blocks end at the
    last line end before each multiple of BLOCK_BYTES (or at the end of the file). A span
    between two such cuts is read with the same cuts, so the lines of each block, the lines
    skipped as too long, and the order in which their problems are reported are those of a
    whole-file reading (see ``split_points``).
    """
    handle.seek(start)
    return _blocks(handle, start, end, max_line)


def _blocks(handle: IO[bytes], start: int, end: int | None, max_line: int) -> Iterator[Block]:
    # Only the first line of the buffer can be longer than a read: the limit is kept at least
    # a block (the setting's minimum), so no other line needs a look.
    max_line = max(max_line, BLOCK_BYTES)
    buffer = bytearray(BLOCK_BYTES * 2)
    view = memoryview(buffer)
    filled = 0
    position = start
    dropping = False  # inside a line too long to keep: its bytes go as they come
    skipped = False  # a line too long ended in this read: marked on the block that follows
    while end is None or position < end:
        wanted = (position // BLOCK_BYTES + 1) * BLOCK_BYTES - position
        if end is not None:
            wanted = min(wanted, end - position)
        if len(buffer) - filled < wanted:  # one line longer than a block: grow
            view.release()
            buffer.extend(bytes(len(buffer)))
            view = memoryview(buffer)
        read = handle.readinto(view[filled : filled + wanted])  # type: ignore[attr-defined]
        if not read:
            break  # the end of the file (or it is shorter than it was)
        first_read = position == 0
        position += read
        if first_read and buffer.startswith(_BOM):
            buffer[: read - 3] = buffer[3:read]
            read -= 3
        fresh = filled  # the bytes of this read start here; those before hold no line end
        filled += read
        line_end = buffer.find(b"\n", fresh, filled)
        # Too long: more than ``max_line`` bytes with its line end (a content of max_line or
        # more before a line end, or more than max_line still without one).
        if dropping or (line_end == -1 and filled > max_line) or line_end >= max_line:
            # The buffer's first line is too long: drop it up to its line end, if read yet.
            if line_end == -1:
                dropping, filled = True, 0
                continue
            rest = filled - line_end - 1
            buffer[:rest] = buffer[line_end + 1 : filled]
            filled = rest
            dropping, skipped = False, True
        cut = buffer.rfind(b"\n", 0, filled) + 1
        if cut == 0 and not skipped:
            continue
        yield buffer, cut, skipped
        skipped = False
        tail = filled - cut
        buffer[:tail] = buffer[cut:filled]
        filled = tail
    if dropping or filled > max_line:
        yield buffer, 0, True  # the last line, without a line end, too long
    elif filled:
        yield buffer, filled, False


def split_points(path: Path, size: int, every: int) -> list[int]:
    """Offsets about ``every`` bytes apart where a reading of the file may be split in spans.

    Each is a cut ``blocks`` makes: just after the last line end before a multiple of
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


def numbered_lines(
    handle: IO[bytes], max_line: int = MAX_LINE_BYTES
) -> Iterator[tuple[int, bytes | None]]:
    """(line number, line without its line end) of every line, or None for a line too long
    to read (see ``blocks``): for readers that take lines one by one."""
    number = 0
    for block, end, skipped in blocks(handle, max_line):
        if skipped:
            number += 1
            yield number, None
        if not end:
            continue
        parts = bytes(block[:end]).split(b"\n")
        if block[end - 1 : end] == b"\n":
            parts.pop()  # after the last line end: nothing
        for line in parts:
            number += 1
            yield number, line
