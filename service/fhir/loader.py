"""Loading resources into a FHIR server in transaction Bundles (test data, synthetic hospitals,
Synthea populations).

Each resource is written with ``PUT [type]/[id]``, so loading the same files twice leaves the
server as it was. Every transaction is self-sufficient: each resource it references is either
written by an earlier transaction or in the same one, so a server that checks references on
write, or resolves them when it writes, accepts every bundle. A folder is read as a stream, in
three passes, and memory grows with what the references need (identifiers of conditionally
referenced resources, resources waiting for their targets), never with the folder:

1. survey: which resource types reference which (whatever the types), the conditional
   references (``Location?identifier=system|value``), how many resources;
2. targets: the id of each resource a conditional reference names by identifier, so the
   reference is written as the literal ``Location/<id>`` (a server resolves a conditional
   reference against what it already holds, never against the rest of its transaction); and,
   for types in a reference cycle (an Encounter ``partOf`` an Encounter), which of their
   resources other resources of the cycle reference;
3. load: types in an order where each comes after the types it references, ``per_bundle``
   resources a transaction; a resource of a cycle waits until what it references of the cycle
   is written or goes in the same transaction.
"""

from __future__ import annotations

import copy
import logging
import re
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qsl

import orjson

from service.errors import SourceError
from service.fhir.client import FhirClient, Json
from service.fhir.ids import is_fhir_id, is_resource_type
from service.ndjson_files import (
    LINE_TOO_LONG,
    MAX_LINE_BYTES,
    discover,
    numbered_lines,
    open_ndjson,
    too_long_message,
)

log = logging.getLogger(__name__)

# The resources of one type, read again at every call (a pass over the source).
Reader = Callable[[], Iterator[Json]]
Identifier = tuple[str, str, str]  # (resource type, identifier system, identifier value)


# --- sources ----------------------------------------------------------------------------------


@dataclass(frozen=True, order=True)
class SkippedLine:
    """A line ``prescreen load`` left out (a line too long to read): it never quotes it."""

    file: str
    line: int
    kind: str
    message: str


def folder_readers(
    folder: Path, max_line: int = MAX_LINE_BYTES, skipped: set[SkippedLine] | None = None
) -> dict[str, Reader]:
    """Per resource type (by file name), its files read line by line, in discovery order.
    A line longer than ``max_line`` is left out and added to ``skipped`` (at every pass)."""
    files: dict[str, list[Path]] = {}
    for file in discover(folder):
        files.setdefault(file.resource_type, []).append(file.path)

    def reader(paths: list[Path]) -> Reader:
        def read() -> Iterator[Json]:
            for path in paths:
                yield from _read_file(path, max_line, skipped)

        return read

    return {rtype: reader(paths) for rtype, paths in files.items()}


def _read_file(path: Path, max_line: int, skipped: set[SkippedLine] | None) -> Iterator[Json]:
    with open_ndjson(path) as handle:
        for number, raw in numbered_lines(handle, max_line):
            if raw is None:
                if skipped is not None:
                    message = too_long_message(max_line)
                    skipped.add(SkippedLine(path.name, number, LINE_TOO_LONG, message))
                continue
            if not raw.strip():
                continue
            try:
                resource = orjson.loads(raw)
            except orjson.JSONDecodeError as exc:
                raise SourceError(f"{path.name}:{number}: not valid JSON") from exc
            if not (
                isinstance(resource, dict)
                and isinstance(resource.get("resourceType"), str)
                and isinstance(resource.get("id"), str)
            ):
                raise SourceError(f"{path.name}:{number}: not a resource with a type and an id")
            problem = _url_problem(resource)
            if problem:
                raise SourceError(f"{path.name}:{number}: {problem}")
            yield resource


def _url_problem(resource: Json) -> str:
    """Why the resource's type and id cannot make its ``PUT [type]/[id]`` URL, or ''."""
    if not is_resource_type(resource.get("resourceType")):
        return "the resourceType is not a FHIR resource type name"
    if not is_fhir_id(resource.get("id")):
        return "the id is not a FHIR id (letters, digits, '-' and '.', at most 64)"
    return ""


def memory_readers(resources: Iterable[Json]) -> dict[str, Reader]:
    """Resources already in memory, grouped by type in the order they come."""
    by_type: dict[str, list[Json]] = {}
    for resource in resources:
        by_type.setdefault(str(resource.get("resourceType")), []).append(resource)

    def reader(items: list[Json]) -> Reader:
        return lambda: iter(items)

    return {rtype: reader(items) for rtype, items in by_type.items()}


def read_folder(folder: Path) -> Iterator[Json]:
    """Every resource of an NDJSON folder; an unreadable line is an error."""
    for read in folder_readers(folder).values():
        yield from read()


# --- references -------------------------------------------------------------------------------


# A Reference's ``reference`` in compact JSON (orjson writes no spaces): found in C, not by
# walking every element of every resource in Python.
_REFERENCE = re.compile(rb'"reference":"((?:[^"\\]|\\.)*)"')


def reference_strings(resource: Json) -> list[str]:
    """The ``reference`` of every Reference in a resource."""
    found = []
    for raw in _REFERENCE.findall(orjson.dumps(resource)):
        found.append(orjson.loads(b'"' + raw + b'"') if b"\\" in raw else raw.decode())
    return found


def reference_objects(value: object) -> Iterator[dict[str, object]]:
    """Every FHIR Reference in a resource (contained resources and extensions included)."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            if isinstance(item.get("reference"), str):
                yield item
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


def literal_target(reference: str) -> tuple[str, str] | None:
    """(type, id) of a relative literal reference ``Type/id[/_history/v]``; None otherwise
    (contained ``#id``, ``urn:`` and absolute URLs, conditional references)."""
    if "?" in reference or ":" in reference or reference.startswith("#"):
        return None
    parts = reference.split("/")
    if len(parts) in (2, 4) and parts[0][:1].isupper() and parts[1]:
        return parts[0], parts[1]
    return None


def conditional_target(reference: str) -> tuple[str, Identifier | None] | None:
    """(type, identifier) of a conditional reference ``Type?identifier=system|value``; the
    identifier is None for other searches, which only a server can resolve. None when the
    reference is not conditional."""
    rtype, mark, query = reference.partition("?")
    if not mark or not rtype[:1].isupper() or "/" in rtype or ":" in rtype:
        return None
    params = parse_qsl(query, keep_blank_values=True)
    if len(params) != 1 or params[0][0] != "identifier":
        return rtype, None
    system, bar, value = params[0][1].rpartition("|")
    return rtype, (rtype, system if bar else "", value)


def _identifiers(resource: Json) -> Iterator[tuple[str, str]]:
    for identifier in resource.get("identifier") or []:
        if isinstance(identifier, dict) and isinstance(identifier.get("value"), str):
            system = identifier.get("system")
            yield (system if isinstance(system, str) else "", identifier["value"])


# --- the plan ---------------------------------------------------------------------------------


@dataclass
class LoadPlan:
    """What the first two passes found out."""

    order: list[list[str]]  # groups of types, each after the types it references
    resources: int = 0
    conditional: frozenset[str] = frozenset()  # types with conditional references
    cyclic: dict[str, frozenset[str]] = field(default_factory=dict)  # type -> its cycle
    literal: dict[Identifier, str | None] = field(default_factory=dict)  # None: ambiguous
    awaited: set[str] = field(default_factory=set)  # Type/id referenced within a cycle


def plan_load(readers: Mapping[str, Reader]) -> LoadPlan:
    types = list(readers)
    references: dict[str, set[str]] = {rtype: set() for rtype in types}
    wanted: set[Identifier] = set()
    conditional_types: set[str] = set()
    resources = 0
    for rtype, read in readers.items():
        for resource in read():
            resources += 1
            for text in reference_strings(resource):
                literal = literal_target(text)
                conditional = None if literal else conditional_target(text)
                target = literal[0] if literal else conditional[0] if conditional else None
                if target is not None and target in references:
                    references[rtype].add(target)
                if conditional is not None and conditional[1] is not None:
                    wanted.add(conditional[1])
                    conditional_types.add(rtype)
    groups = _cycles_first_targets(types, references)
    plan = LoadPlan(groups, resources, conditional=frozenset(conditional_types))
    for group in groups:
        if len(group) > 1 or group[0] in references[group[0]]:
            for rtype in group:
                plan.cyclic[rtype] = frozenset(group)
    for target_type in sorted({identifier[0] for identifier in wanted} & set(readers)):
        for resource in readers[target_type]():
            literal_ref = f"{target_type}/{resource['id']}"
            for system, value in _identifiers(resource):
                # identifier=value (no system given) matches whatever the system.
                for key in {(target_type, system, value), (target_type, "", value)} & wanted:
                    known = plan.literal.setdefault(key, literal_ref)
                    if known != literal_ref:
                        plan.literal[key] = None  # two resources carry it: a server decides
    for rtype, cycle in plan.cyclic.items():
        for resource in readers[rtype]():
            for text in reference_strings(resource):
                within = _literal(text, plan)
                if within is not None and within[0] in cycle:
                    plan.awaited.add(f"{within[0]}/{within[1]}")
    return plan


def _literal(reference: str, plan: LoadPlan) -> tuple[str, str] | None:
    """The literal target of a reference, after rewriting a conditional one where known."""
    conditional = conditional_target(reference)
    if conditional is not None and conditional[1] is not None:
        rewritten = plan.literal.get(conditional[1])
        return literal_target(rewritten) if rewritten else None
    return literal_target(reference)


def _cycles_first_targets(types: list[str], references: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected groups of the reference graph (Tarjan), each group after every
    group it references; ties in the order the types came."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def connect(node: str) -> None:
        # Tarjan's algorithm emits a group only after every group it reaches: targets first.
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(references[node], key=types.index):
            if target not in index:
                connect(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            groups.append(sorted(group, key=types.index))

    for rtype in types:
        if rtype not in index:
            connect(rtype)
    return groups


# --- loading ----------------------------------------------------------------------------------


class _Transactions:
    """Collects resources into transactions of ``per_bundle`` and sends them in order."""

    def __init__(
        self, client: FhirClient, per_bundle: int, progress: Callable[[int], None] | None
    ) -> None:
        self.client = client
        self.per_bundle = per_bundle
        self.progress = progress
        self.batch: list[Json] = []
        self.in_batch: set[str] = set()  # awaited references the batch writes
        self.written_awaited: set[str] = set()
        self.written = 0

    def has(self, reference: str) -> bool:
        return reference in self.written_awaited or reference in self.in_batch

    async def add(self, resource: Json, awaited: bool) -> None:
        self.batch.append(resource)
        if awaited:
            self.in_batch.add(f"{resource['resourceType']}/{resource['id']}")
        if len(self.batch) >= self.per_bundle:
            await self.flush()

    async def add_together(self, resources: list[Json]) -> None:
        """Resources that must share a transaction, however many they are."""
        self.batch.extend(resources)
        if len(self.batch) >= self.per_bundle:
            await self.flush()

    async def flush(self) -> None:
        if not self.batch:
            return
        for resource in self.batch:
            problem = _url_problem(resource)  # resources handed in memory are checked here
            if problem:
                raise SourceError(f"a resource cannot be loaded: {problem}")
        entries = [
            {
                "resource": r,
                "request": {"method": "PUT", "url": f"{r['resourceType']}/{r['id']}"},
            }
            for r in self.batch
        ]
        await self.client.bundle("transaction", entries)
        self.written += len(self.batch)
        self.written_awaited |= self.in_batch
        self.batch, self.in_batch = [], set()
        if self.progress is not None:
            self.progress(self.written)


async def load_readers(
    client: FhirClient,
    readers: Mapping[str, Reader],
    *,
    plan: LoadPlan | None = None,
    per_bundle: int = 200,
    progress: Callable[[int], None] | None = None,
) -> int:
    """Write every resource (see the module's docstring); returns how many were written."""
    plan = plan or plan_load(readers)
    sending = _Transactions(client, per_bundle, progress)
    for group in plan.order:
        cycle = plan.cyclic.get(group[0])
        gate = _CycleGate(cycle, plan, sending) if cycle else None
        for rtype in group:
            for resource in readers[rtype]():
                if rtype in plan.conditional:
                    resource = _rewritten(resource, plan)
                if gate is None:
                    await sending.add(resource, False)
                else:
                    await gate.place(resource)
        if gate is not None:
            await gate.finish()
    await sending.flush()
    return sending.written


class _CycleGate:
    """The resources of one reference cycle, each held until what it references of the cycle
    is written or in the transaction being filled."""

    def __init__(self, cycle: frozenset[str], plan: LoadPlan, sending: _Transactions) -> None:
        self.cycle = cycle
        self.plan = plan
        self.sending = sending
        self.waiting: dict[str, list[Json]] = {}  # a referenced resource -> who waits for it
        self.absent: set[str] = set()  # referenced, but not in the source

    async def place(self, resource: Json) -> None:
        ready = deque([resource])
        while ready:
            item = ready.popleft()
            missing = self._missing(item)
            if missing is not None:
                self.waiting.setdefault(missing, []).append(item)
                continue
            ref = f"{item['resourceType']}/{item['id']}"
            await self.sending.add(item, ref in self.plan.awaited)
            ready.extend(self.waiting.pop(ref, []))

    def _missing(self, resource: Json) -> str | None:
        """A resource of the cycle this one references that is not written yet, if any."""
        own = f"{resource['resourceType']}/{resource['id']}"
        for reference in reference_strings(resource):
            target = literal_target(reference)
            if target is None or target[0] not in self.cycle:
                continue
            wanted = f"{target[0]}/{target[1]}"
            if (
                wanted != own
                and wanted in self.plan.awaited
                and wanted not in self.absent
                and not self.sending.has(wanted)
            ):
                return wanted
        return None

    async def finish(self) -> None:
        """The cycle's files are read: what is still waiting waits for resources that are not
        in the source (written now, their targets cannot be), or for each other."""
        while self.waiting:
            held = {f"{r['resourceType']}/{r['id']}" for w in self.waiting.values() for r in w}
            absent = [ref for ref in self.waiting if ref not in held]
            if absent:
                self.absent.update(absent)
                log.warning(
                    "%d resource(s) reference resources missing from the source",
                    sum(len(self.waiting[ref]) for ref in absent),
                )
                for ref in absent:
                    for resource in self.waiting.pop(ref):
                        await self.place(resource)
                continue
            # Resources that reference each other in a loop: one transaction takes them all.
            left = [resource for waiters in self.waiting.values() for resource in waiters]
            self.waiting = {}
            await self.sending.add_together(left)


def _rewritten(resource: Json, plan: LoadPlan) -> Json:
    """The resource with each conditional reference whose target is known made literal (a
    copy: a caller's resources are left as they are)."""

    def known(reference: dict[str, object]) -> str | None:
        conditional = conditional_target(str(reference["reference"]))
        if conditional is None or conditional[1] is None:
            return None
        return plan.literal.get(conditional[1])

    if not any(known({"reference": text}) for text in reference_strings(resource)):
        return resource
    rewritten = copy.deepcopy(resource)
    for reference in reference_objects(rewritten):
        literal = known(reference)
        if literal:
            reference["reference"] = literal
    return rewritten


async def load_resources(
    client: FhirClient,
    resources: Iterable[Json],
    *,
    per_bundle: int = 200,
    progress: Callable[[int], None] | None = None,
) -> int:
    """PUT resources held in memory, ``per_bundle`` to a transaction; returns how many."""
    return await load_readers(
        client, memory_readers(resources), per_bundle=per_bundle, progress=progress
    )
