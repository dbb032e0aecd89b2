"""Bulk-Data NDJSON files in a folder: which there are, of which resource type, and opening them.

``<ResourceType>.ndjson`` and ``<ResourceType>.<n>.ndjson``, optionally gzipped, as a Bulk Data
``$export`` writes them.
"""

from __future__ import annotations

import gzip
import re
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from service.errors import SourceError

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
