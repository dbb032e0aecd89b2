"""Rule parameters set for one run (``prescreen screen --set``, ``prescreen whatif --vary``).

A value given on the command line is checked against the parameter as the rule file declares
it: a number for a number (a whole number of days, 0 or more, for a window), one of ``one_of``
for a choice, within ``min``/``max`` when the rule file gives them. A problem names the option
and the parameter and stops the run before anything is read (exit 2).

The result is a copy of the rule set with other parameter values: its CEL programs are the same
(parameters reach them at evaluation, as ``params`` and ``windows``), and its ``run_version``
names what was set, so every output of the run says that it does not follow the protocol.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING

from service.errors import ConfigError
from service.ruleset.model import ParameterDoc

if TYPE_CHECKING:
    from service.ruleset.loader import RuleSet

Value = float | str
Overrides = tuple[tuple[str, Value], ...]  # the parameters set for a run, by name


def version_suffix(overrides: Iterable[tuple[str, Value]]) -> str:
    """``+name=value`` for each parameter set, in name order: ``+min_survival_months=2``."""
    return "".join(f"+{name}={value_text(value)}" for name, value in sorted(overrides))


def value_text(value: Value) -> str:
    """A value as a person writes it: 2 rather than 2.0."""
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else repr(value)
    return value


def split_assignment(text: str, option: str) -> tuple[str | None, str, str]:
    """``NAME=VALUE`` or ``TRIAL.NAME=VALUE`` into (trial or None, name, value text)."""
    target, equals, value = text.partition("=")
    target = target.strip()
    if not equals or not target:
        raise ConfigError(f"{option} takes NAME=VALUE (or TRIAL.NAME=VALUE), not '{text}'")
    trial, dot, name = target.rpartition(".")
    if dot and (not trial or not name):
        raise ConfigError(f"{option} takes NAME=VALUE (or TRIAL.NAME=VALUE), not '{text}'")
    return (trial if dot else None), name, value.strip()


def parameter_value(ruleset: RuleSet, name: str, text: str, option: str) -> Value:
    """``text`` as a value of the parameter ``name``, checked against its declaration."""
    declared = ruleset.declared.get(name)
    given = f"{option} {name}={text}"
    if declared is None:
        known = ", ".join(sorted(ruleset.declared)) or "none"
        raise ConfigError(
            f"{given}: the rule set '{ruleset.id}' has no parameter '{name}' (its parameters: "
            f"{known})"
        )
    if not declared.is_number:
        return _text_value(declared, name, text, given)
    return _number_value(declared, name, text, given)


def _text_value(declared: ParameterDoc, name: str, text: str, given: str) -> str:
    if declared.one_of is not None and text not in declared.one_of:
        choices = ", ".join(f"'{choice}'" for choice in declared.one_of)
        raise ConfigError(f"{given}: '{name}' is one of {choices}")
    if not text:
        raise ConfigError(f"{given}: '{name}' needs a value")
    return text


def _number_value(declared: ParameterDoc, name: str, text: str, given: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise ConfigError(
            f"{given}: '{name}' is a number (the rule file's value is "
            f"{value_text(float(declared.value))})"
        )
    if declared.window and (value < 0 or not value.is_integer()):
        raise ConfigError(f"{given}: '{name}' is a window: a whole number of days, 0 or more")
    if declared.min is not None and value < declared.min:
        raise ConfigError(
            f"{given}: '{name}' is out of range: at least {value_text(declared.min)}"
            f"{_range_note(declared)}"
        )
    if declared.max is not None and value > declared.max:
        raise ConfigError(
            f"{given}: '{name}' is out of range: at most {value_text(declared.max)}"
            f"{_range_note(declared)}"
        )
    return value


def _range_note(declared: ParameterDoc) -> str:
    low = "" if declared.min is None else value_text(declared.min)
    high = "" if declared.max is None else value_text(declared.max)
    return f" (the rule file allows {low}..{high})"


def with_overrides(ruleset: RuleSet, values: Mapping[str, Value]) -> RuleSet:
    """The rule set with these parameter values (already checked by ``parameter_value``).

    A value equal to the rule file's changes nothing and is not recorded: the run then writes
    what a run without it writes, byte for byte.
    """
    changed = {
        name: value
        for name, value in values.items()
        if value != _file_value(ruleset.declared[name])
    }
    if not changed and not ruleset.overrides:
        return ruleset
    parameters = {**ruleset.parameters, **changed}
    overrides = {**dict(ruleset.overrides), **changed}
    return dataclasses.replace(
        ruleset,
        parameters=parameters,
        windows={name: float(parameters[name]) for name in ruleset.windows},
        overrides=tuple(sorted(overrides.items())),
    )


def protocol_values(ruleset: RuleSet, names: Iterable[str]) -> dict[str, Value]:
    """The rule file's own values of these parameters."""
    return {name: _file_value(ruleset.declared[name]) for name in names}


def _file_value(declared: ParameterDoc) -> Value:
    return float(declared.value) if declared.is_number else str(declared.value)


def apply_settings(
    rulesets: Sequence[RuleSet], settings: Sequence[str], option: str = "--set"
) -> list[RuleSet]:
    """The rule sets of a run with ``--set`` values applied (``NAME=VALUE`` for one trial,
    ``TRIAL.NAME=VALUE`` in a portfolio, where a bare name would be ambiguous)."""
    if not settings:
        return list(rulesets)
    by_id = {ruleset.id: ruleset for ruleset in rulesets}
    values: dict[str, dict[str, Value]] = {ruleset.id: {} for ruleset in rulesets}
    for text in settings:
        trial, name, value_text_ = split_assignment(text, option)
        if trial is None:
            if len(rulesets) > 1:
                raise ConfigError(
                    f"{option} {name}={value_text_}: several trials are screened; name the "
                    f"trial, as in {option} {rulesets[0].id}.{name}={value_text_}"
                )
            target = rulesets[0]
        elif trial in by_id:
            target = by_id[trial]
        else:
            raise ConfigError(
                f"{option} {trial}.{name}={value_text_}: '{trial}' is not screened in this run "
                f"(trials: {', '.join(by_id)})"
            )
        value = parameter_value(target, name, value_text_, option)
        if name in values[target.id]:
            raise ConfigError(f"{option} {name}: set twice for '{target.id}'")
        values[target.id][name] = value
    return [with_overrides(ruleset, values[ruleset.id]) for ruleset in rulesets]


def parameters_set(ruleset: RuleSet) -> dict[str, dict[str, Value]]:
    """What summary.json records of a run's ``--set``: each value and the rule file's."""
    return {
        name: {"value": value, "rule_file": _file_value(ruleset.declared[name])}
        for name, value in ruleset.overrides
    }
