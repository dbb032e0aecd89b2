"""Loading a rule set: parse, validate every criterion, compile each CEL program once per engine.

Every problem found is collected and reported together, each naming the file, the criterion (or
parameter) and what is wrong, so an author fixes a file in one pass.
"""

from __future__ import annotations

import contextlib
import re
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from service.errors import RuleSetError
from service.mapping.mapper import Mapper, load_mapping
from service.ruleset.engines import (
    ENGINE_NAMES,
    CelEvaluationError,
    CelSyntaxError,
    Engine,
    EngineName,
    Program,
    explain_failure,
    make_engine,
    referenced_names,
)
from service.ruleset.model import CriterionDoc, Kind, ParameterDoc, Result, RuleSetDoc, TrialDoc
from service.ruleset.overrides import version_suffix
from service.ruleset.shapes import (
    STRING,
    CelType,
    ListOf,
    Record,
    ShapeChecker,
    record_type,
    value_type,
)
from service.yamlfiles import read_yaml

BUILTIN_NAMES = frozenset({"params", "windows", "as_of"})
_PARAM_REF = re.compile(r"\bparams\s*\.\s*([A-Za-z_]\w*)")
_WINDOW_REF = re.compile(r"\bwindows\s*\.\s*([A-Za-z_]\w*)")
PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
# Compiling for another engine on first use happens once even when threads ask together.
_COMPILING = threading.Lock()


@dataclass(frozen=True, slots=True)
class Outcome:
    result: Result
    reason: str
    is_missing_data: bool


@dataclass(frozen=True, slots=True)
class Criterion:
    id: str
    kind: Kind
    text: str
    manual: bool
    manual_reason: str
    outcomes: tuple[Outcome, ...]
    source: str  # one CEL expression choosing the outcome; empty for manual criteria
    # (label, CEL, guard) of each part, for the dry run: a part runs where its guard holds.
    components: tuple[tuple[str, str, str | None], ...] = ()
    # The facts it reads, directly or through derived values: a lost source or an unreadable
    # record feeding one of them may leave it undecided (service/ruleset/gaps.py).
    reads: frozenset[str] = frozenset()
    title: str = ""  # short, for charts and lists; the id when the rule file gives none

    @property
    def possible_results(self) -> frozenset[Result]:
        if self.manual:
            return frozenset({"unknown"})
        return frozenset(outcome.result for outcome in self.outcomes)


@dataclass(frozen=True)
class CompiledRules:
    """The programs of a rule set for one engine.

    Derived values come in layers: every value of a layer reads only facts and values of earlier
    layers, so a layer is computed against one activation and bound at once. (The Rust engine
    converts its context again after every change: binding 47 values one by one cost ~28 µs
    each, a layer at a time costs that once per layer.)
    """

    engine: Engine
    derived: tuple[tuple[tuple[str, Program], ...], ...]
    criteria: dict[str, Program]
    # Derived values that read no fact (tables such as vertebra numbers): computed once per
    # as_of and passed in with the facts, in order.
    constants: tuple[tuple[str, Program], ...] = ()


@dataclass(frozen=True)
class RuleSet:
    id: str
    version: str
    path: Path
    trial: TrialDoc
    mapper: Mapper
    parameters: dict[str, Any]
    windows: dict[str, float]
    derived: tuple[tuple[str, str], ...]
    criteria: tuple[Criterion, ...]
    _compiled: dict[EngineName, CompiledRules] = field(default_factory=dict, repr=False)
    # The parameters as the rule file declares them (kind, window, one_of, min/max), and those
    # a run set otherwise (``--set``; ``overrides.py``), by name: the rule set then no longer
    # follows the protocol, and says so in its ``run_version``.
    declared: dict[str, ParameterDoc] = field(default_factory=dict, repr=False)
    overrides: tuple[tuple[str, float | str], ...] = ()

    @property
    def run_version(self) -> str:
        """The version written with every result: the rule file's, followed by the parameters
        set for the run (``1.1.0+min_survival_months=2``); the rule file's alone without."""
        return f"{self.version}{version_suffix(self.overrides)}"

    def compiled(self, engine: EngineName) -> CompiledRules:
        """The rules compiled for ``engine``; compiled (and checked) on first use when the
        rule set was loaded for other engines."""
        found = self._compiled.get(engine)
        if found is None:
            with _COMPILING:
                found = self._compiled.get(engine)
                if found is None:
                    found = self._compiled[engine] = _compile_checked(self, (engine,))[engine]
        return found

    def criteria_reading(self, resource_type: str) -> list[str]:
        """Ids of the decidable criteria that read a fact fed by this resource type."""
        facts = self.mapper.facts_from(resource_type)
        return [c.id for c in self.criteria if not c.manual and c.reads & facts]

    def template_names(self) -> set[str]:
        return {"as_of", *self.parameters, *(f"{name}_start" for name in self.windows)}

    def variables(self, facts: dict[str, Any], as_of: date) -> dict[str, Any]:
        """The CEL activation: facts at top level, plus params, windows and as_of."""
        return {
            **facts,
            "params": self.parameters,
            "windows": self.window_starts(as_of),
            "as_of": as_of.isoformat(),
        }

    def window_starts(self, as_of: date) -> dict[str, str]:
        from datetime import timedelta

        return {
            name: (as_of - timedelta(days=int(days))).isoformat()
            for name, days in self.windows.items()
        }


def _criterion_source(doc: CriterionDoc) -> tuple[str, tuple[Outcome, ...]]:
    """Fold missing / cases / otherwise into one CEL ternary chain returning the chosen case."""
    branches: list[tuple[str | None, str, dict[str, str], Outcome]] = []
    if doc.missing is not None:
        m = doc.missing
        branches.append((m.if_, m.evidence, m.args, Outcome(m.result, m.reason, True)))
    for case in doc.cases:
        branches.append(
            (case.if_, case.evidence, case.args, Outcome(case.result, case.reason, False))
        )
    assert doc.otherwise is not None
    o = doc.otherwise
    branches.append((None, o.evidence, o.args, Outcome(o.result, o.reason, False)))

    def payload(index: int, evidence: str, args: dict[str, str]) -> str:
        arg_items = ", ".join(f'"{name}": ({expr})' for name, expr in args.items())
        return f'{{"case": {index}, "evidence": ({evidence}), "args": {{{arg_items}}}}}'

    source = payload(len(branches) - 1, branches[-1][1], branches[-1][2])
    for index in range(len(branches) - 2, -1, -1):
        condition, evidence, args, _ = branches[index]
        source = f"({condition}) ? {payload(index, evidence, args)} : ({source})"
    return source, tuple(branch[3] for branch in branches)


def _expressions(doc: CriterionDoc) -> Iterator[tuple[str, str]]:
    """(label, CEL source) for every expression of a criterion, for precise error messages."""
    for label, source, _guard in _guarded_expressions(doc):
        yield label, source


def _guarded_expressions(doc: CriterionDoc) -> Iterator[tuple[str, str, str | None]]:
    """(label, CEL source, guard or None): a case's evidence and args are evaluated only when
    its ``if`` holds (``latest_ecog[0]`` is safe under ``size(latest_ecog) > 0``), the
    otherwise's only when no ``if`` holds. The ``if``s themselves are dry-run unguarded, so
    that each is tried on the sample patient whatever the cases before it say."""
    named = [("missing", doc.missing)] if doc.missing else []
    named += [(f"case {i + 1}", case) for i, case in enumerate(doc.cases)]
    conditions: list[str] = []
    for label, case in named:
        assert case is not None
        yield f"{label} 'if'", case.if_, None
        yield f"{label} 'evidence'", case.evidence, case.if_
        for arg, expr in case.args.items():
            yield f"{label} arg '{arg}'", expr, case.if_
        conditions.append(case.if_)
    if doc.otherwise is not None:
        yield "otherwise 'evidence'", doc.otherwise.evidence, _none_holds(conditions)
        for arg, expr in doc.otherwise.args.items():
            yield f"otherwise arg '{arg}'", expr, _none_holds(conditions)


def _none_holds(conditions: list[str]) -> str | None:
    return " && ".join(f"!({c})" for c in conditions) or None


def _reasons(doc: CriterionDoc) -> Iterator[tuple[str, str, set[str]]]:
    named = [("missing", doc.missing)] if doc.missing else []
    named += [(f"case {i + 1}", case) for i, case in enumerate(doc.cases)]
    for label, case in named:
        assert case is not None
        yield label, case.reason, set(case.args)
    if doc.otherwise is not None:
        yield "otherwise", doc.otherwise.reason, set(doc.otherwise.args)


class _Checker:
    """Collects problems with the rule file, each prefixed by file and location."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.problems: list[str] = []

    def add(self, where: str, problem: str) -> None:
        self.problems.append(f"{self.path}: {where}: {problem}")

    def expression(
        self, where: str, source: str, known: set[str], params: dict[str, Any], windows: set[str]
    ) -> None:
        try:
            names = referenced_names(source)
        except CelSyntaxError as exc:
            self.add(where, f"CEL syntax error: {exc}")
            return
        for name in sorted(names - known):
            self.add(where, f"unknown name '{name}' (not a fact, derived value or built-in)")
        for name in _PARAM_REF.findall(source):
            if name not in params:
                self.add(where, f"unknown parameter 'params.{name}'")
        for name in _WINDOW_REF.findall(source):
            if name not in windows:
                self.add(where, f"unknown window 'windows.{name}' (a parameter with window: true)")


def _facts_read(
    sources: Sequence[str], facts: set[str], facts_of: dict[str, frozenset[str]]
) -> frozenset[str]:
    """The facts these expressions read, directly or through the derived values they name."""
    found: set[str] = set()
    for source in sources:
        try:
            names = referenced_names(source)
        except CelSyntaxError:
            continue  # reported by the checker
        found |= names & facts
        for name in names:
            found |= facts_of.get(name, frozenset())
    return frozenset(found)


def read_ruleset_doc(path: Path) -> RuleSetDoc:
    raw = read_yaml(path, "rule file")
    try:
        return RuleSetDoc.model_validate(raw)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            loc = list(err["loc"])
            where = ".".join(str(p) for p in loc)
            if len(loc) >= 2 and loc[0] == "criteria" and isinstance(raw, dict):
                with contextlib.suppress(KeyError, IndexError, TypeError):
                    where = f"criterion '{raw['criteria'][loc[1]]['id']}' ({where})"
            problems.append(f"{path}: {where}: {err['msg']}{_flow_hint(loc)}")
        raise RuleSetError(problems) from exc


def _flow_hint(loc: list[Any]) -> str:
    """A key made of a piece of CEL (``m.date)``) is an expression cut at its comma by a YAML
    {flow: mapping}: say so, the message alone does not."""
    if any(isinstance(part, str) and ("(" in part or ")" in part) for part in loc):
        return (
            " (a CEL expression with a comma inside {...} must be quoted: "
            '{scores: "nrs.map(s, s.score)"})'
        )
    return ""


def load_ruleset(
    path: Path,
    mappings_dir: Path,
    engines: Sequence[EngineName] = ENGINE_NAMES,
    *,
    shapes_checked: bool = False,
) -> RuleSet:
    """Read, check and compile a rule file (and its mapping) for ``engines``.

    Every engine by default: ``prescreen rules check``/``rules test`` and the test suite prove
    a rule set on all of them. A screening or the service compiles only for the engine it runs,
    which halves start-up (the reference engine builds its parser from its grammar first).
    ``shapes_checked``: the process that started this one checked the fields and numbers of
    the same files (``shapes``: about half a second of parsing), a worker need not again.
    """
    if not engines:
        raise ValueError("load_ruleset needs at least one engine")
    doc = read_ruleset_doc(path)
    mapper = load_mapping(mappings_dir / f"{doc.mapping}.yaml")
    check = _Checker(path)

    parameters: dict[str, Any] = {
        name: float(p.value) if isinstance(p.value, int | float) else p.value
        for name, p in doc.parameters.items()
    }
    windows = {name: float(p.value) for name, p in doc.parameters.items() if p.window}

    seen: set[str] = set()
    for criterion in doc.criteria:
        if criterion.id in seen:
            check.add(f"criterion '{criterion.id}'", "duplicate criterion id")
        seen.add(criterion.id)

    fact_names = set(mapper.facts)
    known = fact_names | BUILTIN_NAMES
    facts_of: dict[str, frozenset[str]] = {}  # derived value -> the facts it reads
    for name, source in doc.derived.items():
        if name in known:
            check.add(f"derived '{name}'", "name already used by a fact, built-in or derived value")
        check.expression(f"derived '{name}'", source, known, parameters, set(windows))
        facts_of[name] = _facts_read([source], fact_names, facts_of)
        known = known | {name}

    if not shapes_checked:
        _check_shapes(check, mapper, doc, parameters, set(windows))
    template_names = {"as_of", *parameters, *(f"{w}_start" for w in windows)}
    criteria: list[Criterion] = []
    for criterion in doc.criteria:
        where = f"criterion '{criterion.id}'"
        for label, source in _expressions(criterion):
            check.expression(f"{where} {label}", source, known, parameters, set(windows))
        for label, reason, args in _reasons(criterion):
            for placeholder in PLACEHOLDER.findall(reason):
                if placeholder not in args | template_names:
                    check.add(
                        f"{where} {label} reason",
                        f"unknown placeholder '{{{placeholder}}}' (not an arg, parameter, "
                        "window start or as_of)",
                    )
        if criterion.manual:
            criteria.append(
                Criterion(
                    criterion.id,
                    criterion.kind,
                    criterion.text,
                    True,
                    criterion.reason,
                    (),
                    "",
                    title=criterion.title or criterion.id,
                )
            )
        else:
            source, outcomes = _criterion_source(criterion)
            components = tuple(_guarded_expressions(criterion))
            criteria.append(
                Criterion(
                    criterion.id,
                    criterion.kind,
                    criterion.text,
                    False,
                    "",
                    outcomes,
                    source,
                    components,
                    _facts_read([cel for _, cel, _guard in components], fact_names, facts_of),
                    title=criterion.title or criterion.id,
                )
            )
    if check.problems:
        raise RuleSetError(check.problems)

    ruleset = RuleSet(
        id=doc.id,
        version=doc.version,
        path=path,
        trial=doc.trial,
        mapper=mapper,
        parameters=parameters,
        windows=windows,
        derived=tuple(doc.derived.items()),
        criteria=tuple(criteria),
        declared=dict(doc.parameters),
    )
    ruleset._compiled.update(_compile_checked(ruleset, engines))
    return ruleset


def _check_shapes(
    check: _Checker, mapper: Mapper, doc: RuleSetDoc, parameters: dict[str, Any], windows: set[str]
) -> None:
    """Every field and key an expression reads, checked against the facts' declared shapes
    (inside comprehensions too), and whole numbers mixed with decimals (see ``shapes``)."""
    names: dict[str, CelType] = {}
    for name, schema in mapper.facts.items():
        record = record_type(name, schema.defaults)
        names[name] = record if schema.one else ListOf(record)
    names["params"] = Record(
        "params",
        {name: value_type(value) for name, value in parameters.items()},
        label="the parameters",
        quiet=True,  # an unknown params.x has its own message
    )
    names["windows"] = Record(
        "windows", dict.fromkeys(windows, STRING), label="the windows", quiet=True
    )
    names["as_of"] = STRING
    shapes = ShapeChecker(names)

    def run(where: str, source: str) -> CelType:
        shapes.problems = []
        found = shapes.check(source)
        for problem in shapes.problems:
            check.add(where, problem)
        return found

    for name, source in doc.derived.items():
        shapes.bind(name, run(f"derived '{name}'", source))
    for criterion in doc.criteria:
        for label, source in _expressions(criterion):
            run(f"criterion '{criterion.id}' {label}", source)


def _compile_checked(
    ruleset: RuleSet, engines: Sequence[EngineName]
) -> dict[EngineName, CompiledRules]:
    """Compile for each engine, then run everything on a sample patient: the problems of all
    the engines together, or the compiled rules."""
    check = _Checker(ruleset.path)
    compiled = {
        name: _compile(ruleset, make_engine(name), check) for name in dict.fromkeys(engines)
    }
    if check.problems:
        raise RuleSetError(check.problems)
    _dry_run(ruleset, compiled, check)
    if check.problems:
        raise RuleSetError(check.problems)
    return compiled


def _compile(ruleset: RuleSet, engine: Engine, check: _Checker) -> CompiledRules:
    layers: list[list[tuple[str, Program]]] = []
    layer_of: dict[str, int] = {}
    constants: list[tuple[str, Program]] = []
    constant_names = set(BUILTIN_NAMES)
    programs: dict[str, Program] = {}
    for name, source in ruleset.derived:
        try:
            program = engine.compile(source)
        except CelSyntaxError as exc:
            check.add(f"derived '{name}'", f"{engine.name} cannot compile it: {exc}")
            continue
        references = referenced_names(source)
        if references <= constant_names:
            constants.append((name, program))
            constant_names.add(name)
            continue
        # One layer after the latest derived value it reads (the loader checked the names).
        depends = [layer_of[n] for n in references if n in layer_of]
        layer = max(depends, default=-1) + 1
        layer_of[name] = layer
        if layer == len(layers):
            layers.append([])
        layers[layer].append((name, program))
    for criterion in ruleset.criteria:
        if criterion.manual:
            continue
        try:
            programs[criterion.id] = engine.compile(criterion.source)
        except CelSyntaxError as exc:
            check.add(f"criterion '{criterion.id}'", f"{engine.name} cannot compile it: {exc}")
    return CompiledRules(
        engine, tuple(tuple(layer) for layer in layers), programs, tuple(constants)
    )


def _dry_run(
    ruleset: RuleSet, compiled_rules: dict[EngineName, CompiledRules], check: _Checker
) -> None:
    """Run every expression on a patient with one default record per fact, on each engine.

    This catches what static checks cannot: a misspelt record field, a type mismatch such as
    an int compared with a double (celpy refuses it), a derived value used the wrong way.
    Each part of a criterion runs on its own, so branches the sample would not reach run too.
    """
    sample = ruleset.mapper.schema_sample()
    variables = ruleset.variables(sample, date(2000, 1, 1))
    for engine_name, compiled in compiled_rules.items():
        engine = compiled.engine
        activation = engine.activation(variables)
        for layer in (compiled.constants, *compiled.derived):
            for name, program in layer:
                try:
                    activation.bind(name, program.run(activation))
                except CelEvaluationError as exc:
                    problem = f"fails on a sample patient ({engine_name}): {explain_failure(exc)}"
                    check.add(f"derived '{name}'", problem)
                    return
        for criterion in ruleset.criteria:
            for label, source, guard in criterion.components:
                try:
                    if (
                        guard is not None
                        and engine.to_python(engine.compile(guard).run(activation)) is not True
                    ):
                        continue  # not reached on this sample (a failing guard says so itself)
                except CelEvaluationError:
                    continue
                try:
                    engine.compile(source).run(activation)
                except CelEvaluationError as exc:
                    check.add(
                        f"criterion '{criterion.id}' {label}",
                        f"fails on a sample patient ({engine_name}): {explain_failure(exc)}",
                    )
