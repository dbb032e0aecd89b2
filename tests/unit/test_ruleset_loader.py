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


def test_a_misspelt_record_field_is_named_with_its_fact_and_the_closest_field(
    tmp_path: Path,
) -> None:
    def change(d: dict) -> None:  # type: ignore[type-arg]
        d["derived"]["spinal_metastases"] = "conditions.filter(c, c.vertebral_metastatis)"

    text = problems_of(broken(tmp_path, change))
    assert (
        "derived 'spinal_metastases': unknown field 'vertebral_metastatis' of a conditions "
        "record ('c.vertebral_metastatis') (did you mean 'vertebral_metastasis'?)"
    ) in text


def test_a_misspelt_field_inside_a_loop_the_sample_never_enters_is_caught(tmp_path: Path) -> None:
    # pain_in_window drops the sample's one undated score: a dry run never reads s.scroe.
    def change(d: dict) -> None:  # type: ignore[type-arg]
        criterion(d, "pain-nrs")["cases"][0]["if"] = "pain_in_window.exists(s, s.scroe > 4.0)"
        d["derived"]["nrs_above"] = "latest_nrs.filter(s, s.has_score && s.scroe > 4.0)"

    text = problems_of(broken(tmp_path, change))
    assert (
        "criterion 'pain-nrs' case 1 'if': unknown field 'scroe' of a pain_scores record "
        "('s.scroe') (did you mean 'score'?); its fields: date, has_score, instant, pain_types, "
        "ref, score"
    ) in text
    assert "derived 'nrs_above': unknown field 'scroe' of a pain_scores record" in text


def test_a_field_read_off_a_whole_list_says_to_take_one_record(tmp_path: Path) -> None:
    def change(d: dict) -> None:  # type: ignore[type-arg]
        criterion(d, "pain-nrs")["cases"][0]["if"] = "nrs_above.score > 4.0"

    text = problems_of(broken(tmp_path, change))
    assert (
        "criterion 'pain-nrs' case 1 'if': 'nrs_above.score' reads a field of a list of "
        "pain_scores records: take one record"
    ) in text


def test_a_whole_number_against_a_decimal_says_to_write_it_as_a_decimal(tmp_path: Path) -> None:
    def change(d: dict) -> None:  # type: ignore[type-arg]
        criterion(d, "age")["cases"][0]["if"] = "patient.age_min == 18"
        d["derived"]["nrs_above"] = "latest_nrs.filter(s, s.has_score && s.score > 4)"

    text = problems_of(broken(tmp_path, change))
    assert (
        "criterion 'age' case 1 'if': 'patient.age_min == 18' mixes the whole number 18 with "
        "patient.age_min, a decimal number (numbers from the data and the parameters are "
        "decimals); write the number as a decimal: 18.0"
    ) in text
    assert "derived 'nrs_above': 's.score > 4' mixes the whole number 4" in text
    assert "celpy" not in text  # said before any engine ran it


def test_a_case_s_args_are_dry_run_only_where_its_if_holds(tmp_path: Path) -> None:
    # The sample's one NRS score is undated, so pain_in_window is empty there: the guard is
    # what makes pain_in_window[0] safe, in a dry run as in a screening.
    def change(d: dict) -> None:  # type: ignore[type-arg]
        case = criterion(d, "pain-nrs")["cases"][0]
        case["if"] = "size(pain_in_window) > 0 && size(nrs_above) > 0"
        case["args"]["first"] = "pain_in_window[0].score"
        case["reason"] += " (first {first})"

    load_ruleset(broken(tmp_path, change), MAPPINGS_DIR)  # no dry-run error
    # Where the case's if holds on the sample (scores recorded, none in the window), the same
    # arg fails: the dry run still tries what a case would evaluate.
    unguarded = broken(
        tmp_path,
        lambda d: criterion(d, "pain-nrs")["cases"][1].update(
            {"args": {"first": "pain_in_window[0].score"}}
        ),
    )
    text = problems_of(unguarded)
    assert "criterion 'pain-nrs' case 2 arg 'first': fails on a sample patient" in text
    assert "an index past the end of a list" in text


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
    # An element of a mixed list has no type a check can know: the dry run finds the double
    # compared with an int, on the engine that refuses it, and says it plainly.
    path = broken(
        tmp_path,
        lambda d: criterion(d, "age")["cases"][0].update(
            {"if": "[patient.age_min, 'years'][0] == 18"}
        ),
    )
    ruleset = load_ruleset(path, MAPPINGS_DIR, ("cel",))  # cel takes int == double
    with pytest.raises(RuleSetError) as caught:
        ruleset.compiled("celpy")
    (problem,) = caught.value.problems
    assert "criterion 'age' case 1 'if': fails on a sample patient (celpy): a whole number " in (
        problem
    )
    assert "write the number as a decimal, 4.0 rather than 4" in problem
    assert "celpy" not in ruleset._compiled


def test_a_cel_expression_cut_at_its_comma_by_a_yaml_flow_mapping_says_to_quote_it(
    tmp_path: Path,
) -> None:
    text = (RULES_DIR / "relieve.yaml").read_text()
    old = 'args: {scores: "nrs_above.map(s, [s.pain_types, s.score])"}'
    assert old in text
    path = tmp_path / "broken.yaml"
    path.write_text(text.replace(old, "args: {scores: nrs_above.map(s, s.score)}"))
    assert "must be quoted" in problems_of(path)
