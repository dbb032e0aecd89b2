"""Resources the exported ones reference and the mappings follow, read by id.

A mapping may follow a reference (``medicationReference.resolve()``) to a type outside the
Patient compartment (Medication); a patient- or group-level export does not carry those. As a
live run does, prescreen reads the ones the files name, by ``_id`` in short lists, and writes
them beside the export's files as ``<Type>.<n>.ndjson``; what cannot be found stays
unresolved and is reported by the screening as ``unresolved-reference``. A server that refuses
the search loses the type for the export (the records naming one stay undecided).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import orjson

from service.errors import FhirServerError
from service.fhir.bulk.job import ExportFile, ExportJob, ExportState
from service.fhir.bulk.plan import referenced_types
from service.fhir.client import FhirClient
from service.fhir.ids import is_fhir_id
from service.fhir.retrieval import SEARCH_REFUSED, chunked
from service.mapping.mapper import Mapper
from service.ndjson_files import MAX_LINE_BYTES, numbered_lines, open_ndjson
from service.private_files import write_private


def _ids_in(path: Path, max_line: int) -> set[str]:
    found: set[str] = set()
    with open_ndjson(path) as handle:
        for _, line in numbered_lines(handle, max_line):
            if line is None:
                continue  # too long to read: the screening reports it
            try:
                resource = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue
            if isinstance(resource, dict) and isinstance(resource.get("id"), str):
                found.add(resource["id"])
    return found


def wanted_references(
    folder: Path,
    state: ExportState,
    job: ExportJob,
    mappers: list[Mapper],
    max_line: int = MAX_LINE_BYTES,
) -> dict[str, set[str]]:
    """``{type: ids}`` the job's files reference (through the mappings' ``resolve``) and that
    no file in the folder holds yet."""
    targets = referenced_types(mappers)
    # Only lines naming a followed element are parsed: a cheap test on the raw bytes.
    needles: dict[str, set[bytes]] = {}
    for mapper in mappers:
        for rtype, sources in mapper.sources.items():
            for source in sources:
                for element, target in source.resolve:
                    if target in targets:
                        needles.setdefault(rtype, set()).add(f'"{element}"'.encode())
    have: dict[str, set[str]] = {}
    for other in state.jobs:
        for file in other.files:
            if file.done and file.kind != "error" and file.type in targets:
                have.setdefault(file.type, set()).update(_ids_in(folder / file.name, max_line))
    wanted: dict[str, set[str]] = {}
    for file in job.files:
        if not (file.done and file.kind == "output" and file.type in needles):
            continue
        with open_ndjson(folder / file.name) as handle:
            for _, line in numbered_lines(handle, max_line):
                if line is None or not any(needle in line for needle in needles[file.type]):
                    continue
                try:
                    resource = orjson.loads(line)
                except orjson.JSONDecodeError:
                    continue  # the screening reports the line
                if not isinstance(resource, dict):
                    continue
                for mapper in mappers:
                    for reference in mapper.references_to_resolve(resource):
                        rtype, rid = reference.split("/", 1)
                        if rtype in targets and is_fhir_id(rid) and rid not in have.get(rtype, ()):
                            wanted.setdefault(rtype, set()).add(rid)
    return wanted


async def fetch_references(
    client: FhirClient,
    state: ExportState,
    job: ExportJob,
    mappers: Iterable[Mapper],
    *,
    ids_per_request: int,
    page_size: int,
    max_line: int = MAX_LINE_BYTES,
) -> int:
    """Read the referenced resources missing from the folder; returns how many were found."""
    mappers = list(mappers)
    folder = state.folder
    found = 0
    wanted = wanted_references(folder, state, job, mappers, max_line)
    for rtype, ids in sorted(wanted.items()):
        lines: list[bytes] = []
        try:
            for chunk in chunked(sorted(ids), ids_per_request):
                params = [("_id", ",".join(chunk)), ("_count", str(page_size))]
                async for resource in client.search(rtype, params):
                    if resource.get("resourceType") == rtype:
                        lines.append(orjson.dumps(resource))
        except FhirServerError as exc:
            if exc.status not in SEARCH_REFUSED:
                raise
            # A server without that search (the SMART reference server has no REST search):
            # a lost source; each record naming one stays unresolved, never decides by absence.
            job.lost.setdefault(rtype, f"the server refused its search (HTTP {exc.status})")
            lines = []
        if not lines:
            continue
        file = ExportFile("referenced", rtype, state.next_index(rtype, "referenced"))
        part = folder / file.part_name
        write_private(part, b"\n".join(lines) + b"\n")
        part.replace(folder / file.name)
        file.done, file.count, file.bytes = True, len(lines), (folder / file.name).stat().st_size
        job.files.append(file)
        found += len(lines)
    job.referenced_done = True
    state.save()
    return found
