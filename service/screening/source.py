"""Reading Bulk-Data NDJSON folders: only what the mapping needs is parsed in full.

Lines of resource types the mapping does not read are counted and skipped without parsing.
Lines of wanted types that mention none of the mapping's codes are skipped after a cheap shape
check (an Observation of blood pressure cannot be a pain score). Everything else is parsed with
orjson and handed to the mapper. Bad lines are reported with file and line and never stop a run.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import date
from functools import lru_cache
from typing import Any

import orjson

from service.mapping.mapper import Mapper, Record
from service.mapping.resources import UnattributableResourceError, version_of
from service.ruleset.gaps import GAPS, lost_phrase, unreadable_phrase

NOT_SCREENED = "not-screened"  # the issue kind of a patient the mapping says not to screen
SOURCE_UNAVAILABLE = "source-unavailable"  # the issue kind of a resource type the run lost
DELETED_PATIENT = "the patient record was deleted on the server (an incremental export lists it)"


@dataclass(frozen=True)
class SourceNotes:
    """What a source says about its own completeness, beside its records.

    ``lost``: resource types the run could not read, with why (the server refused them, the
    export lost their files, a scope was not granted): every fact they feed may be missing
    records, for every patient. ``deleted_patients``: Patients an incremental Bulk export
    lists as deleted, not screened. An NDJSON folder has none unless a Bulk export wrote
    them into it (service/fhir/bulk/job.py).
    """

    lost: dict[str, str] = field(default_factory=dict)
    deleted_patients: frozenset[str] = frozenset()

    def __bool__(self) -> bool:
        return bool(self.lost or self.deleted_patients)


NO_NOTES = SourceNotes()


@lru_cache(maxsize=512)
def is_fhir_resource_type(name: str) -> bool:
    """A resource type of FHIR R4 (the R4B models have the same set for our purposes)."""
    from fhir.resources.R4B import get_fhir_model_class
    from fhir.resources.R4B.resource import Resource

    try:
        return issubclass(get_fhir_model_class(name), Resource)
    except ValueError:
        return False


@dataclass(frozen=True, slots=True)
class InputIssue:
    """A problem with one line of input. It never quotes the line: that could be PHI."""

    file: str
    line: int
    kind: str
    message: str

    def as_json(self) -> dict[str, Any]:
        return {"file": self.file, "line": self.line, "kind": self.kind, "message": self.message}


@dataclass
class IssueLog:
    """Counts issues by kind, keeps the first few for the console, streams all to a sink."""

    sink: Callable[[InputIssue], None] | None = None
    keep: int = 20
    counts: Counter[str] = field(default_factory=Counter)
    first: list[InputIssue] = field(default_factory=list)

    def add(self, issue: InputIssue) -> None:
        self.counts[issue.kind] += 1
        if len(self.first) < self.keep:
            self.first.append(issue)
        if self.sink is not None:
            self.sink(issue)

    @property
    def total(self) -> int:
        return sum(self.counts.values())


@dataclass
class ReadStats:
    files: int = 0
    lines: int = 0
    parsed: int = 0
    skipped_type: int = 0
    skipped_prefilter: int = 0
    records: int = 0


# One copy of a resource as read: (meta.versionId, meta.lastUpdated as UTC, read order, payload).
# The payload is the Patient's values (with why it is not screened) or the fact records.
Copy = tuple[str | None, str | None, int, Any]
Copies = Copy | list[Copy]  # a list only once a second copy of the resource turns up


def add_copy(existing: Copies | None, copy: Copy) -> Copies:
    if existing is None:
        return copy
    if isinstance(existing, list):
        existing.append(copy)
        return existing
    return [existing, copy]


def current_copy(copies: Copies) -> Copy:
    """The copy that is the record (spec: several records of one resource).

    The highest ``meta.versionId`` (as integers when every copy's is one, else as text), then
    the latest ``meta.lastUpdated``, then the copy read last.
    """
    if not isinstance(copies, list):
        return copies
    versions = [c[0] for c in copies if c[0] is not None]
    numeric = all(v.isdecimal() for v in versions)  # isdigit() admits "²", which int() refuses

    def rank(copy: Copy) -> tuple[Any, ...]:
        version, updated, order, _ = copy
        if version is not None:
            return (2, int(version) if numeric else version, "", order)
        if updated is not None:
            return (1, 0 if numeric else "", updated, order)
        return (0, 0 if numeric else "", "", order)

    return max(copies, key=rank)


class PatientData:
    """What the mapper kept for one patient: copies of the Patient and of each fact resource.

    Kept for every patient until the whole input is read, so it is kept small: the Patient
    record as a tuple of its values (keys in schema order), one copy per resource unless a
    resource turns up more than once.
    """

    __slots__ = ("patient_copies", "resources")

    def __init__(self) -> None:
        self.patient_copies: Copies | None = None
        self.resources: dict[str, Copies] | None = None

    @property
    def patient(self) -> tuple[Any, ...] | None:
        """The current Patient record's values, or None (no Patient, or not to be screened)."""
        if self.patient_copies is None:
            return None
        values, skip, _ = current_copy(self.patient_copies)[3]
        return None if skip else values

    @property
    def not_screened(self) -> tuple[str, str] | None:
        """(reason, where the Patient was read) when the current Patient is not to be screened."""
        if self.patient_copies is None:
            return None
        _, skip, where = current_copy(self.patient_copies)[3]
        return (skip, where) if skip else None

    def facts(self) -> dict[str, list[Record]]:
        """The current copy's records of every resource, by fact."""
        return self.records()[0]

    def records(self) -> tuple[dict[str, list[Record]], dict[str, set[str]]]:
        """The current copy's records of every resource, by fact; and the facts some current
        resource may be a record of but could not be read as one (a None record), with the
        resource types of those resources."""
        by_fact: dict[str, list[Record]] = {}
        unreadable: dict[str, set[str]] = {}
        for ref, copies in (self.resources or {}).items():
            for fact, record in current_copy(copies)[3]:
                if record is not None:
                    by_fact.setdefault(fact, []).append(record)
                else:
                    unreadable.setdefault(fact, set()).add(ref.partition("/")[0])
        return by_fact, unreadable


def _may_count(pattern: re.Pattern[bytes], resource: dict[str, Any]) -> bool:
    """Whether the resource, as an NDJSON line, holds one of the codes of ``pattern``; one
    that cannot be written as a line is looked at whole."""
    try:
        return pattern.search(orjson.dumps(resource)) is not None
    except (orjson.JSONEncodeError, TypeError):
        return True


class Collector:
    """Feeds parsed resources through the mapper and groups the records by patient."""

    def __init__(
        self, mapper: Mapper, as_of: date, issues: IssueLog, notes: SourceNotes = NO_NOTES
    ) -> None:
        self.mapper = mapper
        self.as_of = as_of
        self.issues = issues
        self.notes = notes
        self._lost_facts: dict[str, str] = {}
        self.note_lost(notes.lost)
        self.patients: dict[str, PatientData] = {}
        self.targets: dict[str, Copies] = {}  # resolve() targets by reference
        one_fact = next(schema for schema in mapper.facts.values() if schema.one)
        self._patient_keys = ("ref", *one_fact.defaults)
        self.stats = ReadStats()
        self._order = 0
        # Set by a parallel reading: called before a new patient is added once ``spill_at``
        # patients are held, to move them out of memory (workers.py).
        self.spill: Callable[[], None] | None = None
        self.spill_at = 0

    def _sourced_facts(self, resource_type: str) -> set[str]:
        # A patient screened has its Patient record: lost Patient records cost other patients
        # (not screened, their records counted as without a Patient), not this one's facts.
        return {
            source.fact
            for source in self.mapper.sources.get(resource_type, ())
            if not self.mapper.facts[source.fact].one
        }

    def note_lost(self, lost: dict[str, str]) -> None:
        """Resource types the run could not read (also learnt while reading, as a live fetch
        learns them): every fact they feed may be missing records, for every patient. A lost
        type only reached through resolve() (Medication) is left out: each record whose
        reference stays unresolved makes its own patient's fact undecided."""
        if not lost:
            return
        merged = {**self.notes.lost, **lost}
        self.notes = SourceNotes(lost=merged, deleted_patients=self.notes.deleted_patients)
        lost_types: dict[str, set[str]] = {}
        for rtype in merged:
            for fact in self._sourced_facts(rtype):
                lost_types.setdefault(fact, set()).add(rtype)
        self._lost_facts = {fact: lost_phrase(types) for fact, types in lost_types.items()}

    def resolve(self, reference: str) -> dict[str, Any] | None:
        copies = self.targets.get(reference)
        return None if copies is None else current_copy(copies)[3]

    def add_resource(self, resource: Any, where: str, line: int | Callable[[], int]) -> None:
        """Map one parsed resource; ``line`` may be a function, called only to report a problem."""

        def at() -> int:
            return line() if callable(line) else line

        if not isinstance(resource, dict):
            self.issues.add(InputIssue(where, at(), "not-a-resource", "line is not a JSON object"))
            return
        resource_type = resource.get("resourceType")
        if not isinstance(resource_type, str) or not resource_type:
            self.issues.add(InputIssue(where, at(), "no-resource-type", "resourceType is missing"))
            return
        if resource_type not in self.mapper.resource_types:
            if not is_fhir_resource_type(resource_type):
                self.issues.add(
                    InputIssue(where, at(), "unknown-resource-type", "not a FHIR R4 resource type")
                )
            return
        self._order += 1
        try:
            if resource_type in self.mapper.join_targets:
                self._add_target(resource, resource_type)
            mapped = self.mapper.map_resource(resource, self.as_of, self.resolve)
        except UnattributableResourceError as exc:
            self.issues.add(InputIssue(where, at(), "unattributable", str(exc)))
            return
        except Exception:  # one odd resource must not stop the run; no message: it may quote data
            self.issues.add(
                InputIssue(where, at(), "unusable-resource", "could not be read (internal error)")
            )
            return
        if mapped is None:
            return
        for problem in mapped.issues:
            self.issues.add(
                InputIssue(where, at(), problem.kind, f"{problem.field} {problem.message}")
            )
        data = self.patients.get(mapped.patient_id)
        if data is None:
            if self.spill is not None and len(self.patients) >= self.spill_at:
                self.spill()
            data = self.patients[mapped.patient_id] = PatientData()
        stamp = (mapped.version_id, mapped.last_updated, self._order)
        self.stats.records += len(mapped.contributions)
        if resource_type == "Patient":
            record = mapped.contributions[0].record
            values = tuple(record[key] for key in self._patient_keys)
            skip = mapped.not_screened
            location = f"{where}:{at()}" if skip else ""
            data.patient_copies = add_copy(data.patient_copies, (*stamp, (values, skip, location)))
            return
        records: tuple[tuple[str, Record | None], ...] = tuple(
            (c.fact, c.record) for c in mapped.contributions
        ) + tuple((fact, None) for fact in mapped.undecided)
        if data.resources is None:
            data.resources = {}
        data.resources[mapped.ref] = add_copy(data.resources.get(mapped.ref), (*stamp, records))

    def _add_target(self, resource: dict[str, Any], resource_type: str) -> None:
        resource_id = resource.get("id")
        if not isinstance(resource_id, str) or not resource_id:
            return
        version, updated = version_of(resource)
        kept = {k: v for k, v in resource.items() if k != "text"}  # the narrative is not needed
        ref = f"{resource_type}/{resource_id}"
        self.targets[ref] = add_copy(
            self.targets.get(ref),
            (version, updated, self._order, self.mapper.canonical_target(kept)),
        )

    def read_resources(
        self, resources: Iterable[dict[str, Any]], *, as_lines: bool = False
    ) -> None:
        """Resources already in memory; each is located in reports by its reference.

        ``as_lines``: each is skipped as an NDJSON line would be, when its type's mapping looks
        for codes and none of them is in it (``Mapper.prefilters``): the verdicts are the same,
        and a resource no rule reads costs its serialisation instead of its mapping (a CDS
        Hooks prefetch holds every Observation of the patient)."""
        targets = self.mapper.join_targets
        prefilters = self.mapper.prefilters if as_lines else {}

        def kind(resource: Any) -> Any:
            return resource.get("resourceType") if isinstance(resource, dict) else None

        for resource in sorted(resources, key=lambda r: kind(r) not in targets):
            rtype = kind(resource)
            pattern = prefilters.get(rtype) if isinstance(rtype, str) else None
            if pattern is not None and not _may_count(pattern, resource):
                self.stats.skipped_prefilter += 1
                continue
            name = f"{rtype}/{resource.get('id')}" if rtype else "?"
            self.add_resource(resource, f"fhir:{name}", 0)

    def screened_patients(self) -> Iterator[tuple[str, Record, dict[str, Any]]]:
        """(patient id, Patient record, facts) in id order, every fact key present.

        Patients whose Patient resource never appeared, or who are not to be screened, are
        left out (see ``orphans`` and ``not_screened``).
        """
        list_facts = [name for name, schema in self.mapper.facts.items() if not schema.one]
        one_fact = next(name for name, schema in self.mapper.facts.items() if schema.one)
        keys = self._patient_keys
        deleted = self.notes.deleted_patients
        for patient_id in sorted(self.patients):
            data = self.patients[patient_id]
            values = data.patient
            if values is None or patient_id in deleted:
                continue
            patient = dict(zip(keys, values, strict=True))
            facts: dict[str, Any] = {one_fact: patient}
            stored, unreadable = data.records()
            for name in list_facts:
                facts[name] = stored.get(name, [])
            if unreadable or self._lost_facts:
                facts[GAPS] = self._gaps(unreadable)
            yield patient_id, patient, facts

    def _gaps(self, unreadable: dict[str, set[str]]) -> dict[str, list[str]]:
        """The patient's facts that may be missing records, with why (service/ruleset/gaps)."""
        gaps = {fact: [phrase] for fact, phrase in self._lost_facts.items()}
        for fact, types in unreadable.items():
            phrases = {*gaps.get(fact, ()), *(unreadable_phrase(t) for t in types)}
            gaps[fact] = sorted(phrases)
        return gaps

    def not_screened(self) -> list[tuple[str, str, str]]:
        """(patient id, reason, where read) for every patient the mapping says not to screen."""
        found = []
        deleted = self.notes.deleted_patients
        for patient_id in sorted(self.patients):
            data = self.patients[patient_id]
            skipped = data.not_screened
            if skipped is not None:
                found.append((patient_id, *skipped))
            elif patient_id in deleted and data.patient_copies is not None:
                found.append((patient_id, DELETED_PATIENT, "*:0"))
        return found

    def orphans(self) -> Counter[str]:
        """Records of patients whose Patient resource never appeared, by fact."""
        counts: Counter[str] = Counter()
        for data in self.patients.values():
            if data.patient_copies is None:
                for fact, records in data.facts().items():
                    counts[fact] += len(records)
        return counts
