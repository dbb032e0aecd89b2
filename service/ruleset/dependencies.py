"""Which criteria of a rule set may change when some parameters change.

A criterion's result is a function of the facts, as_of and the parameters its expressions read,
directly (``params.x``, ``windows.x``) or through the derived values they read. A criterion that
reads none of the given parameters, on any path, gives the same result whatever their values:
what-if evaluates it once, under the rule file's values, and every other combination inherits
it (an exclusion it decides excludes the patient under every combination).

An expression that reads ``params`` or ``windows`` other than by a plain field name (an index,
the whole map) is taken to read every parameter. ``restricted`` gives the rule set reduced to
the criteria that may change, for evaluating only them.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable

from service.ruleset.engines import EngineName, referenced_names
from service.ruleset.loader import RuleSet

_FIELD = re.compile(r"\b(params|windows)\s*\.\s*([A-Za-z_]\w*)")
_WHOLE = re.compile(r"\b(params|windows)\b(?!\s*\.\s*[A-Za-z_])")


def _reads(source: str, names: frozenset[str]) -> bool:
    """Whether the expression reads one of these parameters itself."""
    if _WHOLE.search(source):
        return True
    return any(name in names for _, name in _FIELD.findall(source))


def dependent_criteria(ruleset: RuleSet, parameters: Iterable[str]) -> frozenset[str]:
    """Ids of the criteria whose result may depend on these parameters."""
    names = frozenset(parameters)
    dependent_values: set[str] = set()
    for name, source in ruleset.derived:  # in order: a value reads only earlier ones
        if _reads(source, names) or referenced_names(source) & dependent_values:
            dependent_values.add(name)
    return frozenset(
        criterion.id
        for criterion in ruleset.criteria
        if not criterion.manual
        and (
            _reads(criterion.source, names)
            or bool(referenced_names(criterion.source) & dependent_values)
        )
    )


def facts_read(ruleset: RuleSet) -> frozenset[str]:
    """The facts the rule set's expressions read: a patient's other facts can be left out
    of its evaluation (the engine then converts less of them)."""
    names: set[str] = set()
    for _, source in ruleset.derived:
        names |= referenced_names(source)
    for criterion in ruleset.criteria:
        if not criterion.manual:
            names |= referenced_names(criterion.source)
    return frozenset(names) & frozenset(ruleset.mapper.facts)


def restricted(ruleset: RuleSet, criteria: Iterable[str], engine: EngineName) -> RuleSet:
    """The rule set reduced to these criteria and the derived values they read (on any path),
    for ``engine``: its programs are the full rule set's, none compiled again. Evaluating it
    gives these criteria's results, each exactly as the full rule set gives it."""
    wanted = frozenset(criteria)
    kept = tuple(c for c in ruleset.criteria if c.id in wanted)
    needed: set[str] = set()
    for criterion in kept:
        needed |= referenced_names(criterion.source)
    for name, source in reversed(ruleset.derived):  # a value reads only earlier ones
        if name in needed:
            needed |= referenced_names(source)
    full = ruleset.compiled(engine)
    layers = tuple(
        layer
        for layer in (tuple((n, p) for n, p in layer if n in needed) for layer in full.derived)
        if layer
    )
    compiled = dataclasses.replace(
        full,
        derived=layers,
        criteria={cid: p for cid, p in full.criteria.items() if cid in wanted},
    )
    return dataclasses.replace(
        ruleset,
        criteria=kept,
        derived=tuple((n, s) for n, s in ruleset.derived if n in needed),
        _compiled={engine: compiled},
    )
