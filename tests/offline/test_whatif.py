"""What-if through the command line on the sample hospital: one reading, every combination,
the protocol's row equal to a plain screening, each row equal to a screening with --set."""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import pytest

from service.cli import main
from tests.conftest import SAMPLE_DIR
from tests.helpers import AS_OF, read_ndjson, screen_cli


def whatif(out: Path, *vary: str, trial: str = "relieve") -> int:
    command = ["whatif", "--trial", trial, "--source", str(SAMPLE_DIR), "--as-of", AS_OF]
    for item in vary:
        command += ["--vary", item]
    return main([*command, "--out", str(out), "--no-progress"])


def screening(out: Path, *extra: str) -> dict[str, str]:
    """A plain screening's verdict per patient reference."""
    assert screen_cli("--source", str(SAMPLE_DIR), out, *extra) == 0
    return {v["patient"]: v["verdict"] for v in read_ndjson(out / "verdicts.ndjson")}


def with_verdict(verdicts: dict[str, str], verdict: str) -> list[str]:
    return sorted(p for p, v in verdicts.items() if v == verdict)


@pytest.fixture(scope="module")
def nrs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("whatif")
    assert whatif(out, "nrs_threshold=4,6,8") == 0
    assert (out / "whatif.png").stat().st_size > 1000
    result: dict[str, Any] = json.loads((out / "whatif.json").read_text())
    return result


def test_the_row_of_the_protocols_values_is_a_plain_screening(
    nrs: dict[str, Any], tmp_path: Path
) -> None:
    plain = screening(tmp_path / "plain")
    summary = json.loads((tmp_path / "plain" / "summary.json").read_text())
    (own,) = [row for row in nrs["combinations"] if row["own_values"]]
    assert own["parameters"] == {"nrs_threshold": 4}
    assert own["verdicts"] == summary["verdicts"]
    assert own["candidates"] == with_verdict(plain, "candidate")
    assert own["potential_candidates"] == with_verdict(plain, "potential-candidate")
    assert own["gained"] == own["lost"] == {"candidate": [], "potential-candidate": []}
    assert nrs["patients"] == summary["patients"] == 300
    assert nrs["own_values"] == {"nrs_threshold": 4} and nrs["varied"] == {
        "nrs_threshold": [4, 6, 8]
    }


def test_a_higher_nrs_threshold_never_adds_candidates(nrs: dict[str, Any]) -> None:
    rows = nrs["combinations"]
    assert [row["parameters"]["nrs_threshold"] for row in rows] == [4, 6, 8]
    counts = [row["verdicts"]["candidate"] for row in rows]
    assert counts == sorted(counts, reverse=True) and counts[0] > counts[-1]
    for lower, higher in itertools.pairwise(rows):
        assert set(higher["candidates"]) <= set(lower["candidates"])
    for row in rows:
        assert row["gained"]["candidate"] == []
        assert set(row["lost"]["candidate"]) == set(rows[0]["candidates"]) - set(row["candidates"])


def test_every_row_is_the_screening_of_its_values(tmp_path: Path) -> None:
    """Including the rows the criteria untouched by the varied values decided once for all."""
    out = tmp_path / "grid"
    vary = ("min_survival_months=2,3", "pain_window_days=14,30", "nrs_operator=>=,>")
    assert whatif(out, *vary) == 0
    rows = json.loads((out / "whatif.json").read_text())["combinations"]
    assert len(rows) == 8 and sum(row["own_values"] for row in rows) == 1
    changed = 0
    for index, row in enumerate(rows):
        settings = [f"{name}={value}" for name, value in row["parameters"].items()]
        extra = [item for setting in settings for item in ("--set", setting)]
        plain = screening(tmp_path / f"screen-{index}", *extra)
        assert row["candidates"] == with_verdict(plain, "candidate"), row["parameters"]
        assert row["potential_candidates"] == with_verdict(plain, "potential-candidate")
        changed += row["verdicts"] != rows[-1]["verdicts"]
    assert changed  # the values do change something on the sample


def test_a_higher_minimum_survival_never_adds_candidates(tmp_path: Path) -> None:
    assert whatif(tmp_path, "min_survival_months=1,3,6,12") == 0
    rows = json.loads((tmp_path / "whatif.json").read_text())["combinations"]
    for lower, higher in itertools.pairwise(rows):
        assert set(higher["candidates"]) <= set(lower["candidates"])


def test_the_protocols_values_are_added_when_the_grid_lacks_them(tmp_path: Path) -> None:
    assert whatif(tmp_path, "nrs_threshold=6,8") == 0
    rows = json.loads((tmp_path / "whatif.json").read_text())["combinations"]
    assert [(r["parameters"]["nrs_threshold"], r["own_values"]) for r in rows] == [
        (4, True),
        (6, False),
        (8, False),
    ]


@pytest.mark.parametrize(
    ("vary", "trial", "message"),
    [
        (["nrs_treshold=5,6"], "relieve", "has no parameter 'nrs_treshold'"),
        (["nrs_threshold=5,11"], "relieve", "at most 10"),
        (["pain_window_days=7,7.5"], "relieve", "a window"),
        (["nrs_threshold=5", "nrs_threshold=6"], "relieve", "given twice"),
        (["nrs_threshold=5"], "relieve,ssrs", "one trial"),
    ],
)
def test_bad_values_stop_the_command_with_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], vary: list[str], trial: str, message: str
) -> None:
    assert whatif(tmp_path / "out", *vary, trial=trial) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_without_matplotlib_everything_but_the_plot_is_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if not installed: import fails
    assert whatif(tmp_path, "nrs_threshold=4,6") == 0
    assert (tmp_path / "whatif.json").is_file() and not (tmp_path / "whatif.png").exists()
    assert "No plot: install the plot extra" in capsys.readouterr().err
