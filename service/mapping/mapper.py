"""Compiled mappings: FHIR resources (parsed JSON) in, flat fact records out."""

from __future__ import annotations

import difflib
import functools
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

from service.errors import ConfigError, RuleSetError
from service.mapping.display import DisplayReader
from service.mapping.fields import (
    AS_OF_FIELD_TYPES,
    Absent,
    DataIssue,
    Extractor,
    FactValue,
    Lenient,
    UnusableValueError,
    default_for,
    make_extractor,
    scalar_text,
)
from service.mapping.paths import RESOLVED, compile_path, concept_wrong_types, resolved_elements
from service.mapping.paths import Path as FhirPath
from service.mapping.resources import (
    Resolver,
    UnattributableResourceError,
    local_reference,
    lookup_reference,
    patient_of_path,
    restore_codings,
    version_of,
)
from service.mapping.spec import (
    CodesDoc,
    DisplayDoc,
    MappingDoc,
    SkipDoc,
    SourceDoc,
    WhereDoc,
    read_mapping_doc,
    valueset_references,
)
from service.terminology import (
    CodeCanonicalizer,
    SystemRule,
    ValueSet,
    load_valuesets,
)

Record = dict[str, FactValue]


@dataclass(frozen=True, slots=True)
class CompiledField:
    name: str
    default: FactValue
    extract: Extractor
    presence_of: str | None = (
        None  # a "present" field that reports whether another field was usable
    )
    path_source: str = ""
    unusable_of: str | None = None  # an "unusable" field: another field's value was unusable
    path: FhirPath | None = None  # to explain an absent value held in the wrong JSON type
    reads_as_of: bool = False  # the value depends on as_of (an age), not on the resource alone


@dataclass(frozen=True, slots=True)
class CompiledWhere:
    path: FhirPath
    test: Callable[[list[Any]], bool]
    keep_if_missing: bool
    valueset_codes: frozenset[str] | None
    search_param: str | None = None
    search_tokens: tuple[str, ...] = ()  # "system|code" or plain codes, sorted
    uses_resolve: bool = False
    tests_concepts: bool = False  # an 'in_valueset' test: the values must be CodeableConcepts

    def passes(self, resource: Any) -> bool:
        values = self.path.values(resource)
        if not values:
            return self.keep_if_missing
        return self.test(values)

    def wrong_types(self, resource: Any) -> list[tuple[str, str]]:
        """(element, problem) for what this clause reads in the wrong JSON type (see
        Path.wrong_types)."""
        values = self.path.values(resource)
        # A path that reached something read what it needed; only an empty one can hide a
        # wrongly typed element on the way.
        problems = [] if values else self.path.wrong_types(resource)
        for value in values:
            if self.tests_concepts:
                problem = concept_wrong_types(value)
            elif isinstance(value, dict | list):
                problem = f"is {'an object' if isinstance(value, dict) else 'a list'}, not a code"
            else:
                problem = None
            if problem is not None:
                problems.append((self.path.source, problem))
        return problems


@dataclass(frozen=True, slots=True)
class CompiledSource:
    fact: str
    resource_type: str
    patient_path: FhirPath | None
    where: tuple[CompiledWhere, ...]
    fields: tuple[CompiledField, ...]
    patient_search: str = "patient"
    resolve: tuple[tuple[str, str], ...] = ()  # (Reference element, target resource type)

    @property
    def server_filters(self) -> tuple[tuple[str, tuple[str, ...]], ...]:
        """(search parameter, allowed tokens) the server can apply; prescreen re-checks all."""
        return tuple(
            (clause.search_param, clause.search_tokens)
            for clause in self.where
            if clause.search_param is not None
        )

    def accepts(self, resource: Any) -> bool:
        return all(clause.passes(resource) for clause in self.where)

    def accepts_before_resolving(self, resource: Any) -> bool:
        return all(clause.passes(resource) for clause in self.where if not clause.uses_resolve)

    def undecidable(self, resource: Any) -> bool:
        """Whether this source refuses the resource only because a filter read an element in
        the wrong JSON type: the resource may well be a record of the fact, nobody can tell."""
        failing = [clause for clause in self.where if not clause.passes(resource)]
        return bool(failing) and all(clause.wrong_types(resource) for clause in failing)

    def record(self, resource: Any, ref: str, as_of: date) -> tuple[Record, list[DataIssue]]:
        record: Record = {"ref": ref}
        issues: list[DataIssue] = []
        usable: set[str] = set()
        unusable: set[str] = set()

        def report(spec: CompiledField, message: str, kind: str) -> None:
            # Several fields may read one element (birthDate for age and date): report it once.
            where = f"{self.resource_type}.{spec.path_source}"
            if all(issue.field != where or issue.kind != kind for issue in issues):
                issues.append(DataIssue(where, message, kind))

        for spec in self.fields:
            if spec.presence_of is not None or spec.unusable_of is not None:
                continue
            try:
                value = spec.extract(resource, as_of)
            except UnusableValueError as exc:
                record[spec.name] = spec.default
                unusable.add(spec.name)
                report(spec, str(exc), "bad-value")
                continue
            if isinstance(value, Lenient):
                report(spec, value.message, "lenient-value")
                value = value.value
            if isinstance(value, Absent):
                record[spec.name] = spec.default
                for element, problem in spec.path.wrong_types(resource) if spec.path else ():
                    unusable.add(spec.name)
                    report(
                        spec,
                        f"{element} {problem} (wrong JSON type, treated as absent)",
                        "bad-value",
                    )
            else:
                record[spec.name] = value
                usable.add(spec.name)
        for spec in self.fields:
            if spec.presence_of is not None:
                # An unusable value (bad date, text for a number) is as good as no value.
                record[spec.name] = spec.presence_of in usable
            elif spec.unusable_of is not None:
                record[spec.name] = spec.unusable_of in unusable
        return record, issues

    @property
    def prefilter_codes(self) -> frozenset[str] | None:
        """Codes one of which must appear in the raw line, or None if any line may match."""
        for clause in self.where:
            if clause.valueset_codes is not None:
                return clause.valueset_codes
        return None


@dataclass(frozen=True, slots=True)
class FactSchema:
    name: str
    one: bool
    defaults: Record
    description: str


@dataclass(frozen=True, slots=True)
class Contribution:
    fact: str
    record: Record


@dataclass(slots=True)
class MappedResource:
    """What one resource gives: records for facts (none when no source accepts it, which still
    matters: a newer copy of a resource that no longer counts retracts the older one)."""

    patient_id: str
    ref: str
    contributions: list[Contribution] = field(default_factory=list)
    issues: list[DataIssue] = field(default_factory=list)
    version_id: str | None = None
    last_updated: str | None = None
    not_screened: str | None = None  # a Patient not to screen: why
    # Facts this resource may be a record of, though it could not be read as one (a filter
    # met an element in the wrong JSON type, a reference it must follow is not in the
    # source): the patient's fact may be missing a record (see service/ruleset/gaps.py).
    undecided: list[str] = field(default_factory=list)


def _compile_where(
    clause: WhereDoc, valuesets: Mapping[str, ValueSet], where: str
) -> CompiledWhere:
    path = compile_path(clause.path, valuesets, where)
    if clause.in_valueset is not None:
        members: list[ValueSet] = []
        for vs_id in clause.in_valueset:
            if vs_id not in valuesets:
                raise ConfigError(f"{where}: unknown value set '{vs_id}'")
            members.append(valuesets[vs_id])
        uses_resolve = bool(resolved_elements(path))
        open_ended = any(vs.patterns for vs in members)
        if clause.search and open_ended:
            raise ConfigError(
                f"{where}: 'search' cannot send a value set with regex filters to a server; "
                "drop 'search' (the filter is applied here)"
            )
        codes = None
        if not open_ended and not uses_resolve:
            codes = frozenset(code for vs in members for code in vs.code_strings)
        tokens = tuple(sorted({f"{s}|{c}" for vs in members for s, c in vs.codes}))
        return CompiledWhere(
            path,
            lambda values: any(vs.matches_concept(v) for v in values for vs in members),
            clause.if_missing == "keep",
            codes,
            clause.search,
            tokens,
            uses_resolve,
            tests_concepts=True,
        )
    if clause.in_ is not None:
        allowed = frozenset(clause.in_)
        return CompiledWhere(
            path,
            lambda values: any(scalar_text(v) in allowed for v in values),
            clause.if_missing == "keep",
            None,
            clause.search,
            tuple(sorted(allowed)),
        )
    refused = frozenset(clause.not_in or ())
    return CompiledWhere(
        path,
        lambda values: not any(scalar_text(v) in refused for v in values),
        clause.if_missing != "drop",
        None,
    )


@dataclass(frozen=True, slots=True)
class Cohort:
    """Live discovery: search ``resource_type?{search}=tokens`` and collect the patients."""

    resource_type: str
    search: str
    patient_search: str
    tokens: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class SkipRule:
    """Patients this test matches are not screened, for ``reason``."""

    path: FhirPath
    values: frozenset[str]
    reason: str

    def matches(self, resource: Any) -> bool:
        return any(scalar_text(v) in self.values for v in self.path.values(resource))


@dataclass(frozen=True)
class Mapper:
    """A loaded mapping: which resources to read, and how to turn them into facts."""

    id: str
    version: str
    source_file: Path
    valuesets: Mapping[str, ValueSet]
    facts: Mapping[str, FactSchema]
    sources: Mapping[str, tuple[CompiledSource, ...]]
    prefilter_codes: Mapping[str, frozenset[str] | None]
    canonicalizer: CodeCanonicalizer
    cohort: Cohort | None = None
    skip_rules: tuple[SkipRule, ...] = ()
    coded_types: frozenset[str] = frozenset()  # resource types whose codings are matched
    display: DisplayReader | None = None  # name, MRN, birth date, sex: for people, not rules

    @functools.cached_property
    def prefilters(self) -> dict[str, re.Pattern[bytes] | None]:
        """Per resource type, the raw-line pattern of its codes (None: every line is parsed)."""
        return {
            rtype: None if codes is None else code_prefilter(codes)
            for rtype, codes in self.prefilter_codes.items()
        }

    # Cached: asked for every resource read, and a loaded mapping never changes.
    @functools.cached_property
    def resource_types(self) -> frozenset[str]:
        """Types read from a source: mapped ones and the targets of resolve()."""
        return frozenset(self.sources) | self.join_targets

    @functools.cached_property
    def as_of_types(self) -> frozenset[str]:
        """Resource types whose records depend on as_of (a Patient's age): mapped at another
        as_of, only these give other records."""
        return frozenset(
            rtype
            for rtype, srcs in self.sources.items()
            if any(f.reads_as_of for s in srcs for f in s.fields)
        )

    @functools.cached_property
    def join_targets(self) -> frozenset[str]:
        """Resource types that paths reach with resolve() (Medication, for instance)."""
        return frozenset(
            target for srcs in self.sources.values() for s in srcs for _, target in s.resolve
        )

    def facts_from(self, resource_type: str) -> frozenset[str]:
        """Facts whose records come from this resource type, or follow a reference to it."""
        return frozenset(
            source.fact
            for sources in self.sources.values()
            for source in sources
            if source.resource_type == resource_type
            or any(target == resource_type for _, target in source.resolve)
        )

    def references_to_resolve(self, resource: Mapping[str, Any]) -> list[str]:
        """``Type/id`` references this resource asks to resolve (for a live run to fetch)."""
        sources = self.sources.get(str(resource.get("resourceType")), ())
        found = []
        for element, target in {pair for source in sources for pair in source.resolve}:
            reference = resource.get(element)
            if isinstance(reference, dict) and isinstance(reference.get("reference"), str):
                local = local_reference(reference["reference"], target)
                if local is not None:
                    found.append(local)
        return found

    def map_resource(
        self, resource: dict[str, Any], as_of: date, resolve: Resolver | None = None
    ) -> MappedResource | None:
        """Records this resource contributes, or None when no source wants its type.

        Codings are first rewritten to canonical form (the mapping's code rules); a record that
        only matches thanks to that is reported. References a source resolves are looked up
        with ``resolve`` (and among contained resources). Raises UnattributableResourceError
        when a resource that counts cannot be attributed to a patient.
        """
        resource_type = resource.get("resourceType")
        sources = self.sources.get(resource_type) if isinstance(resource_type, str) else None
        if not sources:
            return None
        # Only types whose codings something matches need canonical codes (not a Patient).
        changes = (
            self.canonicalizer.canonicalize(resource) if resource_type in self.coded_types else []
        )
        attached: list[dict[str, Any]] = []
        unresolved_facts: list[str] = []
        try:
            unresolved = self._attach_references(
                resource, sources, resolve, attached, unresolved_facts
            )
            mapped = self._map(resource, resource_type, sources, as_of)  # type: ignore[arg-type]
            if mapped is None:
                return None
            if unresolved:
                mapped.issues.append(
                    DataIssue(
                        f"{resource_type}.{unresolved}",
                        "references a resource that is not in the source; it cannot count",
                        "unresolved-reference",
                    )
                )
                counted = {c.fact for c in mapped.contributions}
                mapped.undecided = sorted(
                    {*mapped.undecided, *(f for f in unresolved_facts if f not in counted)}
                )
            if changes and mapped.contributions:
                restore_codings(changes)
                original = self._map(resource, resource_type, sources, as_of)  # type: ignore[arg-type]
                if original is None or original.contributions != mapped.contributions:
                    mapped.issues.append(
                        DataIssue(
                            f"{resource_type}.coding",
                            "matched only after normalising a code or code system",
                            "noncanonical-code",
                        )
                    )
            return mapped
        finally:
            # The resource leaves as it came: another trial's mapping reads it next.
            restore_codings(changes)
            for reference in attached:
                reference.pop(RESOLVED, None)

    def canonical_target(self, resource: dict[str, Any]) -> dict[str, Any]:
        """A resolve() target (a Medication) with its codings made canonical, kept for lookups."""
        self.canonicalizer.canonicalize(resource)
        return resource

    def _attach_references(
        self,
        resource: dict[str, Any],
        sources: tuple[CompiledSource, ...],
        resolve: Resolver | None,
        attached: list[dict[str, Any]],
        unresolved_facts: list[str],
    ) -> str | None:
        """Put each resolved target on its Reference (listed in ``attached``); the element left
        unresolved, if any (the facts of the sources it leaves undecided go to
        ``unresolved_facts``)."""
        unresolved = None
        for source in sources:
            for element, target in source.resolve:
                reference = resource.get(element)
                if not isinstance(reference, dict) or RESOLVED in reference:
                    continue
                found = lookup_reference(resource, reference, target, resolve)
                if found is not None:
                    reference[RESOLVED] = found
                    attached.append(reference)
                elif source.accepts_before_resolving(resource):
                    unresolved = element
                    unresolved_facts.append(source.fact)
        return unresolved

    def _map(
        self,
        resource: dict[str, Any],
        resource_type: str,
        sources: tuple[CompiledSource, ...],
        as_of: date,
    ) -> MappedResource | None:
        accepted = [source for source in sources if source.accepts(resource)]
        resource_id = resource.get("id")
        if not isinstance(resource_id, str) or not resource_id:
            if accepted:
                raise UnattributableResourceError("resource has no id")
            return None
        ref = f"{resource_type}/{resource_id}"
        if not accepted:
            try:
                patient_id = patient_of_path(resource, sources[0].patient_path, resource_id)
            except UnattributableResourceError:
                return None
            mapped = MappedResource(patient_id, ref)
        else:
            patient_id = patient_of_path(resource, accepted[0].patient_path, resource_id)
            mapped = MappedResource(patient_id, ref)
            for source in accepted:
                record, issues = source.record(resource, ref, as_of)
                mapped.contributions.append(Contribution(source.fact, record))
                mapped.issues.extend(issues)
        # An element a resource is judged on may hold the wrong JSON type (a string where a
        # CodeableConcept belongs): it reads as absent, and that must be said, never silent.
        problems = sorted(
            {
                problem
                for source in sources
                for clause in source.where
                for problem in clause.wrong_types(resource)
            }
        )
        mapped.issues.extend(
            DataIssue(
                f"{resource_type}.{element}",
                f"{problem} (wrong JSON type, treated as absent)",
                "bad-value",
            )
            for element, problem in problems
        )
        if problems:
            # ... and a resource refused only for it may be a record nobody could read.
            counted = {source.fact for source in accepted}
            mapped.undecided = sorted(
                {
                    source.fact
                    for source in sources
                    if source.fact not in counted and source.undecidable(resource)
                }
            )
        mapped.version_id, mapped.last_updated = version_of(resource)
        if resource_type == "Patient":
            mapped.not_screened = next(
                (rule.reason for rule in self.skip_rules if rule.matches(resource)), None
            )
        return mapped

    def schema_sample(self) -> dict[str, Any]:
        """Facts holding one default record each: used to dry-run rules at load time."""
        sample: dict[str, Any] = {}
        for name, schema in self.facts.items():
            record = {"ref": f"Sample/{name}", **schema.defaults}
            sample[name] = record if schema.one else [record]
        return sample


def load_mapping(path: Path) -> Mapper:
    doc: MappingDoc = read_mapping_doc(path)
    folders = [path.parent / folder for folder in doc.valuesets]
    valuesets = load_valuesets(folders)
    unknown = unknown_valuesets(path, doc, valuesets)
    if unknown:
        raise RuleSetError(unknown)
    facts: dict[str, FactSchema] = {}
    sources: dict[str, list[CompiledSource]] = {}
    for fact_name, fact in doc.facts.items():
        defaults: Record = {}
        for index, source in enumerate(fact.sources):
            compiled = _compile_source(path, fact_name, index, source, valuesets)
            sources.setdefault(source.resource, []).append(compiled)
            defaults = {f.name: f.default for f in compiled.fields}
        facts[fact_name] = FactSchema(fact_name, fact.one, defaults, fact.description)
    canonicalizer = _canonicalizer(doc.codes, valuesets)
    prefilter_codes = {
        rtype: _prefilter_codes(srcs, canonicalizer) for rtype, srcs in sources.items()
    }
    skip_rules = tuple(_skip_rule(rule, valuesets, path) for rule in doc.patients.not_screened)
    targets = {t for srcs in sources.values() for src in srcs for _, t in src.resolve}
    for target in targets:
        prefilter_codes[target] = None  # a resolve() target is read whole: its id matters
    cohort = None
    if doc.cohort is not None:
        unknown = [vs for vs in doc.cohort.valuesets if vs not in valuesets]
        if unknown:
            raise ConfigError(f"{path}: cohort names unknown value sets {unknown}")
        cohort = Cohort(
            doc.cohort.resource,
            doc.cohort.search,
            doc.cohort.patient_search,
            tuple(
                sorted({f"{s}|{c}" for vs in doc.cohort.valuesets for s, c in valuesets[vs].codes})
            ),
        )
    return Mapper(
        cohort=cohort,
        id=doc.id,
        version=doc.version,
        source_file=path,
        valuesets=valuesets,
        facts=facts,
        sources={rtype: tuple(srcs) for rtype, srcs in sources.items()},
        prefilter_codes=prefilter_codes,
        canonicalizer=canonicalizer,
        skip_rules=skip_rules,
        coded_types=frozenset(
            source.resource
            for fact in doc.facts.values()
            for source in fact.sources
            if _matches_codings(source)
        ),
        display=_display_reader(doc.display, valuesets, canonicalizer, path),
    )


def unknown_valuesets(path: Path, doc: MappingDoc, valuesets: Mapping[str, ValueSet]) -> list[str]:
    """Every value set the mapping names that none of its folders holds: each with the line
    of the mapping that names it and the closest ids there are."""
    lines = path.read_text(encoding="utf-8").splitlines()
    folders = ", ".join(f"{folder}/" for folder in doc.valuesets)
    seen: dict[str, int] = {}
    problems: list[str] = []
    for where, vs_id in valueset_references(doc):
        if vs_id in valuesets:
            continue
        token = re.compile(rf"(?<![\w.-]){re.escape(vs_id)}(?![\w.-])")
        numbers = [n for n, line in enumerate(lines, start=1) if token.search(line)]
        occurrence = seen.get(vs_id, 0)
        seen[vs_id] = occurrence + 1
        place = f"{path}:{numbers[min(occurrence, len(numbers) - 1)]}" if numbers else str(path)
        closest = difflib.get_close_matches(vs_id, list(valuesets), n=3, cutoff=0.6)
        hint = (
            f"; the closest ids: {', '.join(closest)}"
            if closest
            else "; no id comes close (a ValueSet is found by its 'id', not its file name)"
        )
        problems.append(
            f"{place}: {where}: unknown value set '{vs_id}' (none of the ValueSets in "
            f"{folders} has this id){hint}"
        )
    return problems


def _matches_codings(source: SourceDoc) -> bool:
    """Whether a source compares codings with value sets anywhere (filters, fields, paths)."""
    coded_fields = {"in_valueset", "codes", "labels", "coded"}
    return (
        any(clause.in_valueset or " in " in clause.path for clause in source.where)
        or any(
            spec.type in coded_fields or spec.valueset or " in " in (spec.path or "")
            for spec in source.fields.values()
        )
        or bool(source.resolve)
    )


def _canonicalizer(codes: CodesDoc, valuesets: Mapping[str, ValueSet]) -> CodeCanonicalizer:
    rules = tuple(
        SystemRule(
            system,
            tuple(doc.aliases),
            tuple(re.compile(p) for p in doc.alias_patterns),
            doc.ignore_in_code,
        )
        for system, doc in codes.systems.items()
    )
    return CodeCanonicalizer(
        valuesets,
        rules,
        trim_whitespace=codes.trim_whitespace,
        ignore_trailing_slash=codes.ignore_trailing_slash,
        ignore_scheme=codes.ignore_scheme,
    )


def _display_reader(
    doc: DisplayDoc | None,
    valuesets: Mapping[str, ValueSet],
    canonicalizer: CodeCanonicalizer,
    path: Path,
) -> DisplayReader | None:
    if doc is None:
        return None

    def compiled(key: str, source: str) -> FhirPath | None:
        return compile_path(source, valuesets, f"{path}: display '{key}'") if source else None

    return DisplayReader(
        name=compiled("name", doc.name),
        mrn=compiled("mrn", doc.mrn),
        birth_date=compiled("birth_date", doc.birth_date),
        sex=compiled("sex", doc.sex),
        canonicalizer=canonicalizer,
    )


def _skip_rule(rule: SkipDoc, valuesets: Mapping[str, ValueSet], path: Path) -> SkipRule:
    where = f"{path}: patients.not_screened"
    return SkipRule(compile_path(rule.path, valuesets, where), frozenset(rule.in_), rule.reason)


def _compile_source(
    path: Path, fact: str, index: int, source: SourceDoc, valuesets: Mapping[str, ValueSet]
) -> CompiledSource:
    where = f"{path}: fact '{fact}' source {index + 1} ({source.resource})"
    patient_path = (
        None if source.resource == "Patient" else compile_path(source.patient, valuesets, where)
    )
    fields = tuple(
        CompiledField(
            name,
            default_for(spec),
            make_extractor(spec, valuesets, f"{where} field '{name}'"),
            spec.field if spec.type == "present" else None,
            spec.path or "",
            spec.field if spec.type == "unusable" else None,
            compile_path(spec.path, valuesets, where) if spec.path else None,
            spec.type in AS_OF_FIELD_TYPES,
        )
        for name, spec in source.fields.items()
    )
    clauses = tuple(_compile_where(clause, valuesets, where) for clause in source.where)
    followed = {
        element
        for text in [
            *(c.path for c in source.where),
            *(f.path or "" for f in source.fields.values()),
        ]
        if text
        for element in resolved_elements(compile_path(text, valuesets, where))
    }
    undeclared = followed - set(source.resolve)
    if undeclared:
        raise ConfigError(
            f"{where}: paths resolve {sorted(undeclared)}, which 'resolve' does not declare "
            "(element: target resource type)"
        )
    return CompiledSource(
        fact,
        source.resource,
        patient_path,
        clauses,
        fields,
        source.patient_search,
        tuple(sorted(source.resolve.items())),
    )


def _prefilter_codes(
    sources: list[CompiledSource], canonicalizer: CodeCanonicalizer
) -> frozenset[str] | None:
    """Codes one of which a raw NDJSON line of this type must hold to be worth parsing.

    Only when every source of the type is restricted to listed codes: then a line that mentions
    none of them (in any spelling the code rules accept) cannot match, and is skipped unparsed.
    """
    codes: set[str] = set()
    systems = {system for vs in canonicalizer.valuesets.values() for system in vs.systems}
    for source in sources:
        needed = source.prefilter_codes
        if needed is None:
            return None
        for code in needed:
            codes.update(canonicalizer.code_variants(code, systems))
    return frozenset(codes)


def code_prefilter(codes: Iterable[str]) -> re.Pattern[bytes]:
    """A byte pattern matching a JSON ``"code": "<one of codes>"`` in a raw line."""
    alternatives = b"|".join(re.escape(code.encode()) for code in sorted(set(codes)))
    # Anchored on the Coding.code key: the literal prefix lets the regex engine skip ahead,
    # nearly twice as fast as matching any quoted string. Keys written with JSON escapes
    # (\u0063ode) would slip through; no exporter writes them. Spaces around a code pass.
    return re.compile(rb'"code"\s*:\s*"\s*(?:' + alternatives + rb')\s*"')
