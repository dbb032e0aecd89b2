"""Rule parameters set for a run: ``--set`` is checked against the rule file (kind, window,
one_of, min/max), refused with --write-back, recorded in the outputs; the rule files' min/max."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from service.errors import ConfigError
from service.ruleset.loader import RuleSet
from service.ruleset.model import ParameterDoc
from service.ruleset.overrides import apply_settings, parameters_set, with_overrides
from tests.conftest import MAPPINGS_DIR, RULES_DIR, SAMPLE_DIR
from tests.helpers import read_ndjson, screen_cli

# --- the rule-file schema ----------------------------------------------------------------------


def test_min_and_max_bound_a_number_and_hold_the_rule_files_value() -> None:
    assert ParameterDoc(value=4, min=0, max=10).max == 10
    for bad, message in (
        ({"value": 11, "min": 0, "max": 10}, "outside min/max"),
        ({"value": -1, "min": 0}, "outside min/max"),
        ({"value": 4, "min": 5, "max": 3}, "above max"),
        ({"value": ">", "one_of": [">", ">="], "min": 0}, "bound a number"),
    ):
        with pytest.raises(ValidationError, match=message):
            ParameterDoc.model_validate(bad)


def test_a_rule_file_with_a_value_outside_its_range_names_the_parameter(tmp_path: Path) -> None:
    from service.errors import RuleSetError
    from service.ruleset.loader import load_ruleset

    text = (RULES_DIR / "relieve.yaml").read_text()
    broken = text.replace("    value: 4\n    min: 0", "    value: 14\n    min: 0")
    assert broken != text
    (tmp_path / "relieve.yaml").write_text(broken)
    with pytest.raises(RuleSetError) as caught:
        load_ruleset(tmp_path / "relieve.yaml", MAPPINGS_DIR, ("cel",))
    assert any("nrs_threshold" in p and "outside min/max" in p for p in caught.value.problems)


def test_the_shipped_ranges_are_those_of_the_specs(relieve: RuleSet) -> None:
    from service.ruleset.loader import load_ruleset

    ssrs = load_ruleset(RULES_DIR / "ssrs.yaml", MAPPINGS_DIR, ("cel",))
    ranged = {
        (rs.id, name): (p.min, p.max)
        for rs in (relieve, ssrs)
        for name, p in rs.declared.items()
        if p.min is not None or p.max is not None
    }
    assert ranged == {
        ("relieve", "nrs_threshold"): (0, 10),  # NRS 0-10
        ("ssrs", "kps_min"): (0, 100),  # KPS 0-100
        ("ssrs", "rpa_kps_cut"): (0, 100),
    }
    assert ssrs.declared["treatable_from"].one_of == ssrs.declared["treatable_to"].one_of
    assert len(ssrs.declared["treatable_from"].one_of or []) == 26  # C1 ... Co


# --- applying values ---------------------------------------------------------------------------


def test_a_value_set_for_the_run_reaches_params_and_windows(relieve: RuleSet) -> None:
    (changed,) = apply_settings([relieve], ["nrs_threshold=6", "pain_window_days=14"])
    assert changed.parameters["nrs_threshold"] == 6.0
    assert changed.windows["pain_window_days"] == 14.0
    assert relieve.parameters["nrs_threshold"] == 4.0  # the loaded rule set is untouched
    assert changed.run_version == "1.1.0+nrs_threshold=6+pain_window_days=14"
    assert changed.version == relieve.version == relieve.run_version == "1.1.0"
    assert parameters_set(changed) == {
        "nrs_threshold": {"value": 6.0, "rule_file": 4.0},
        "pain_window_days": {"value": 14.0, "rule_file": 30.0},
    }


def test_the_rule_files_own_value_changes_nothing(relieve: RuleSet) -> None:
    assert with_overrides(relieve, {"nrs_threshold": 4.0}) is relieve
    (same,) = apply_settings([relieve], ["nrs_operator=>"])
    assert same is relieve


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("nrs_treshold=5", "has no parameter 'nrs_treshold'"),
        ("nrs_threshold=11", "'nrs_threshold' is out of range: at most 10"),
        ("nrs_threshold=-1", "'nrs_threshold' is out of range: at least 0"),
        ("nrs_threshold=high", "'nrs_threshold' is a number"),
        ("nrs_threshold=nan", "'nrs_threshold' is a number"),
        ("pain_window_days=7.5", "'pain_window_days' is a window"),
        ("pain_window_days=-7", "'pain_window_days' is a window"),
        ("nrs_operator=<", "'nrs_operator' is one of '>', '>='"),
        ("nrs_threshold", "takes NAME=VALUE"),
        ("ssrs.kps_min=60", "'ssrs' is not screened in this run"),
    ],
)
def test_a_bad_value_is_refused_naming_the_parameter(
    relieve: RuleSet, setting: str, message: str
) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")) as caught:
        apply_settings([relieve], [setting])
    assert str(caught.value).startswith("--set ")
    assert setting.split("=")[0].split(".")[-1] in str(caught.value)


def test_a_portfolio_names_the_trial_of_each_value(relieve: RuleSet) -> None:
    from service.ruleset.loader import load_ruleset

    ssrs = load_ruleset(RULES_DIR / "ssrs.yaml", MAPPINGS_DIR, ("cel",))
    with pytest.raises(ConfigError, match=r"name the trial, as in --set relieve\.min_age_years"):
        apply_settings([relieve, ssrs], ["min_age_years=21"])
    new_relieve, new_ssrs = apply_settings(
        [relieve, ssrs], ["relieve.min_survival_months=2", "ssrs.treatable_from=T1"]
    )
    assert new_relieve.parameters["min_survival_months"] == 2.0
    assert new_ssrs.parameters["treatable_from"] == "T1"
    with pytest.raises(ConfigError, match="set twice"):
        apply_settings([relieve, ssrs], ["ssrs.kps_min=60", "ssrs.kps_min=50"])
    with pytest.raises(ConfigError, match="'treatable_from' is one of"):
        apply_settings([relieve, ssrs], ["ssrs.treatable_from=X9"])


# --- the command line --------------------------------------------------------------------------


def run(out: Path, *extra: str) -> int:
    return screen_cli("--source", str(SAMPLE_DIR), out, *extra)


@pytest.mark.parametrize(
    ("extra", "named"),
    [
        (["--set", "nrs_treshold=5"], "nrs_treshold"),
        (["--set", "nrs_threshold=12"], "nrs_threshold"),
        (["--set", "min_survival_months=two"], "min_survival_months"),
        (
            [
                "--set",
                "min_survival_months=2",
                "--fhir-url",
                "http://127.0.0.1:9/fhir",
                "--write-back",
            ],
            "min_survival_months",
        ),
    ],
)
def test_the_command_stops_with_exit_2_naming_the_parameter(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], named: str
) -> None:
    out = tmp_path / "out"
    assert run(out, *extra) == 2
    error = capsys.readouterr().err
    assert f"--set {named}" in error
    assert not out.exists()  # stopped before reading anything


def test_write_back_is_refused_before_any_server_is_asked(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Port 9 (discard) answers nothing: a run that tried to connect would fail differently.
    code = screen_cli(
        "--fhir-url",
        "http://127.0.0.1:9/fhir",
        tmp_path / "o",
        "--write-back",
        "--set",
        "nrs_threshold=5",
    )
    assert code == 2
    assert "never written to the EHR" in capsys.readouterr().err


def test_the_outputs_record_the_values_set(tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert run(out, "--set", "min_survival_months=2", "--set", "nrs_threshold=6") == 0
    summary = json.loads((out / "summary.json").read_text())
    version = "1.1.0+min_survival_months=2+nrs_threshold=6"
    assert summary["ruleset_version"] == version
    assert summary["parameters_set"] == {
        "min_survival_months": {"value": 2.0, "rule_file": 3.0},
        "nrs_threshold": {"value": 6.0, "rule_file": 4.0},
    }
    verdicts = read_ndjson(out / "verdicts.ndjson")
    assert {v["ruleset"]["version"] for v in verdicts} == {version}
    reasons = {v["criteria"]["pain-nrs"]["reason"] for v in verdicts}
    assert any("> 6" in reason for reason in reasons)
    (study,) = read_ndjson(out / "ResearchStudy.ndjson")
    assert version in study["note"][0]["text"]
    assert "nrs_threshold 6 (rule file: 4)" in study["note"][0]["text"]


def test_a_run_without_changes_writes_what_a_plain_run_writes(tmp_path: Path) -> None:
    plain, same = tmp_path / "plain", tmp_path / "same"
    assert run(plain) == 0
    assert run(same, "--set", "nrs_threshold=4", "--set", "pain_window_days=30") == 0
    for name in ("verdicts.ndjson", "ResearchStudy.ndjson", "ResearchSubject.ndjson"):
        assert (plain / name).read_bytes() == (same / name).read_bytes()
    summary = json.loads((same / "summary.json").read_text())
    assert "parameters_set" not in summary and summary["ruleset_version"] == "1.1.0"
