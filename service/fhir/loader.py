"""Loading resources into a FHIR server in transaction Bundles (test data, synthetic hospitals).

Each resource is written with ``PUT [type]/[id]``, so loading the same files twice leaves the
server as it was, and references between resources keep working.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import orjson

from service.errors import SourceError
from service.fhir.client import FhirClient, Json
from service.ndjson_files import discover, open_ndjson

# Referenced resources first, so servers that check references on write accept every bundle.
LOAD_ORDER = ["Patient", "Practitioner", "Organization", "Encounter", "Condition"]


def _rank(resource: Json) -> int:
    rtype = str(resource.get("resourceType"))
    return LOAD_ORDER.index(rtype) if rtype in LOAD_ORDER else len(LOAD_ORDER)


def read_folder(folder: Path) -> Iterator[Json]:
    """Every resource of an NDJSON folder, Patients first; unreadable lines are an error."""
    files = sorted(discover(folder), key=lambda f: _rank({"resourceType": f.resource_type}))
    for file in files:
        with open_ndjson(file.path) as handle:
            for number, raw in enumerate(handle, 1):
                if not raw.strip():
                    continue
                try:
                    yield orjson.loads(raw)
                except orjson.JSONDecodeError as exc:
                    raise SourceError(f"{file.path.name}:{number}: not valid JSON") from exc


async def load_resources(
    client: FhirClient,
    resources: Iterable[Json],
    *,
    per_bundle: int = 200,
    progress: Callable[[int], None] | None = None,
) -> int:
    """PUT every resource, ``per_bundle`` to a transaction; returns how many were written."""
    written = 0
    batch: list[Json] = []

    async def flush() -> None:
        nonlocal written
        if not batch:
            return
        entries = [
            {
                "resource": r,
                "request": {"method": "PUT", "url": f"{r['resourceType']}/{r['id']}"},
            }
            for r in batch
        ]
        await client.bundle("transaction", entries)
        written += len(batch)
        batch.clear()
        if progress is not None:
            progress(written)

    for resource in sorted(resources, key=_rank):
        batch.append(resource)
        if len(batch) >= per_bundle:
            await flush()
    await flush()
    return written
