"""Feasibility on the sample hospital: the last day's counts are a screening's, each month's
new candidates come from a screening at the month's end, and the files say the same."""

from __future__ import annotations

import csv
import json
from datetime import date, timedelta
from pathlib import Path

import pytest

from service.cli import main
from service.ruleset.loader import RuleSet, load_ruleset
from service.screening.feasibility import count_folder, months
from service.screening.feasibility_report import FeasibilityReport
from service.screening.funnel import attrition
from tests.conftest import MAPPINGS_DIR, RULES_DIR, SAMPLE_DIR
from tests.helpers import AS_OF, read_ndjson

END = date.fromisoformat(AS_OF)
START = date(2026, 3, 1)


def candidates_on(day: date, out: Path, trial: str = "relieve") -> set[str]:
    command = ["screen", "--trial", trial, "--source", str(SAMPLE_DIR), "--as-of", day.isoformat()]
    assert main([*command, "--out", str(out), "--no-progress"]) == 0
    verdicts = read_ndjson(out / "verdicts.ndjson")
    return {v["patient"] for v in verdicts if v["verdict"] == "candidate"}


def test_months_end_on_their_last_day_and_the_last_one_on_to() -> None:
    assert [(m.label, m.end.isoformat()) for m in months(date(2025, 12, 10), END)] == [
        ("2025-12", "2025-12-31"),
        ("2026-01", "2026-01-31"),
        ("2026-02", "2026-02-28"),
        ("2026-03", "2026-03-31"),
        ("2026-04", "2026-04-30"),
        ("2026-05", "2026-05-31"),
        ("2026-06", "2026-06-15"),
    ]


def test_counts_are_those_of_screenings_on_each_day(relieve: RuleSet, tmp_path: Path) -> None:
    ssrs = load_ruleset(RULES_DIR / "ssrs.yaml", MAPPINGS_DIR, ("cel",))
    counts = count_folder([relieve, ssrs], SAMPLE_DIR, START, END)
    for trial in counts.trials:
        name = trial.ruleset.id
        candidates_on(END, tmp_path / name, name)
        verdicts = read_ndjson(tmp_path / name / "verdicts.ndjson")
        summary = json.loads((tmp_path / name / "summary.json").read_text())
        assert {v: trial.verdicts[v] for v in summary["verdicts"]} == summary["verdicts"]
        criteria = [(c.id, c.kind, c.text) for c in trial.ruleset.criteria]
        assert trial.funnel == attrition(criteria, verdicts)
        # New candidates: candidates at a month's end who were none before in the period.
        seen = candidates_on(START - timedelta(days=1), tmp_path / f"{name}-before", name)
        expected = []
        for month in counts.months:
            now = candidates_on(month.end, tmp_path / f"{name}-{month.label}", name)
            expected.append(len(now - seen))
            seen |= now
        assert trial.new_candidates == expected
        assert sum(expected) > 0


def test_ages_are_those_of_each_months_end(relieve: RuleSet, tmp_path: Path) -> None:
    """A candidate of May who turns 18 on June 10 is a new candidate of June instead."""
    may, june = date(2026, 5, 31), END
    before = count_folder([relieve], SAMPLE_DIR, START, END)
    labels = [m.label for m in before.months]
    in_may = candidates_on(may, tmp_path / "may") - candidates_on(
        date(2026, 4, 30), tmp_path / "april"
    )
    assert in_may, "the sample has new candidates in May"
    young = sorted(in_may)[0].removeprefix("Patient/")
    source = tmp_path / "source"
    source.mkdir()
    for path in SAMPLE_DIR.glob("*.ndjson"):
        (source / path.name).write_bytes(path.read_bytes())
    lines = []
    for line in (SAMPLE_DIR / "Patient.ndjson").read_text().splitlines():
        patient = json.loads(line)
        if patient["id"] == young:
            patient["birthDate"] = "2008-06-10"
        lines.append(json.dumps(patient))
    (source / "Patient.ndjson").write_text("\n".join(lines) + "\n")
    (trial,) = count_folder([relieve], source, START, END).trials
    (earlier,) = before.trials
    assert trial.verdicts == earlier.verdicts  # 18 on the last day either way
    assert trial.new_candidates[labels.index("2026-05")] == (
        earlier.new_candidates[labels.index("2026-05")] - 1
    )
    assert trial.new_candidates[labels.index("2026-06")] == (
        earlier.new_candidates[labels.index("2026-06")] + 1
    )
    assert before.end == june


@pytest.fixture(scope="module")
def report_files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("feasibility")
    command = ["feasibility", "--trial", "relieve,ssrs", "--source", str(SAMPLE_DIR)]
    command += ["--from", "2025-07-01", "--to", AS_OF, "--out", str(out), "--no-progress"]
    assert main(command) == 0
    return out


def test_the_files_show_the_same_published_counts(report_files: Path) -> None:
    data = json.loads((report_files / "feasibility.json").read_text())
    report = FeasibilityReport.from_json(data)
    assert [t.trial for t in report.trials] == ["relieve", "ssrs"]
    relieve = report.trials[0]
    assert relieve.verdicts["screened"].count == 300
    assert relieve.verdicts["candidate"].count == 21
    assert relieve.months[0].month == "2025-07" and len(relieve.months) == 12
    assert {m.new_candidates.shown for m in relieve.months[:10]} == {"<5"}
    rows = list(csv.DictReader((report_files / "feasibility.csv").open()))
    shown = {(r["trial"], r["section"], r["item"]): r for r in rows}
    for trial in report.trials:
        for month in trial.months:
            row = shown[(trial.trial, "new_candidates", month.month)]
            assert row["shown"] == month.new_candidates.shown
            assert row["count"] == (
                "" if month.new_candidates.count is None else str(month.new_candidates.count)
            )
    html = (report_files / "feasibility.html").read_text()
    assert html.count("<svg") == 4 and "&lt;5" in html
    fhir = json.loads((report_files / "MeasureReport.json").read_text())
    populations = fhir["group"][0]["population"]
    assert [p["code"]["coding"][-1]["code"] for p in populations][1:-1] == [
        s.label for s in relieve.funnel[1:-1]
    ]
    assert (report_files / "feasibility.png").stat().st_size > 1000


def test_no_file_holds_a_hidden_count(report_files: Path, relieve: RuleSet) -> None:
    counts = count_folder([relieve], SAMPLE_DIR, date(2025, 7, 1), END)
    hidden = [n for n in counts.trials[0].new_candidates[:10]]
    assert set(hidden) == {0}  # what the files show as <5
    rows = list(csv.DictReader((report_files / "feasibility.csv").open()))
    for row in rows:
        if row["hidden"]:
            assert row["count"] == "" and row["shown"] in ("<5", "suppressed")


def test_a_period_that_ends_before_it_starts_stops_with_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    command = ["feasibility", "--trial", "relieve", "--source", str(SAMPLE_DIR)]
    command += ["--from", "2026-07-01", "--to", AS_OF, "--out", str(tmp_path / "out")]
    assert main(command) == 2
    assert "--from 2026-07-01 is after --to 2026-06-15" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
