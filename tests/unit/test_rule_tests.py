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
