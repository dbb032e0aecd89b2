"""What a Bulk Data ``$export`` asks for: the level, ``_type``, ``_typeFilter`` and ``_since``.

Everything comes from the mappings, like the searches of a live run (``search:`` on a filter):
``_type`` is Patient and every resource type a mapping has a source for, and ``_typeFilter``
carries their code and status filters so only what the rules need travels. prescreen applies
every filter again when it reads the files, so a server that ignores ``_typeFilter`` only sends
more; what must never happen is a server sending *less* than the rules need. Hence:

- one ``_typeFilter`` per resource type, never several: the Bulk Data IG ORs several filters of
  a type, but a server that ANDs them (sekmet-fhir 0.1.1 does) would drop records. The single
  filter is a superset of what every source of the type reads: a parameter every source filters
  on, with the union of their values;
- a code list longer than a few search chunks is not sent (as in live searches): the type's
  filter keeps its other parameters;
- a ``_since`` export carries no ``_typeFilter``: a resource changed so that it no longer
  matches (a Condition now entered-in-error) must still arrive to replace its older copy;
- types reached only through ``resolve()`` (a Medication a MedicationRequest names) are not
  asked for: they are outside the Patient compartment, so a patient- or group-level export
  cannot carry them; prescreen reads the ones the files reference by id.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urlencode

from service.errors import FhirServerError, PrescreenError
from service.fhir.client import FhirClient, Json
from service.fhir.ids import is_fhir_id, is_resource_type
from service.mapping.mapper import Mapper

ExportLevel = Literal["system", "patient", "group"]
TypeFilterMode = Literal["auto", "always", "never"]
NDJSON = "application/fhir+ndjson"
# The Bulk Data IG's own OperationDefinitions (v1 and v2) list _typeFilter among their parameters.
BULK_IG_DEFINITIONS = "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/"
# A FHIR instant: the Bulk Data IG requires one for _since (a time zone is mandatory).
# The longest _typeFilter part of a kick-off URL: with the rest it stays well under the 8 kB
# request line many servers and proxies accept.
MAX_FILTER_LENGTH = 6000
_INSTANT = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?(Z|[+-]\d{2}:\d{2})")


@dataclass(frozen=True)
class ExportRequest:
    """One ``$export`` kick-off, as data (persisted with the job to recognise it on a restart)."""

    level: ExportLevel
    group_id: str | None = None
    types: tuple[str, ...] = ()  # empty: whatever the server exports at that level
    type_filters: tuple[str, ...] = ()
    since: str | None = None

    def __post_init__(self) -> None:
        if (self.level == "group") != (self.group_id is not None):
            raise PrescreenError("a group-level export needs a group id, and only it takes one")
        if self.group_id is not None and not is_fhir_id(self.group_id):
            raise PrescreenError("--group must be a FHIR id (letters, digits, '-' and '.')")
        if self.since is not None and not _INSTANT.fullmatch(self.since):
            raise PrescreenError(
                "--since must be a FHIR instant with a time zone, e.g. 2026-06-01T00:00:00Z"
            )

    @property
    def path(self) -> str:
        if self.level == "group":
            return f"Group/{self.group_id}/$export"
        return "Patient/$export" if self.level == "patient" else "$export"

    def params(self) -> list[tuple[str, str]]:
        params = [("_outputFormat", NDJSON)]
        if self.types:
            params.append(("_type", ",".join(self.types)))
        params += [("_typeFilter", query) for query in self.type_filters]
        if self.since is not None:
            params.append(("_since", self.since))
        return params

    def without_type_filters(self) -> ExportRequest:
        return ExportRequest(self.level, self.group_id, self.types, (), self.since)

    def without_types(self, dropped: Iterable[str]) -> ExportRequest:
        """The same request without these types (and their filters)."""
        gone = set(dropped)
        return ExportRequest(
            self.level,
            self.group_id,
            tuple(t for t in self.types if t not in gone),
            tuple(f for f in self.type_filters if f.split("?", 1)[0] not in gone),
            self.since,
        )

    def parameters(self) -> Json:
        """The kick-off as a Parameters resource, for a server that takes only POST (Bulk Data
        2.0): one parameter per type and per filter."""
        parameter: list[Json] = [{"name": "_outputFormat", "valueString": NDJSON}]
        parameter += [{"name": "_type", "valueString": rtype} for rtype in self.types]
        parameter += [{"name": "_typeFilter", "valueString": query} for query in self.type_filters]
        if self.since is not None:
            parameter.append({"name": "_since", "valueInstant": self.since})
        return {"resourceType": "Parameters", "parameter": parameter}

    def as_json(self) -> Json:
        return {
            "level": self.level,
            "group_id": self.group_id,
            "types": list(self.types),
            "type_filters": list(self.type_filters),
            "since": self.since,
        }

    @classmethod
    def from_json(cls, data: Json) -> ExportRequest:
        return cls(
            data["level"],
            data.get("group_id"),
            tuple(data.get("types") or ()),
            tuple(data.get("type_filters") or ()),
            data.get("since"),
        )


def export_types(mappers: Iterable[Mapper]) -> tuple[str, ...]:
    """Patient and every type a mapping has a source for (``resolve()`` targets excluded)."""
    return tuple(sorted({"Patient", *(t for m in mappers for t in m.sources)}))


def referenced_types(mappers: Iterable[Mapper]) -> frozenset[str]:
    """Types read only through references (fetched by id after the export)."""
    mappers = list(mappers)
    sourced = {t for m in mappers for t in m.sources}
    return frozenset(t for m in mappers for t in m.join_targets if t not in sourced)


Clauses = dict[str, list[tuple[str, list[str]]]]  # type -> [(search parameter, values)]


def filter_clauses(mappers: Iterable[Mapper], max_tokens: int) -> Clauses:
    """Per resource type whose every source filters: the parameters *every* source filters on
    (any source without one would need records the filter drops), each with the union of the
    sources' values; a parameter with more than ``max_tokens`` values is left out."""
    by_type: dict[str, list[dict[str, tuple[str, ...]]]] = {}
    for mapper in mappers:
        for rtype, sources in mapper.sources.items():
            for source in sources:
                by_type.setdefault(rtype, []).append(dict(source.server_filters))
    clauses: Clauses = {}
    for rtype, filters in sorted(by_type.items()):
        shared = set.intersection(*(set(f) for f in filters))
        for param in sorted(shared):
            tokens = sorted({token for f in filters for token in f[param]})
            if 0 < len(tokens) <= max_tokens:
                clauses.setdefault(rtype, []).append((param, tokens))
    return clauses


def filter_queries(clauses: Clauses) -> tuple[str, ...]:
    """``Type?param=a,b&...`` per type. The values are encoded as in any search query, except
    the characters a token needs (``:/|``); a comma between values is encoded, so it never reads
    as the separator between two filters (the HTTP layer encodes the whole query again)."""
    return tuple(
        f"{rtype}?{urlencode([(p, ','.join(v)) for p, v in params], safe=':/|')}"
        for rtype, params in sorted(clauses.items())
        if params
    )


def type_filters(
    mappers: Iterable[Mapper], max_tokens: int, max_length: int = MAX_FILTER_LENGTH
) -> tuple[str, ...]:
    """The ``_typeFilter`` queries for these mappings, at most ``max_length`` characters in
    all (as sent): while longer, the longest value list is left out (a kick-off is a GET, and
    servers refuse long request lines)."""
    clauses = filter_clauses(mappers, max_tokens)
    while True:
        queries = filter_queries(clauses)
        if len(urlencode([("_typeFilter", q) for q in queries])) <= max_length:
            return queries
        rtype, index = max(
            ((t, i) for t, params in clauses.items() for i in range(len(params))),
            key=lambda at: len(",".join(clauses[at[0]][at[1]][1])),
        )
        del clauses[rtype][index]


def plan_export(
    mappers: Iterable[Mapper],
    *,
    level: ExportLevel,
    group_id: str | None,
    since: str | None,
    filter_types: bool,
    max_tokens: int,
) -> ExportRequest:
    """The kick-off for these trials' mappings (no mapping: everything the server exports)."""
    mappers = list(mappers)
    if not mappers:
        return ExportRequest(level, group_id, (), (), since)
    filters = type_filters(mappers, max_tokens) if filter_types and since is None else ()
    return ExportRequest(level, group_id, export_types(mappers), filters, since)


# --- does the server take _typeFilter? ---------------------------------------------------------


def export_definitions(statement: Json) -> list[str]:
    """Canonical URLs of the ``export`` operations a CapabilityStatement declares."""
    found: list[str] = []
    for rest in statement.get("rest") or []:
        if not isinstance(rest, dict):
            continue
        operations: list[Any] = list(rest.get("operation") or [])
        for resource in rest.get("resource") or []:
            if isinstance(resource, dict):
                operations += resource.get("operation") or []
        for operation in operations:
            if not isinstance(operation, dict):
                continue
            name = str(operation.get("name", "")).lstrip("$")
            definition = operation.get("definition")
            if name in {"export", "patient-export", "group-export"} and isinstance(definition, str):
                found.append(definition)
    return list(dict.fromkeys(found))


def lists_type_filter(definition: Json) -> bool:
    return definition.get("resourceType") == "OperationDefinition" and any(
        isinstance(p, dict) and p.get("name") == "_typeFilter" and p.get("use", "in") == "in"
        for p in definition.get("parameter") or []
    )


async def _operation_definition(client: FhirClient, canonical: str) -> Json | None:
    """The OperationDefinition behind a canonical, read from the server; None if it has none."""
    canonical = canonical.split("|", 1)[0]
    try:
        if canonical.startswith(client.base_url) or canonical.startswith("OperationDefinition/"):
            return await client.get(client.url(canonical, link=True), kind="metadata")
        bundle = await client.get("OperationDefinition", [("url", canonical)], kind="metadata")
    except FhirServerError:
        return None
    for entry in bundle.get("entry") or []:
        resource = entry.get("resource") if isinstance(entry, dict) else None
        if isinstance(resource, dict) and resource.get("resourceType") == "OperationDefinition":
            return resource
    return None


async def type_filter_support(client: FhirClient) -> tuple[bool, str]:
    """Whether the server's CapabilityStatement (or the OperationDefinition it points to)
    declares ``_typeFilter`` on ``$export``, and a short reason for the run's report."""
    try:
        statement = await client.capabilities()
    except FhirServerError:
        return False, "the CapabilityStatement could not be read"
    definitions = export_definitions(statement)
    if not definitions:
        return False, "the CapabilityStatement declares no $export operation"
    for canonical in definitions:
        if canonical.startswith(BULK_IG_DEFINITIONS):
            return True, "$export is declared as the Bulk Data IG's operation"
        definition = await _operation_definition(client, canonical)
        if definition is not None and lists_type_filter(definition):
            return True, "the $export OperationDefinition lists _typeFilter"
    return False, "no $export OperationDefinition the server serves lists _typeFilter"


def valid_output_type(value: object) -> bool:
    """A manifest's ``type``: it names a file, so it must look like a resource type."""
    return is_resource_type(value)


def declared_types(statement: Json) -> frozenset[str]:
    """Resource types a CapabilityStatement lists (a hint: servers under-declare)."""
    return frozenset(
        str(resource["type"])
        for rest in statement.get("rest") or []
        if isinstance(rest, dict)
        for resource in rest.get("resource") or []
        if isinstance(resource, dict) and isinstance(resource.get("type"), str)
    )


def named_types(text: str, types: Iterable[str]) -> list[str]:
    """The types a server's message names (an OperationOutcome refusing a kick-off)."""
    return [rtype for rtype in types if re.search(rf"\b{re.escape(rtype)}\b", text)]
