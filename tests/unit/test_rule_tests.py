"""The rule tests shipped as data pass on both engines, and the runner can fail."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from service.ruleset.loader import RuleSet, load_ruleset
from service.screening.ruletests import run_rule_tests
from tests.conftest import MAPPINGS_DIR, RULES_DIR

TESTS = RULES_DIR / "relieve.tests.yaml"


def test_relieve_rule_tests_pass_on_both_engines_with_full_coverage(relieve: RuleSet) -> None:
    report = run_rule_tests(relieve, TESTS)
    assert report.engines == ("cel", "celpy")
    assert report.failures == [] and report.disagreements == [] and report.uncovered == []
    assert report.tests >= 50


def test_a_wrong_expectation_fails_on_every_engine(relieve: RuleSet, tmp_path: Path) -> None:
    suite = yaml.safe_load(TESTS.read_text())
    suite["tests"][0]["expect"]["criteria"]["age"] = "not_met"
    path = tmp_path / "t.yaml"
    path.write_text(yaml.safe_dump(suite))
    report = run_rule_tests(relieve, path)
    assert not report.ok
    assert {f.message.split("]")[0] for f in report.failures} == {"[cel", "[celpy"}


def test_missing_coverage_is_a_failure(relieve: RuleSet, tmp_path: Path) -> None:
    suite = yaml.safe_load(TESTS.read_text())
    suite["tests"] = [t for t in suite["tests"] if not _expects_confounder(t)]
    path = tmp_path / "t.yaml"
    path.write_text(yaml.safe_dump(suite))
    report = run_rule_tests(relieve, path)
    assert report.uncovered == ["criterion 'confounding-pain' result 'met'"]


def _expects_confounder(test: dict[str, Any]) -> bool:
    expected = test["expect"].get("criteria", {}).get("confounding-pain")
    return expected == "met" or (isinstance(expected, dict) and expected.get("result") == "met")


def test_ssrs_rule_tests_pass_on_both_engines_with_full_coverage() -> None:
    ssrs = load_ruleset(RULES_DIR / "ssrs.yaml", MAPPINGS_DIR)
    report = run_rule_tests(ssrs, RULES_DIR / "ssrs.tests.yaml")
    assert report.engines == ("cel", "celpy")
    assert report.failures == [] and report.disagreements == [] and report.uncovered == []
    assert report.tests >= 50


def test_an_evaluation_error_names_the_criterion_the_expression_and_what_failed(
    tmp_path: Path,
) -> None:
    # Patients without any NRS score have no pain_scores[0]: the sample patient has one, so
    # only a real patient finds it.
    doc = yaml.safe_load((RULES_DIR / "relieve.yaml").read_text())
    pain = next(c for c in doc["criteria"] if c["id"] == "pain-nrs")
    pain["cases"][0]["if"] = "pain_scores[0].score > 100.0 || size(nrs_above) > 0"
    rules = tmp_path / "relieve.yaml"
    rules.write_text(yaml.safe_dump(doc, sort_keys=False))
    suite = yaml.safe_load(TESTS.read_text())
    without_scores = ("entered-in-error-score-is-ignored", "vas-is-not-nrs")
    suite["tests"] = [t for t in suite["tests"] if t["id"] in without_scores]
    tests = tmp_path / "t.yaml"
    tests.write_text(yaml.safe_dump(suite))
    report = run_rule_tests(load_ruleset(rules, MAPPINGS_DIR), tests)
    messages = {f.message for f in report.failures}
    for engine in ("cel", "celpy"):
        assert (
            f"[{engine}] pain-nrs: could not be evaluated: case 1 'if' (pain_scores[0].score > "
            "100.0 || size(nrs_above) > 0): an index past the end of a list (or another invalid "
            "argument); expected unknown"
        ) in messages


def test_results_only_failing_tests_expect_are_not_yet_covered_rather_than_uncovered(
    relieve: RuleSet, tmp_path: Path
) -> None:
    suite = yaml.safe_load(TESTS.read_text())
    suite["tests"] = [t for t in suite["tests"] if _expects_confounder(t)] + suite["tests"][:3]
    for test in suite["tests"]:
        if _expects_confounder(test):
            test["expect"]["verdict"] = "candidate"  # wrong: a confounder excludes
    path = tmp_path / "t.yaml"
    path.write_text(yaml.safe_dump(suite))
    report = run_rule_tests(relieve, path)
    assert report.failures and not report.ok
    gap = "criterion 'confounding-pain' result 'met'"
    assert gap in report.unconfirmed and gap not in report.uncovered
