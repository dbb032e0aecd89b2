"""Finding, in a block of NDJSON lines, the lines worth parsing, in one pass over its bytes.

A block is a few megabytes of whole lines. For a resource type whose mappings only want listed
codes, the reader needs two things of each block: the lines holding one of the codes (the
prefilter pattern built by ``code_prefilter``) and whether every other line plainly is one JSON
object (``{`` first, ``}`` last), so that a broken line is reported even when it is skipped.

Two scanners answer the same question. Hyperscan (Intel's multi-pattern matcher; a wheel on
x86-64 Linux) runs the code pattern and the "not an object" pattern together in one pass, at
several times the speed of Python's regex engine on an alternation of hundreds of codes. The
``re`` scanner is the portable fallback: the same answers (tested), three passes in C.
``PRESCREEN_BLOCK_SCANNER=re`` forces it.
"""

from __future__ import annotations

import os
import re
from typing import Protocol

#: A line end with something other than ``}`` before it or ``{`` after it: the block has a line
#: that is not plainly one JSON object (or a blank line, or CRLF), so the careful path runs.
_SEAM = rb"[^}]\n|\n[^{]"

_CODES, _NOT_AN_OBJECT = 0, 1


class BlockScanner(Protocol):
    def scan(self, block: bytearray, end: int, lines: int) -> tuple[list[int], bool]:
        """For ``block[:end]`` holding ``lines`` lines: the offsets where the lines holding a
        match start (ascending, each once) and whether every line plainly is one JSON object."""
        ...


def _ends_look_right(block: bytearray, end: int) -> bool:
    last = block[end - 2 : end - 1] if block[end - 1 : end] == b"\n" else block[end - 1 : end]
    return block[:1] == b"{" and last == b"}"


class RegexBlockScanner:
    """Python's ``re`` over the block, then two counts (C loops) for the object check."""

    def __init__(self, pattern: re.Pattern[bytes]) -> None:
        self.pattern = pattern

    def scan(self, block: bytearray, end: int, lines: int) -> tuple[list[int], bool]:
        starts: list[int] = []
        last = -1
        for match in self.pattern.finditer(block, 0, end):
            start = block.rfind(b"\n", 0, match.start()) + 1
            if start != last:  # a second relevant code on a line already taken
                starts.append(start)
                last = start
        # n lines that each look like {...} are joined by n-1 "}\n{" seams.
        objects = _ends_look_right(block, end) and block.count(b"}\n{", 0, end) == lines - 1
        return starts, objects


class HyperscanBlockScanner:
    """One Hyperscan pass for both questions. Each reader builds its own (a compiled database
    carries its scratch space, which two threads must not share); compiling takes milliseconds."""

    def __init__(self, pattern: re.Pattern[bytes]) -> None:
        import hyperscan

        self.database = hyperscan.Database(mode=hyperscan.HS_MODE_BLOCK)
        self.database.compile(
            expressions=[pattern.pattern, _SEAM],
            ids=[_CODES, _NOT_AN_OBJECT],
            elements=2,
            # The seam only needs to be seen once per block.
            flags=[0, hyperscan.HS_FLAG_SINGLEMATCH],
        )

    def scan(self, block: bytearray, end: int, lines: int) -> tuple[list[int], bool]:
        starts: list[int] = []
        last = -1
        seam = False

        def on_match(pattern: int, _from: int, to: int, _flags: int, _context: object) -> None:
            nonlocal last, seam
            if pattern == _NOT_AN_OBJECT:
                seam = True
                return
            start = block.rfind(b"\n", 0, to) + 1
            if start != last:
                starts.append(start)
                last = start

        with memoryview(block) as view:
            # The C extension takes any buffer; its stubs say bytes or str only.
            self.database.scan(view[:end], match_event_handler=on_match)  # type: ignore[type-var]
        # Matches come in order of their end; a line's matches are therefore consecutive.
        return starts, not seam and _ends_look_right(block, end)


def block_scanner(pattern: re.Pattern[bytes]) -> BlockScanner:
    """Hyperscan where it is installed and takes the pattern, else ``re``."""
    if os.environ.get("PRESCREEN_BLOCK_SCANNER", "").strip().lower() != "re":
        try:
            return HyperscanBlockScanner(pattern)
        except Exception:  # not installed, or a pattern it cannot compile
            pass
    return RegexBlockScanner(pattern)
