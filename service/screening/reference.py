"""The reference of the files a trial is made of, generated from the schemas that read them.

Mapping files, rule files and rule-test files are validated by pydantic models (``MappingDoc``,
``RuleSetDoc``, ``RuleTestFile``); their pages in ``docs/reference/`` list every key of those
models, with its type, its default, its meaning (the field's description) and an example
(below, checked against the field's type when the pages are written). A key added to a schema
without a description or an example stops the generation, and a test compares the pages with
what this module writes, so the reference cannot fall behind the code.

    python -m service.screening.reference          # writes docs/reference/*.md
    python -m service.screening.reference --check  # exits 1 when they are stale
"""

from __future__ import annotations

import sys
import types
import typing
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, TypeAdapter, ValidationError
from pydantic.fields import FieldInfo

from service.mapping.spec import (
    FIELD_TYPE_MEANINGS,
    CodesDoc,
    CohortDoc,
    DisplayDoc,
    FactDoc,
    FieldDoc,
    FieldType,
    MappingDoc,
    SkipDoc,
    SourceDoc,
    SystemDoc,
    WhereDoc,
)
from service.ruleset.model import (
    CaseDoc,
    CriterionDoc,
    OtherwiseDoc,
    ParameterDoc,
    RuleSetDoc,
    TrialDoc,
)
from service.screening.ruletests import Expectation, ExpectedCriterion, RuleTest, RuleTestFile

DOCS_DIR = Path(__file__).resolve().parents[2] / "docs" / "reference"


class ReferenceError(RuntimeError):
    """A key without a meaning or an example, or an example its field refuses."""


# Meanings of the keys whose schema field has no description yet.
MEANINGS: dict[tuple[type[BaseModel], str], str] = {
    (ParameterDoc, "value"): "the number (a double in CEL) or text the rules read",
    (ParameterDoc, "one_of"): "the values the parameter may take (for text options)",
    (ParameterDoc, "description"): "what the parameter means, for the reader",
}

# One example per key, by the model and field that declare it (a model used in two places,
# such as a case under missing and under cases, has its examples once).
EXAMPLES: dict[tuple[type[BaseModel], str], Any] = {
    (MappingDoc, "id"): "relieve",
    (MappingDoc, "version"): "1.1.0",
    (MappingDoc, "description"): "RELIEVE: FHIR R4 resources to the facts its rules read",
    (MappingDoc, "valuesets"): ["valuesets"],
    (CodesDoc, "trim_whitespace"): True,
    (CodesDoc, "ignore_trailing_slash"): True,
    (CodesDoc, "ignore_scheme"): True,
    (SystemDoc, "aliases"): ["urn:oid:2.16.840.1.113883.6.96"],
    (SystemDoc, "alias_patterns"): [r"http://snomed\.info/sct/\d+(/version/\d+)?"],
    (SystemDoc, "ignore_in_code"): ".",
    (SkipDoc, "path"): "active",
    (SkipDoc, "in_"): ["false"],
    (SkipDoc, "reason"): "inactive patient record (merged or entered in error)",
    (DisplayDoc, "name"): "name",
    (DisplayDoc, "mrn"): "identifier[type in patient-identifier-mr]",
    (DisplayDoc, "birth_date"): "birthDate",
    (DisplayDoc, "sex"): "gender",
    (CohortDoc, "resource"): "Condition",
    (CohortDoc, "search"): "code",
    (CohortDoc, "patient_search"): "patient",
    (CohortDoc, "valuesets"): ["relieve-bone-metastasis", "relieve-vertebral-metastasis"],
    (FactDoc, "one"): True,
    (FactDoc, "description"): "NRS pain scores, one record per Observation",
    (SourceDoc, "resource"): "Observation",
    (SourceDoc, "patient"): "subject",
    (SourceDoc, "patient_search"): "patient",
    (SourceDoc, "resolve"): {"medicationReference": "Medication"},
    (WhereDoc, "path"): "status",
    (WhereDoc, "in_"): ["final", "amended", "corrected"],
    (WhereDoc, "not_in"): ["entered-in-error"],
    (WhereDoc, "in_valueset"): ["relieve-nrs-pain-score"],
    (WhereDoc, "if_missing"): "keep",
    (WhereDoc, "search"): "code",
    (FieldDoc, "type"): "number",
    (FieldDoc, "path"): "valueInteger | valueQuantity.value",
    (FieldDoc, "valueset"): "relieve-pain-types",
    (FieldDoc, "labels"): {"cervical": "relieve-spine-cervical", "lumbar": "relieve-spine-lumbar"},
    (FieldDoc, "values"): ["active", "recurrence", "relapse"],
    (FieldDoc, "field"): "score",
    (FieldDoc, "units"): {"mo": 1.0, "wk": 0.23, "d": 0.0329},
    (FieldDoc, "if_no_unit"): "mo",
    (FieldDoc, "value"): True,
    (FieldDoc, "default"): "unspecified",
    (FieldDoc, "map"): {"planned": "planned", "in-progress": "ongoing"},
    (FieldDoc, "required"): True,
    (FieldDoc, "range"): [0.0, 10.0],
    (FieldDoc, "integer"): True,
    (FieldDoc, "text_pattern"): r"^\s*(\d+(?:\.\d+)?)\s*/\s*10\s*$",
    (FieldDoc, "ignore_unit_case"): True,
    (FieldDoc, "ignore_case"): True,
    (FieldDoc, "code_values"): {"LA9622-7": 0.0, "LA9623-5": 1.0},
    (FieldDoc, "step"): 10.0,
    (FieldDoc, "description"): "the NRS score, 0 to 10",
    (RuleSetDoc, "id"): "relieve",
    (RuleSetDoc, "version"): "1.1.0",
    (RuleSetDoc, "mapping"): "relieve",
    (RuleSetDoc, "derived"): {
        "nrs_scores": "pain_scores.filter(s, s.has_score && s.date >= windows.pain_window_days)"
    },
    (TrialDoc, "nct_id"): "NCT06746103",
    (TrialDoc, "identifier_system"): "https://clinicaltrials.gov/nctid",
    (TrialDoc, "acronym"): "RELIEVE",
    (TrialDoc, "title"): "Radiotherapy or surgery for painful spinal metastases",
    (TrialDoc, "sponsor"): "University Medical Center Utrecht",
    (TrialDoc, "status"): "approved",
    (TrialDoc, "description"): "Pre-screening for the RELIEVE trial",
    (TrialDoc, "conditions"): ["Spinal Metastases"],
    (TrialDoc, "url"): "https://clinicaltrials.gov/study/NCT06746103",
    (ParameterDoc, "value"): 4.0,
    (ParameterDoc, "window"): True,
    (ParameterDoc, "one_of"): [">", ">="],
    (ParameterDoc, "min"): 0.0,
    (ParameterDoc, "max"): 10.0,
    (ParameterDoc, "description"): "an NRS score above this is enough pain",
    (CriterionDoc, "id"): "pain-nrs",
    (CriterionDoc, "kind"): "inclusion",
    (CriterionDoc, "text"): "At least one type of the pain experienced has an NRS > 4 of 10",
    (CriterionDoc, "title"): "Pain score (NRS)",
    (CriterionDoc, "manual"): True,
    (CriterionDoc, "reason"): "requires clinician review",
    (CriterionDoc, "note"): "the spec leaves ties open: either score decides",
    (CaseDoc, "if_"): "size(nrs_scores) == 0",
    (CaseDoc, "result"): "unknown",
    (CaseDoc, "reason"): "no NRS pain score recorded since {pain_window_days_start}",
    (CaseDoc, "evidence"): "nrs_scores.map(s, s.ref)",
    (CaseDoc, "args"): {"scores": "nrs_scores.map(s, s.score)"},
    (OtherwiseDoc, "result"): "not_met",
    (OtherwiseDoc, "reason"): "no NRS score above {nrs_threshold}: {scores}",
    (OtherwiseDoc, "evidence"): "nrs_scores.map(s, s.ref)",
    (OtherwiseDoc, "args"): {"scores": "nrs_scores.map(s, s.score)"},
    (RuleTestFile, "ruleset"): "relieve",
    (RuleTestFile, "as_of"): "2026-06-15",
    (RuleTestFile, "bases"): {
        "candidate": [{"resourceType": "Patient", "id": "p", "birthDate": "1960-03-10"}]
    },
    (RuleTest, "id"): "no-birth-date",
    (RuleTest, "description"): "without a birth date the age is unknown",
    (RuleTest, "base"): "candidate",
    (RuleTest, "as_of"): "2026-07-01",
    (RuleTest, "add"): [{"resourceType": "Patient", "id": "p"}],
    (RuleTest, "remove"): ["Condition/spine-lumbar"],
    (RuleTest, "lost"): ["ServiceRequest"],
    (Expectation, "verdict"): "potential-candidate",
    (Expectation, "input_issues"): ["bad-value"],
    (ExpectedCriterion, "result"): "unknown",
    (ExpectedCriterion, "evidence"): ["Observation/nrs-1"],
    (ExpectedCriterion, "reason_contains"): "no birth date",
}

# How a map's keys are called in the key paths.
KEY_NAMES: dict[tuple[type[BaseModel], str], str] = {
    (MappingDoc, "facts"): "<fact>",
    (SourceDoc, "fields"): "<field>",
    (CodesDoc, "systems"): "<system>",
    (RuleSetDoc, "parameters"): "<parameter>",
    (Expectation, "criteria"): "<criterion>",
}


@dataclass(frozen=True)
class Row:
    key: str
    type: str
    default: str
    meaning: str
    example: str


@dataclass(frozen=True)
class Page:
    file: str
    title: str
    intro: str
    model: type[BaseModel]
    example: str  # a whole file, validated by the model


def _optional(annotation: Any) -> Any:
    """``X | None`` as ``X``."""
    if _is_union(annotation):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return annotation


def _is_union(annotation: Any) -> bool:
    return typing.get_origin(annotation) in (typing.Union, types.UnionType)


def _model_in(annotation: Any) -> tuple[type[BaseModel], str] | None:
    """The model a field holds and how its path continues: ``.`` for one, ``[].`` for a list
    of them, ``.<name>.`` for a map of them."""
    annotation = _optional(annotation)
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation, "."
    if origin is typing.Annotated:
        return _model_in(args[0])
    if origin is list and args and isinstance(args[0], type) and issubclass(args[0], BaseModel):
        return args[0], "[]."
    if origin is dict and len(args) == 2:
        value = args[1]
        if isinstance(value, type) and issubclass(value, BaseModel):
            return value, ".{key}."
    return None


def type_text(annotation: Any) -> str:
    """A field's type in words."""
    annotation = _optional(annotation)
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Annotated:
        return type_text(args[0])
    if origin is Literal:
        return "one of " + ", ".join(f"`{a}`" for a in args)
    if _is_union(annotation):
        if all(typing.get_origin(a) is Literal for a in args):  # one list of choices
            return "one of " + ", ".join(f"`{v}`" for a in args for v in typing.get_args(a))
        return " or ".join(type_text(a) for a in args if a is not type(None))
    if origin is list:
        return f"list of {type_text(args[0])}"
    if origin is tuple:
        return f"[{', '.join(type_text(a) for a in args)}]"
    if origin is dict:
        if args[1] is Any:
            return "object"
        return f"map of name → {type_text(args[1])}"
    if annotation is Any:
        return "any"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "object (keys below)"
    return {str: "text", float: "number", bool: "true or false", int: "whole number"}.get(
        annotation, "date (YYYY-MM-DD)" if annotation is date else str(annotation)
    )


def _inline(value: Any) -> str:
    if value == "":
        return '`""`'
    text = yaml.safe_dump(
        value, default_flow_style=True, allow_unicode=True, width=10_000, sort_keys=False
    )
    text = text.strip().removesuffix("...").strip()
    return f"`{text}`".replace("|", "\\|")


def rows(model: type[BaseModel], prefix: str = "") -> Iterator[Row]:
    """Every key of ``model`` and of the models it holds, depth first."""
    for name, info in model.model_fields.items():
        key = f"{prefix}{info.alias or name}"
        meaning = info.description or MEANINGS.get((model, name))
        if not meaning:
            raise ReferenceError(
                f"{model.__name__}.{name} ({key}) has no description: give its Field one"
            )
        nested = _model_in(info.annotation)
        example = "" if nested else _example(model, name, info, key)
        yield Row(key, type_text(info.annotation), _default(info), meaning, example)
        if nested is not None:
            inner, joint = nested
            joint = joint.format(key=KEY_NAMES.get((model, name), "<name>"))
            yield from rows(inner, f"{key}{joint}")


def _example(model: type[BaseModel], name: str, info: FieldInfo, key: str) -> str:
    if (model, name) not in EXAMPLES:
        raise ReferenceError(f"{model.__name__}.{name} ({key}) has no example in EXAMPLES")
    value = EXAMPLES[(model, name)]
    try:
        TypeAdapter(info.annotation or Any).validate_python(value)
    except ValidationError as exc:
        raise ReferenceError(f"the example of {key} is not valid: {exc}") from exc
    return _inline(value)


def _default(info: FieldInfo) -> str:
    if info.is_required():
        return "required"
    default = info.get_default(call_default_factory=True)
    if default is None:
        return "—"
    if isinstance(default, BaseModel):
        return "see below"
    return _inline(default)


def _cell(text: str) -> str:
    """Text in a table cell: a | ends the cell, and <name> would read as an HTML tag."""
    return text.replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")


def _table(model: type[BaseModel]) -> str:
    lines = ["| key | type | default | meaning | example |", "|---|---|---|---|---|"]
    for row in rows(model):
        meaning = _cell(row.meaning)
        lines.append(f"| `{row.key}` | {row.type} | {row.default} | {meaning} | {row.example} |")
    return "\n".join(lines)


def _field_types() -> str:
    declared = typing.get_args(FieldType)
    if set(declared) != set(FIELD_TYPE_MEANINGS):
        missing = sorted(set(declared) ^ set(FIELD_TYPE_MEANINGS))
        raise ReferenceError(f"FIELD_TYPE_MEANINGS and FieldType differ on {missing}")
    lines = ["| type | the field holds |", "|---|---|"]
    lines += [f"| `{t}` | {_cell(FIELD_TYPE_MEANINGS[t])} |" for t in declared]
    return "\n".join(lines)


MAPPING_EXAMPLE = """\
id: example
version: "1.0.0"
codes:
  systems:
    http://hl7.org/fhir/sid/icd-10-cm: {ignore_in_code: "."}
patients:
  not_screened:
    - {path: active, in: ["false"], reason: inactive patient record}
facts:
  patient:
    one: true
    sources:
      - resource: Patient
        fields:
          age_min: {type: age_min_years, path: birthDate}
          deceased: {type: bool, path: deceasedBoolean}
  conditions:
    sources:
      - resource: Condition
        where:
          - {path: code, in_valueset: example-diagnosis, search: code}
          - {path: verificationStatus.coding.code, not_in: [refuted, entered-in-error]}
        fields:
          date: {type: date, path: onsetDateTime | recordedDate}
"""

RULES_EXAMPLE = """\
id: example
version: "1.0.0"
mapping: example
trial:
  nct_id: NCT00000000
  identifier_system: https://clinicaltrials.gov/nctid
  acronym: EXAMPLE
  title: An example trial
  sponsor: An example sponsor
parameters:
  min_age: {value: 18, description: the youngest age included}
  diagnosis_window_days: {value: 365, window: true}
derived:
  recent: conditions.filter(c, c.date >= windows.diagnosis_window_days && c.date <= as_of)
criteria:
  - id: age
    kind: inclusion
    text: Aged 18 or over
    missing: {if: patient.age_min < 0.0, result: unknown, reason: no birth date}
    cases:
      - if: patient.age_min >= params.min_age
        result: met
        evidence: "[patient.ref]"
        reason: "aged {age} or more"
        args: {age: patient.age_min}
    otherwise: {result: not_met, reason: "under {min_age}", evidence: "[patient.ref]"}
  - id: diagnosis
    kind: inclusion
    text: The diagnosis, recorded in the last year
    cases:
      - if: size(recent) > 0
        result: met
        evidence: recent.map(c, c.ref)
        reason: "diagnosed since {diagnosis_window_days_start}"
    otherwise: {result: not_met, reason: "no diagnosis since {diagnosis_window_days_start}"}
  - id: consent
    kind: inclusion
    text: Written informed consent
    manual: true
"""

TESTS_EXAMPLE = """\
ruleset: example
as_of: 2026-06-15
bases:
  candidate:
    - {resourceType: Patient, id: p, birthDate: "1960-03-10"}
    - resourceType: Condition
      id: c1
      subject: {reference: Patient/p}
      code: {coding: [{system: "http://hl7.org/fhir/sid/icd-10-cm", code: C79.51}]}
      onsetDateTime: "2026-05-01"
tests:
  - id: candidate
    base: candidate
    expect:
      verdict: candidate
      criteria:
        age: met
        diagnosis: {result: met, evidence: [Condition/c1], reason_contains: diagnosed}
  - id: no-birth-date
    base: candidate
    add: [{resourceType: Patient, id: p}]
    expect: {verdict: potential-candidate, criteria: {age: unknown}}
  - id: no-diagnosis
    base: candidate
    remove: [Condition/c1]
    expect: {verdict: ineligible, criteria: {diagnosis: not_met}}
"""

PAGES = (
    Page(
        "mapping-files.md",
        "Mapping files",
        "A mapping (`fhir_mappings/<mapping>.yaml`) declares the facts a rule set reads and how "
        "each is read from FHIR resources. Every record of a fact has the same keys, always "
        "present, never null; numbers are doubles, dates ISO text, and every record has `ref` "
        "(`Type/id`).",
        MappingDoc,
        MAPPING_EXAMPLE,
    ),
    Page(
        "rule-files.md",
        "Rule files",
        "A rule file (`rules/<trial>.yaml`) decides each criterion of one trial from the "
        "facts of its mapping, with CEL expressions. CEL sees the facts by name, `params`, "
        "`windows` (the first day of each window parameter), `as_of` (ISO date) and the "
        "derived values. Numbers from the data and the parameters are doubles: write `4.0`, "
        "not `4`, where one is compared with them.",
        RuleSetDoc,
        RULES_EXAMPLE,
    ),
    Page(
        "rule-test-files.md",
        "Rule-test files",
        "A rule-test file (`rules/<trial>.tests.yaml`) holds synthetic patients as FHIR "
        "resources, each with the verdict and results it must give. `prescreen rules test` "
        "maps and evaluates each as a screening does, on every CEL engine; the engines must "
        "agree, and every result of every criterion and every verdict must be expected by a "
        "passing test. A criterion's expectation may be just its result (`age: met`). The input "
        "issue kinds are listed in [Command line](../command-line.md#input-issues).",
        RuleTestFile,
        TESTS_EXAMPLE,
    ),
)


def render(page: Page) -> str:
    try:
        page.model.model_validate(yaml.safe_load(page.example))
    except ValidationError as exc:
        raise ReferenceError(f"the example of {page.file} is not valid: {exc}") from exc
    parts = [
        f"# {page.title}",
        "<!-- Generated by `python -m service.screening.reference` from the schemas the "
        "loaders use; do not edit: change the schema's field descriptions, or the examples "
        "in service/screening/reference.py, and generate again. -->",
        page.intro,
        "## A small complete file",
        f"```yaml\n{page.example}```",
        "## Every key",
        "Keys are written as paths: `a.b` is key `b` inside `a`, `a[].b` is `b` in each item "
        "of the list `a`, `<name>` stands for a name you choose. Unknown keys are refused.",
        _table(page.model),
    ]
    if page.model is MappingDoc:
        parts += ["## Field types", _field_types()]
    parts.append(
        "See [Rule and mapping files](../rules-and-mappings.md) for how they work together."
    )
    return "\n\n".join(parts) + "\n"


def pages() -> dict[str, str]:
    return {page.file: render(page) for page in PAGES}


def stale(folder: Path = DOCS_DIR) -> list[str]:
    """The pages in ``folder`` that differ from what would be written now."""
    return [
        name
        for name, text in pages().items()
        if not (folder / name).is_file() or (folder / name).read_text(encoding="utf-8") != text
    ]


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if "--check" in args:
        found = stale()
        for name in found:
            sys.stdout.write(f"docs/reference/{name} is stale\n")
        return 1 if found else 0
    DOCS_DIR.mkdir(parents=True, exist_ok=True)
    for name, text in pages().items():
        (DOCS_DIR / name).write_text(text, encoding="utf-8")
        sys.stdout.write(f"wrote docs/reference/{name}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
