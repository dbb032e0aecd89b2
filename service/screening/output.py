"""Writing a screening's files: verdicts, FHIR resources, issues and a summary.

Each file is written under a temporary name and renamed into place when complete, so a reader
never sees half a file and an interrupted run leaves the previous outputs intact. They hold
patient data: created 0600 in folders created 0700 (service/private_files.py).
"""

from __future__ import annotations

import os
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import orjson

from service.private_files import open_private, private_folder, write_private

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

    def open(self) -> AtomicNdjson:
        private_folder(self.path.parent)
        self._handle = open_private(self._tmp)
        return self

    def write(self, item: Any) -> None:
        assert self._handle is not None
        self._handle.write(orjson.dumps(item) + b"\n")
        self.count += 1

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None

    def commit(self) -> None:
        self.close()
        self._tmp.replace(self.path)

    def discard(self) -> None:
        self.close()
        self._tmp.unlink(missing_ok=True)

    def __enter__(self) -> AtomicNdjson:
        return self.open()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.discard()


class OutputSet:
    """A run's files, renamed into place together only when the run completes.

    A run stopped midway leaves every file of the previous run as it was: never a new
    issues.ndjson beside an old verdicts.ndjson, never half a file.
    """

    def __init__(self, out: Path) -> None:
        self.out = out
        self._files: list[AtomicNdjson] = []
        self._documents: list[tuple[Path, Any]] = []
        self._texts: list[tuple[Path, str]] = []

    def ndjson(self, name: str) -> AtomicNdjson:
        file = AtomicNdjson(self.out / name).open()
        self._files.append(file)
        return file

    def json(self, name: str, item: Any) -> None:
        """A JSON document, written when the set is committed."""
        self._documents.append((self.out / name, item))

    def text(self, name: str, content: str) -> None:
        """A text file (CSV, HTML), written when the set is committed."""
        self._texts.append((self.out / name, content))

    def __enter__(self) -> OutputSet:
        private_folder(self.out)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is not None:
            for file in self._files:
                file.discard()
            return
        for file in self._files:
            file.close()
        for file in self._files:
            file.commit()
        for path, item in self._documents:
            write_json(path, item)
        for path, content in self._texts:
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            tmp.write_text(content, encoding="utf-8")
            tmp.replace(path)


def write_json(path: Path, item: Any) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    write_private(tmp, orjson.dumps(item, option=orjson.OPT_INDENT_2) + b"\n")
    tmp.replace(path)
