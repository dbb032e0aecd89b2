"""A bad rule file fails at load time, naming the file, the criterion and the problem."""

from __future__ import annotations

from collections.abc import Callable
from datetime import date
from pathlib import Path
from typing import Any

import pytest
import yaml

from service.errors import RuleSetError
from service.ruleset.evaluate import Evaluator
from service.ruleset.loader import load_ruleset
from tests.conftest import MAPPINGS_DIR, RULES_DIR


def broken(tmp_path: Path, change: Callable[[Any], object]) -> Path:
    doc = yaml.safe_load((RULES_DIR / "relieve.yaml").read_text())
    change(doc)
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def criterion(doc: dict, cid: str) -> dict:  # type: ignore[type-arg]
    return next(c for c in doc["criteria"] if c["id"] == cid)


def problems_of(path: Path) -> str:
    with pytest.raises(RuleSetError) as caught:
        load_ruleset(path, MAPPINGS_DIR)
    text = "\n".join(caught.value.problems)
    assert all(p.startswith(str(path)) for p in caught.value.problems)
    return text


def test_cel_syntax_error(tmp_path: Path) -> None:
    path = broken(
        tmp_path, lambda d: criterion(d, "age")["cases"][0].update({"if": "patient.age_min >="})
    )
    assert "criterion 'age' case 1 'if': CEL syntax error" in problems_of(path)


def test_unknown_fact_name(tmp_path: Path) -> None:
    path = broken(
        tmp_path, lambda d: criterion(d, "alive")["cases"][0].update({"if": "patients.deceased"})
    )
    assert "criterion 'alive' case 1 'if': unknown name 'patients'" in problems_of(path)


def test_unknown_parameter(tmp_path: Path) -> None:
    path = broken(
        tmp_path,
        lambda d: criterion(d, "age")["cases"][0].update(
            {"if": "patient.age_min >= params.min_age"}
        ),
    )
    assert "criterion 'age' case 1 'if': unknown parameter 'params.min_age'" in problems_of(path)


def test_unknown_window(tmp_path: Path) -> None:
    def change(d: dict) -> None:  # type: ignore[type-arg]
        d["derived"]["pain_in_window"] = "pain_scores.filter(s, s.date >= windows.min_age_years)"

    assert "unknown window 'windows.min_age_years'" in problems_of(broken(tmp_path, change))


def test_duplicate_criterion_id(tmp_path: Path) -> None:
    path = broken(tmp_path, lambda d: d["criteria"].append(dict(criterion(d, "consent"))))
    assert "criterion 'consent': duplicate criterion id" in problems_of(path)


def test_misspelt_record_field_is_caught_by_the_dry_run(tmp_path: Path) -> None:
    def change(d: dict) -> None:  # type: ignore[type-arg]
        d["derived"]["spinal_metastases"] = "conditions.filter(c, c.vertebral_metastatis)"

    text = problems_of(broken(tmp_path, change))
    assert "derived 'spinal_metastases': fails on a sample patient" in text


def test_int_double_equality_is_caught_because_celpy_refuses_it(tmp_path: Path) -> None:
    path = broken(
        tmp_path, lambda d: criterion(d, "age")["cases"][0].update({"if": "patient.age_min == 18"})
    )
    assert "criterion 'age' case 1 'if': fails on a sample patient (celpy)" in problems_of(path)


def test_unknown_reason_placeholder(tmp_path: Path) -> None:
    path = broken(
        tmp_path, lambda d: criterion(d, "age")["cases"][0].update({"reason": "aged {years}"})
    )
    assert "criterion 'age' case 1 reason: unknown placeholder '{years}'" in problems_of(path)


def test_structural_error_names_the_criterion(tmp_path: Path) -> None:
    path = broken(tmp_path, lambda d: criterion(d, "survival").update({"kind": "exclusive"}))
    assert "criterion 'survival'" in problems_of(path)


def test_all_problems_are_reported_together(tmp_path: Path) -> None:
    def change(d: dict) -> None:  # type: ignore[type-arg]
        criterion(d, "age")["cases"][0]["if"] = "nope.x"
        criterion(d, "alive")["cases"][0]["if"] = "params.nothing"

    text = problems_of(broken(tmp_path, change))
    assert "unknown name 'nope'" in text and "unknown parameter 'params.nothing'" in text


def test_a_run_compiles_for_its_engine_and_another_engine_on_first_use() -> None:
    ruleset = load_ruleset(RULES_DIR / "relieve.yaml", MAPPINGS_DIR, ("cel",))
    assert set(ruleset._compiled) == {"cel"}
    facts = ruleset.mapper.schema_sample()
    as_of = date(2026, 6, 15)
    on_cel = Evaluator(ruleset, "cel").evaluate("p", facts, as_of)
    on_celpy = Evaluator(ruleset, "celpy").evaluate("p", facts, as_of)  # compiled now
    assert set(ruleset._compiled) == {"cel", "celpy"}
    assert on_celpy == on_cel


def test_a_rule_only_the_other_engine_refuses_fails_when_that_engine_is_first_used(
    tmp_path: Path,
) -> None:
    path = broken(
        tmp_path, lambda d: criterion(d, "age")["cases"][0].update({"if": "patient.age_min == 18"})
    )
    ruleset = load_ruleset(path, MAPPINGS_DIR, ("cel",))  # cel takes int == double
    with pytest.raises(RuleSetError) as caught:
        ruleset.compiled("celpy")
    assert any("fails on a sample patient (celpy)" in p for p in caught.value.problems)
    assert "celpy" not in ruleset._compiled
