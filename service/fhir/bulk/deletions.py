"""Deletions an incremental (``_since``) export lists (Bulk Data 2.0, the manifest's
``deleted``): each file holds Bundles whose entries say ``DELETE Type/id``.

The folder keeps the full export and every incremental one after it; a resource an incremental
export lists as deleted is removed from the files of the exports before it (and from its own:
a server listing a resource both ways is taken at its word that it is gone), so every reader of
the folder (one process, several, Spark, ``prescreen screen --source``) sees the server's
current records. A deleted Patient's own record stays, and the job lists its id: the screening
treats it as a patient not to screen (its records stay unscreened, never orphans). Each file is
rewritten beside itself and swapped in whole, so a run stopped midway leaves every file whole;
removing what is already gone changes nothing, so the next run simply applies them again.
"""

from __future__ import annotations

import contextlib
import gzip
import os
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import orjson

from service.errors import SourceError
from service.fhir.bulk.job import ExportFile, ExportJob, ExportState
from service.fhir.ids import is_fhir_id, is_resource_type
from service.ndjson_files import open_ndjson


def deleted_references(folder: Path, job: ExportJob) -> set[str]:
    """``Type/id`` of every resource the job's deleted files list."""
    found: set[str] = set()
    for file in job.files:
        if file.kind != "deleted" or not file.done:
            continue
        with open_ndjson(folder / file.name) as handle:
            for number, line in enumerate(handle, 1):
                if line.strip():
                    found.update(_deletions(line, file, number))
    return found


def _deletions(line: bytes, file: ExportFile, number: int) -> Iterator[str]:
    try:
        bundle = orjson.loads(line)
    except orjson.JSONDecodeError:
        bundle = None
    entries = bundle.get("entry") if isinstance(bundle, dict) else None
    if not isinstance(entries, list):
        raise _unreadable(file, number)
    for entry in entries:
        request = entry.get("request") if isinstance(entry, dict) else None
        url = request.get("url") if isinstance(request, dict) else None
        method = request.get("method") if isinstance(request, dict) else None
        rtype, _, rid = url.partition("/") if isinstance(url, str) else ("", "", "")
        if method != "DELETE" or not is_resource_type(rtype) or not is_fhir_id(rid):
            raise _unreadable(file, number)
        yield f"{rtype}/{rid}"


def _unreadable(file: ExportFile, number: int) -> SourceError:
    # A deletion missed would leave a record the server no longer has: the screening would
    # judge patients on it. Nothing is screened instead.
    return SourceError(
        f"line {number} of the export's deletion list {file.name} is not a Bundle of DELETE "
        "entries (Type/id): the deletions cannot be applied"
    )


def apply_deletions(state: ExportState, job: ExportJob) -> int:
    """Remove the job's deleted resources from the files of the exports before it (and from
    its own); returns how many lines were removed. Patients it recreates are no longer listed
    as deleted by the exports before it."""
    folder = state.folder
    deleted = deleted_references(folder, job)
    earlier = state.jobs[: state.jobs.index(job)]
    removed = 0
    if deleted:
        by_type: dict[str, set[str]] = {}
        for ref in deleted:
            rtype, _, rid = ref.partition("/")
            by_type.setdefault(rtype, set()).add(rid)
        # The job's own files too: the IG lists as deleted what "would have been returned"
        # but is gone at the export's time, so a copy in its own output is stale as well.
        for other in [*earlier, job]:
            for file in other.files:
                if file.done and file.kind in ("output", "referenced") and file.type in by_type:
                    if file.type == "Patient":
                        continue  # kept: the screening reports the patient as not screened
                    removed += _rewrite(folder / file.name, by_type[file.type])
                    file.bytes = (folder / file.name).stat().st_size
        job.deleted_patients = sorted(by_type.get("Patient", set()))
    if any(other.deleted_patients for other in earlier):
        recreated = _patients_in(folder, job)
        for other in earlier:
            other.deleted_patients = [p for p in other.deleted_patients if p not in recreated]
    job.deletions_done = True
    state.save()
    return removed


def _rewrite(path: Path, ids: set[str]) -> int:
    """The file without the lines of these ids (of its type); returns how many were removed."""
    needles = [f'"{rid}"'.encode() for rid in ids]
    kept = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    removed = 0
    target: IO[bytes]
    try:
        with (
            open_ndjson(path) as source,
            _create(kept, gzipped=path.name.endswith(".gz")) as target,
        ):
            for line in source:
                if any(needle in line for needle in needles) and _id_of(line) in ids:
                    removed += 1
                    continue
                target.write(line)
        if removed:
            kept.replace(path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            kept.unlink()
    return removed


def _create(path: Path, *, gzipped: bool) -> IO[bytes]:
    return gzip.open(path, "wb") if gzipped else path.open("wb")  # type: ignore[return-value]


def _id_of(line: bytes) -> str | None:
    try:
        resource = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None  # the screening reports the line
    found = resource.get("id") if isinstance(resource, dict) else None
    return found if isinstance(found, str) else None


def _patients_in(folder: Path, job: ExportJob) -> set[str]:
    found: set[str] = set()
    for file in job.files:
        if file.done and file.kind == "output" and file.type == "Patient":
            with open_ndjson(folder / file.name) as handle:
                found.update(rid for line in handle if (rid := _id_of(line)) is not None)
    return found
