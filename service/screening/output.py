"""Writing a screening's files: verdicts, FHIR resources, issues and a summary.

Each file is written under a temporary name and renamed into place when complete, so a reader
never sees half a file and an interrupted run leaves the previous outputs intact.
"""

from __future__ import annotations

import os
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import orjson

VERDICTS = "verdicts.ndjson"
STUDIES = "ResearchStudy.ndjson"
SUBJECTS = "ResearchSubject.ndjson"
ISSUES = "issues.ndjson"
SUMMARY = "summary.json"


class AtomicNdjson:
    """An NDJSON file that appears under its name only once it is complete."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        self._handle: IO[bytes] | None = None
        self.count = 0

    def __enter__(self) -> AtomicNdjson:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._handle = self._tmp.open("wb")
        return self

    def write(self, item: Any) -> None:
        assert self._handle is not None
        self._handle.write(orjson.dumps(item) + b"\n")
        self.count += 1

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._handle is not None
        self._handle.close()
        if exc_type is None:
            self._tmp.replace(self.path)
        else:
            self._tmp.unlink(missing_ok=True)


def write_json(path: Path, item: Any) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(orjson.dumps(item, option=orjson.OPT_INDENT_2) + b"\n")
    tmp.replace(path)
