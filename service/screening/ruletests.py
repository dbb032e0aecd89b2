"""Rule tests as data: synthetic patients with expected results, run on both CEL engines.

A test file (``rules/<trial>.tests.yaml``) names base patients (lists of FHIR resources) and
tests that start from a base, add or replace resources, remove some, and state the expected
verdict and per-criterion results. Each test runs through the real mapper and on every engine;
the engines must agree on every result, piece of evidence and reason. Coverage is checked: every
result each criterion can give, and every verdict, must be asserted by some test.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, field_validator

from service.errors import ConfigError
from service.ruleset.engines import ENGINE_NAMES, EngineName
from service.ruleset.evaluate import VERDICTS, Evaluator, PatientVerdict, Verdict
from service.ruleset.loader import RuleSet
from service.ruleset.model import Result
from service.screening.inmemory import evaluate_resources
from service.screening.source import InputIssue, IssueLog, SourceNotes
from service.yamlfiles import read_model


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ExpectedCriterion(_Strict):
    """What one criterion must give (``alive: met`` is short for ``alive: {result: met}``)."""

    result: Result = Field(description="the result expected")
    evidence: list[str] | None = Field(
        default=None, description="the evidence expected, exactly ('Type/id', any order)"
    )
    reason_contains: str | None = Field(default=None, description="text the reason must contain")


class Expectation(_Strict):
    """What the test patient must give."""

    verdict: Verdict | Literal["not-screened"] = Field(
        description="the verdict expected; not-screened: no verdict at all (the mapping's "
        "patients.not_screened)"
    )
    criteria: dict[str, ExpectedCriterion] = Field(
        default={}, description="expected results by criterion id; criteria not named are free"
    )
    input_issues: list[str] = Field(
        default=[],
        description="the input issue kinds the resources must raise, all of them, in any order",
    )

    @field_validator("criteria", mode="before")
    @classmethod
    def _short_form(cls, value: Any) -> Any:
        # "alive: met" is shorthand for "alive: {result: met}".
        if isinstance(value, dict):
            return {k: {"result": v} if isinstance(v, str) else v for k, v in value.items()}
        return value


class RuleTest(_Strict):
    """One synthetic patient and what it must give."""

    id: str = Field(description="the test's name, unique in the file, shown when it fails")
    description: str = Field(default="", description="what the test shows, for the reader")
    base: str | None = Field(
        default=None, description="the base patient it starts from (none: only what it adds)"
    )
    as_of: date | None = Field(default=None, description="the screening date, if not the file's")
    add: list[dict[str, Any]] = Field(
        default=[],
        description="FHIR resources added; one with the type and id of a base resource "
        "replaces it, several copies of one resource are all kept, in order",
    )
    remove: list[str] = Field(default=[], description="base resources removed, as 'Type/id'")
    lost: list[str] = Field(
        default=[],
        description="resource types the run could not read (refused by the server, lost by "
        "the export): the criteria must not rest on their absence",
    )
    expect: Expectation = Field(description="what the patient must give")


class RuleTestFile(_Strict):
    """A rule-test file: synthetic patients for one rule set, run on every engine."""

    ruleset: str = Field(description="the id of the rule set tested")
    as_of: date = Field(description="the screening date of every test (YYYY-MM-DD)")
    bases: dict[str, list[dict[str, Any]]] = Field(
        default={}, description="named base patients: lists of FHIR resources (JSON as YAML)"
    )
    tests: list[RuleTest] = Field(min_length=1, description="the tests, in order")


@dataclass
class RuleTestFailure:
    test_id: str
    message: str


@dataclass
class RuleTestReport:
    ruleset: str
    tests: int = 0
    engines: tuple[EngineName, ...] = ENGINE_NAMES
    failures: list[RuleTestFailure] = field(default_factory=list)
    disagreements: list[RuleTestFailure] = field(default_factory=list)
    uncovered: list[str] = field(default_factory=list)
    # Results and verdicts some test asserts, but only tests that failed: covered once they pass.
    unconfirmed: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.failures or self.disagreements or self.uncovered or self.unconfirmed)


def read_test_file(path: Path) -> RuleTestFile:
    return read_model(path, RuleTestFile, "rule test file")


def _key(resource: dict[str, Any]) -> str:
    return f"{resource.get('resourceType')}/{resource.get('id')}"


def patient_resources(suite: RuleTestFile, test: RuleTest) -> list[dict[str, Any]]:
    """The resources of one test patient: its base, with additions and removals applied."""
    if test.base is not None and test.base not in suite.bases:
        raise ConfigError(f"test '{test.id}': unknown base '{test.base}'")
    resources = {_key(r): copy.deepcopy(r) for r in suite.bases.get(test.base or "", [])}
    for ref in test.remove:
        if ref not in resources:
            raise ConfigError(
                f"test '{test.id}': cannot remove {ref}, the base has no such resource"
            )
        del resources[ref]
    # An added resource replaces the base's copy; several added copies of one resource are all
    # kept, in order (versions of one resource in one export).
    added = {_key(r) for r in test.add}
    kept = [r for key, r in resources.items() if key not in added]
    return kept + [copy.deepcopy(r) for r in test.add]


def export_patients(
    suite: RuleTestFile, prefix: str = "t"
) -> list[tuple[RuleTest, str, list[dict[str, Any]]]]:
    """Each test patient with ids made unique across the suite (``<prefix><n>-<id>``) and
    references rewritten to match: ready to load into a FHIR server next to all the others."""
    exported = []
    base = prefix
    for index, test in enumerate(suite.tests):
        prefix = f"{base}{index:03d}-"
        resources = patient_resources(suite, test)
        renamed = {_key(r): f"{r['resourceType']}/{prefix}{r['id']}" for r in resources}
        text = orjson.dumps(resources).decode()
        for old, new in renamed.items():
            text = text.replace(f'"reference":"{old}"', f'"reference":"{new}"')
        copies = orjson.loads(text)
        for resource in copies:
            resource["id"] = prefix + resource["id"]
        patient = next(r["id"] for r in copies if r["resourceType"] == "Patient")
        exported.append((test, patient, copies))
    return exported


def evaluate_test_patient(
    evaluator: Evaluator,
    resources: list[dict[str, Any]],
    as_of: date,
    lost: list[str] | tuple[str, ...] = (),
) -> tuple[list[PatientVerdict], list[InputIssue]]:
    """Map and evaluate a test patient exactly as the runs do, keeping the input issues;
    ``lost``: resource types the run lost (service/ruleset/gaps.py)."""
    captured: list[InputIssue] = []
    notes = SourceNotes(lost=dict.fromkeys(lost, "lost in this rule test"))
    verdicts = evaluate_resources(
        evaluator, resources, as_of, issues=IssueLog(sink=captured.append), notes=notes
    )
    return verdicts, captured


def run_rule_tests(
    ruleset: RuleSet, path: Path, engines: tuple[EngineName, ...] = ENGINE_NAMES
) -> RuleTestReport:
    suite = read_test_file(path)
    if suite.ruleset != ruleset.id:
        raise ConfigError(f"{path}: tests are for '{suite.ruleset}', not '{ruleset.id}'")
    report = RuleTestReport(ruleset.id, engines=engines)
    evaluators = {name: Evaluator(ruleset, name) for name in engines}
    criteria = {c.id: c for c in ruleset.criteria}
    covered: set[tuple[str, str]] = set()
    verdicts_seen: set[str] = set()
    asserted: set[tuple[str, str]] = set()  # by any test, passing or not
    verdicts_asserted: set[str] = set()

    seen_ids: set[str] = set()
    for test in suite.tests:
        if test.id in seen_ids:
            raise ConfigError(f"{path}: duplicate test id '{test.id}'")
        seen_ids.add(test.id)
        for criterion_id in test.expect.criteria:
            if criterion_id not in criteria:
                raise ConfigError(
                    f"{path}: test '{test.id}' names unknown criterion '{criterion_id}'"
                )
        report.tests += 1
        asserted.update((cid, exp.result) for cid, exp in test.expect.criteria.items())
        verdicts_asserted.add(test.expect.verdict)
        as_of = test.as_of or suite.as_of
        resources = patient_resources(suite, test)
        outputs: dict[str, dict[str, Any]] = {}
        for engine_name, evaluator in evaluators.items():
            verdicts, issues = evaluate_test_patient(evaluator, resources, as_of, test.lost)
            if test.expect.verdict == "not-screened":
                kinds = sorted(i.kind for i in issues)
                if verdicts or kinds != sorted(test.expect.input_issues):
                    report.failures.append(
                        RuleTestFailure(
                            test.id,
                            f"[{engine_name}] expected not screened, got {len(verdicts)} "
                            f"verdict(s) and input issues {kinds}",
                        )
                    )
                outputs[engine_name] = {"verdicts": len(verdicts)}
                continue
            if len(verdicts) != 1:
                report.failures.append(
                    RuleTestFailure(test.id, f"expected one patient, mapped {len(verdicts)}")
                )
                break
            verdict = verdicts[0]
            outputs[engine_name] = verdict.as_contract(ruleset, as_of)
            problems = _compare(test.expect, verdict, [i.kind for i in issues])
            report.failures.extend(
                RuleTestFailure(test.id, f"[{engine_name}] {problem}") for problem in problems
            )
            if not problems:
                verdicts_seen.add(verdict.verdict)
                covered.update((cid, exp.result) for cid, exp in test.expect.criteria.items())
        distinct = {repr(sorted(o.items())) for o in outputs.values()}
        if len(distinct) > 1:
            report.disagreements.append(RuleTestFailure(test.id, _difference(outputs)))

    for criterion in ruleset.criteria:
        for result in sorted(criterion.possible_results):
            if (criterion.id, result) in covered:
                continue
            gap = f"criterion '{criterion.id}' result '{result}'"
            found = (criterion.id, result) in asserted
            (report.unconfirmed if found else report.uncovered).append(gap)
    for v in VERDICTS:
        if v not in verdicts_seen:
            gap = f"verdict '{v}'"
            (report.unconfirmed if v in verdicts_asserted else report.uncovered).append(gap)
    return report


def _compare(expect: Expectation, verdict: PatientVerdict, issue_kinds: list[str]) -> list[str]:
    problems: list[str] = []
    if verdict.verdict != expect.verdict:
        problems.append(f"verdict {verdict.verdict}, expected {expect.verdict}")
    results = {c.id: c for c in verdict.criteria}
    for criterion_id, expected in expect.criteria.items():
        actual = results[criterion_id]
        if actual.error:
            problems.append(
                f"{criterion_id}: could not be evaluated: {actual.detail}; "
                f"expected {expected.result}"
            )
        elif actual.result != expected.result:
            problems.append(
                f"{criterion_id}: {actual.result} ({actual.reason}), expected {expected.result}"
            )
        if expected.evidence is not None and sorted(expected.evidence) != list(actual.evidence):
            wanted = sorted(expected.evidence)
            problems.append(f"{criterion_id}: evidence {list(actual.evidence)}, expected {wanted}")
        if expected.reason_contains and expected.reason_contains not in actual.reason:
            problems.append(
                f"{criterion_id}: reason '{actual.reason}' lacks '{expected.reason_contains}'"
            )
    if sorted(issue_kinds) != sorted(expect.input_issues):
        problems.append(
            f"input issues {sorted(issue_kinds)}, expected {sorted(expect.input_issues)}"
        )
    return problems


def _difference(outputs: dict[str, dict[str, Any]]) -> str:
    names = list(outputs)
    first, other = outputs[names[0]], outputs[names[1]]
    if first["verdict"] != other["verdict"]:
        return f"verdict: {names[0]}={first['verdict']} {names[1]}={other['verdict']}"
    for cid, result in first["criteria"].items():
        if result != other["criteria"].get(cid):
            return f"{cid}: {names[0]}={result} {names[1]}={other['criteria'].get(cid)}"
    return "outputs differ"
