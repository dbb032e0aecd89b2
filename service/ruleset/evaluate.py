"""Evaluating a rule set for one patient: facts in, explained three-valued results out."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field, replace
from datetime import date
from typing import Any, Literal

import orjson

from service.ruleset.engines import Activation, CelEvaluationError, EngineName, failure_summary
from service.ruleset.gaps import GAPS, Gaps, noted_reason, undecided_reason, why
from service.ruleset.loader import BUILTIN_NAMES, PLACEHOLDER, Criterion, RuleSet
from service.ruleset.model import Kind, Result

Verdict = Literal["candidate", "potential-candidate", "ineligible"]
VERDICTS: tuple[Verdict, ...] = ("candidate", "potential-candidate", "ineligible")


@dataclass(frozen=True, slots=True)
class CriterionResult:
    id: str
    kind: Kind
    result: Result
    evidence: tuple[str, ...]
    reason: str
    manual: bool = False
    error: bool = False
    # Why a criterion could not be evaluated: the part of the rule and what failed there, in
    # the rule's words (never the data's). Not part of the output contract.
    detail: str = ""

    def as_contract(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "result": self.result,
            "evidence": list(self.evidence),
            "reason": self.reason,
        }


@dataclass(frozen=True, slots=True)
class PatientVerdict:
    patient_id: str
    verdict: Verdict
    criteria: tuple[CriterionResult, ...]
    # The criteria are a memoised pattern's own object, shared by every patient with that
    # pattern (they cite no resource): what is derived from them can be computed once.
    shared: bool = field(default=False, compare=False, repr=False)

    @classmethod
    def from_contract(
        cls, line: dict[str, Any], manual: frozenset[str], errors: frozenset[str]
    ) -> PatientVerdict:
        """Rebuild from a verdicts line (a checkpoint), with what the contract leaves out."""
        return cls(
            line["patient"].removeprefix("Patient/"),
            line["verdict"],
            tuple(
                CriterionResult(
                    cid,
                    c["kind"],
                    c["result"],
                    tuple(c["evidence"]),
                    c["reason"],
                    manual=cid in manual,
                    error=cid in errors,
                )
                for cid, c in line["criteria"].items()
            ),
        )

    def as_contract(self, ruleset: RuleSet, as_of: date) -> dict[str, Any]:
        """The output contract of relieve-criteria-spec.md, one verdicts.ndjson line."""
        return {
            "patient": f"Patient/{self.patient_id}",
            "trial": ruleset.id,
            "as_of": as_of.isoformat(),
            "verdict": self.verdict,
            "criteria": {c.id: c.as_contract() for c in self.criteria},
            "ruleset": {"id": ruleset.id, "version": ruleset.run_version},
        }


def decide(criteria: tuple[CriterionResult, ...]) -> Verdict:
    """Inclusion not met or exclusion met: ineligible; any decidable unknown: potential."""
    for c in criteria:
        if (c.kind == "inclusion" and c.result == "not_met") or (
            c.kind == "exclusion" and c.result == "met"
        ):
            return "ineligible"
    if any(c.result == "unknown" and not c.manual for c in criteria):
        return "potential-candidate"
    return "candidate"


def format_value(value: Any) -> str:
    """Numbers without spurious decimals, lists joined: text a coordinator reads."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if value.is_integer():
            return str(int(value))
        return f"{value:.2f}".rstrip("0").rstrip(".")
    if isinstance(value, list | tuple):
        if not value:
            return "none"
        # A list of lists reads as "a 7, b 5": each inner list is one item.
        # Empty parts (an exact value's empty comparator) leave no gap: "< 3", "9".
        return ", ".join(
            " ".join(format_value(part) for part in v if part != "")
            if isinstance(v, list | tuple)
            else format_value(v)
            for v in value
        )
    return str(value)


def render_reason(template: str, names: dict[str, Any]) -> str:
    return PLACEHOLDER.sub(lambda m: format_value(names.get(m.group(1), m.group(0))), template)


FAILED_REASON = "could not be evaluated (an error in the data or the rule); needs review"

# Fact patterns with this many records or fewer are memoised: in a hospital most patients
# carry no record the rules read, and share a handful of patterns (age, deceased).
MEMO_MAX_RECORDS = 4
MEMO_MAX_ENTRIES = 1_024  # the common patterns arrive early; rare ones are not worth keeping
SHARED_ACTIVATIONS = 4  # as_of dates a thread keeps an activation for (a service: one a day)
_MARK = "\x00ref:"


def _memo_key(
    facts: dict[str, Any], as_of: date, gaps: Gaps | None
) -> tuple[bytes, dict[str, Any], dict[str, str]] | None:
    """The facts with every ``ref`` replaced by a placeholder, as a cache key; None if large."""
    refs: dict[str, str] = {}
    normalized: dict[str, Any] = {}
    count = 0
    for name, value in facts.items():
        if isinstance(value, dict):
            mark = f"{_MARK}{name}"
            refs[mark] = value["ref"]
            normalized[name] = {**value, "ref": mark}
            continue
        count += len(value)
        if count > MEMO_MAX_RECORDS:
            return None
        records = []
        for index, record in enumerate(value):
            mark = f"{_MARK}{name}{index}"
            refs[mark] = record["ref"]
            records.append({**record, "ref": mark})
        normalized[name] = records
    # What may be missing decides as much as what is there: part of the pattern.
    pattern = [as_of.isoformat(), normalized, gaps] if gaps else [as_of.isoformat(), normalized]
    key = orjson.dumps(pattern, option=orjson.OPT_SORT_KEYS)
    return key, normalized, refs


class Evaluator:
    """Evaluates one rule set on one engine; programs were compiled when the rules loaded.

    Evaluation is a pure function of the facts and as_of, so with ``memoize`` patients whose
    facts differ only in resource ids share one evaluation; evidence is mapped back to each
    patient's own ids. The parameters are the third input: they are fixed for an evaluator
    (its rule set's), so its cache holds one set of parameter values only. Another set of
    values is another rule set (``overrides.with_overrides``) and so another evaluator.
    """

    def __init__(
        self, ruleset: RuleSet, engine: EngineName = "cel", *, memoize: bool = False
    ) -> None:
        self.ruleset = ruleset
        self.compiled = ruleset.compiled(engine)
        self.engine = self.compiled.engine
        self._template_cache: dict[date, dict[str, Any]] = {}
        self._constant_cache: dict[date, tuple[dict[str, Any], str | None]] = {}
        self._memo: dict[bytes, PatientVerdict] | None = {} if memoize else None
        self._memo_as_of: date | None = None
        self.memo_hits = 0
        self._parts: dict[str, Any] = {}  # parts of criteria, compiled to explain a failure
        # Per thread (an activation may be rebound from patient to patient): as_of -> the
        # activation holding what every patient shares.
        self._shared = threading.local()

    def _constants(self, as_of: date) -> tuple[dict[str, Any], str | None]:
        """The derived values that read no fact, for this as_of (computed once), and the name
        of one that failed, if any."""
        cached = self._constant_cache.get(as_of)
        if cached is None:
            activation = self.engine.activation(self.ruleset.variables({}, as_of))
            values: dict[str, Any] = {}
            failed = None
            for name, program in self.compiled.constants:
                try:
                    values[name] = program.run(activation)
                except CelEvaluationError:
                    failed = name
                    break
                activation.bind(name, values[name])
            cached = self._constant_cache[as_of] = (values, failed)
        return cached

    def _template_names(self, as_of: date) -> dict[str, Any]:
        names = self._template_cache.get(as_of)
        if names is None:
            names = {
                **self.ruleset.parameters,
                "as_of": as_of.isoformat(),
                **{f"{w}_start": d for w, d in self.ruleset.window_starts(as_of).items()},
            }
            self._template_cache[as_of] = names
        return names

    def evaluate_safely(
        self, patient_id: str, facts: dict[str, Any], as_of: date
    ) -> PatientVerdict:
        """``evaluate``, but an unexpected error makes every decidable criterion unknown."""
        try:
            return self.evaluate(patient_id, facts, as_of)
        except Exception:  # no message kept: it could quote patient data
            criteria = tuple(
                CriterionResult(c.id, c.kind, "unknown", (), c.manual_reason, manual=True)
                if c.manual
                else CriterionResult(c.id, c.kind, "unknown", (), FAILED_REASON, error=True)
                for c in self.ruleset.criteria
            )
            return PatientVerdict(patient_id, decide(criteria), criteria)

    def evaluate(self, patient_id: str, facts: dict[str, Any], as_of: date) -> PatientVerdict:
        """The patient's verdict. ``facts`` may hold, under ``GAPS``, the facts that may be
        missing records and why (see service/ruleset/gaps.py)."""
        gaps: Gaps | None = facts.get(GAPS)
        if gaps is not None:
            facts = {name: value for name, value in facts.items() if name != GAPS}
        if self._memo is None:
            return self._evaluate(patient_id, facts, as_of, gaps)
        keyed = _memo_key(facts, as_of, gaps)
        if keyed is None:
            return self._evaluate(patient_id, facts, as_of, gaps)
        key, normalized, refs = keyed
        if as_of != self._memo_as_of:
            # A service screens as of today: yesterday's patterns would only fill the memo.
            self._memo.clear()
            self._memo_as_of = as_of
        shared = self._memo.get(key)
        if shared is None:
            shared = self._evaluate("", normalized, as_of, gaps)
            if any(_MARK in c.reason for c in shared.criteria):
                return self._evaluate(patient_id, facts, as_of, gaps)  # a reason quotes an id
            if not any(c.evidence for c in shared.criteria):
                shared = PatientVerdict("", shared.verdict, shared.criteria, shared=True)
            if len(self._memo) < MEMO_MAX_ENTRIES:
                self._memo[key] = shared
        else:
            self.memo_hits += 1
        if shared.shared:  # nothing cites this patient's own resources
            return PatientVerdict(patient_id, shared.verdict, shared.criteria, shared=True)
        criteria = tuple(
            CriterionResult(
                c.id,
                c.kind,
                c.result,
                tuple(sorted(refs.get(e, e) for e in c.evidence)),
                c.reason,
                c.manual,
                c.error,
                c.detail,
            )
            if c.evidence
            else c
            for c in shared.criteria
        )
        return PatientVerdict(patient_id, shared.verdict, criteria)

    def _shared_activation(self, as_of: date) -> Activation:
        """Parameters, windows, as_of and the constants, converted once per as_of and thread."""
        shared: dict[date, Activation] | None = getattr(self._shared, "by_as_of", None)
        if shared is None or (as_of not in shared and len(shared) >= SHARED_ACTIVATIONS):
            shared = self._shared.by_as_of = {}
        activation = shared.get(as_of)
        if activation is None:
            constants, _failed = self._constants(as_of)
            variables = {**self.ruleset.variables({}, as_of), **constants}
            activation = shared[as_of] = self.engine.activation(variables)
        return activation

    def _evaluate(
        self, patient_id: str, facts: dict[str, Any], as_of: date, gaps: Gaps | None = None
    ) -> PatientVerdict:
        constants, failed_derived = self._constants(as_of)
        if facts.keys() & constants.keys() or facts.keys() & BUILTIN_NAMES:
            # A fact named like a shared value is hidden by it (the shared values win).
            variables = {**self.ruleset.variables(facts, as_of), **constants}
            activation = self.engine.activation(variables)
        else:
            activation = self._shared_activation(as_of).for_patient(facts)
        derived_failure = ""
        for layer in () if failed_derived else self.compiled.derived:
            values: dict[str, Any] = {}
            for name, program in layer:
                try:
                    values[name] = program.run(activation)
                except CelEvaluationError as exc:
                    failed_derived = name
                    derived_failure = failure_summary(exc, program.source)
                    break
            if failed_derived is not None:
                break
            activation.bind_all(values)
        names = self._template_names(as_of)
        results = tuple(
            self._criterion(criterion, activation, names, failed_derived, derived_failure)
            for criterion in self.ruleset.criteria
        )
        if gaps:
            results = tuple(
                _with_gaps(result, criterion, gaps)
                for result, criterion in zip(results, self.ruleset.criteria, strict=True)
            )
        return PatientVerdict(patient_id, decide(results), results)

    def _failure_detail(
        self, criterion: Criterion, activation: Any, failed: str | None, failed_summary: str
    ) -> str:
        """Which part of a criterion failed, and how: its parts are run again in the order an
        evaluation reaches them (only after a failure, so the cost is the failure's)."""
        if failed is not None:
            source = dict(self.ruleset.derived).get(failed, "")
            summary = failed_summary or "it failed"
            return f"derived value '{failed}' ({_expression_text(source)}): {summary}"
        chosen: str | None = None  # the label prefix of the case whose if holds ("case 2 ")
        for label, source, _guard in criterion.components:
            is_if = label.endswith("'if'")
            if chosen is not None and not (label.startswith(chosen) and not is_if):
                continue  # past the chosen case: a later case or the otherwise
            if chosen is None and not is_if and not label.startswith("otherwise"):
                continue  # a part of a case whose if does not hold
            try:
                value = self._part(source).run(activation)
            except CelEvaluationError as exc:
                return f"{label} ({_expression_text(source)}): {failure_summary(exc, source)}"
            if is_if and self.engine.to_python(value) is True:
                chosen = label.removesuffix("'if'")
        return "the engine's answer could not be read"

    def _part(self, source: str) -> Any:
        program = self._parts.get(source)
        if program is None:
            program = self._parts[source] = self.engine.compile(source)
        return program

    def _criterion(
        self,
        criterion: Criterion,
        activation: Any,
        names: dict[str, Any],
        failed: str | None,
        failed_summary: str = "",
    ) -> CriterionResult:
        if criterion.manual:
            return CriterionResult(
                criterion.id, criterion.kind, "unknown", (), criterion.manual_reason, manual=True
            )
        try:
            if failed is not None:
                raise CelEvaluationError(f"derived value '{failed}' failed")
            chosen = self.engine.to_python(self.compiled.criteria[criterion.id].run(activation))
            outcome = criterion.outcomes[int(chosen["case"])]
            evidence = tuple(sorted({str(ref) for ref in chosen["evidence"]}))
            reason = render_reason(outcome.reason, {**names, **chosen["args"]})
        except (CelEvaluationError, KeyError, TypeError, ValueError, IndexError):
            # No engine message in the reason: it could quote patient data.
            return CriterionResult(
                criterion.id,
                criterion.kind,
                "unknown",
                (),
                FAILED_REASON,
                error=True,
                detail=self._failure_detail(criterion, activation, failed, failed_summary),
            )
        return CriterionResult(criterion.id, criterion.kind, outcome.result, evidence, reason)


def _expression_text(source: str, limit: int = 160) -> str:
    text = " ".join(source.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _with_gaps(result: CriterionResult, criterion: Criterion, gaps: Gaps) -> CriterionResult:
    """A result judged by the records present only (service/ruleset/gaps.py): where it rests
    on the absence of records that may be missing, ``unknown``."""
    if result.manual or result.error:
        return result
    reasons = why(criterion.reads, gaps)
    if not reasons:
        return result
    favourable = result.result == ("met" if criterion.kind == "inclusion" else "not_met")
    if result.result == "unknown" or (favourable and result.evidence):
        return replace(result, reason=noted_reason(reasons, result.reason))
    return replace(result, result="unknown", reason=undecided_reason(reasons, result.reason))
