"""``--set`` on worker processes: each worker applies the values the run set, so ``--workers 2``
writes what ``--workers 1`` writes, in a portfolio too."""

from __future__ import annotations

import json
from pathlib import Path

from service.cli import main
from tests.conftest import SAMPLE_DIR
from tests.helpers import AS_OF, read_ndjson
from tests.offline.test_workers import assert_same_files

SETTINGS = ["--set", "relieve.nrs_threshold=6", "--set", "ssrs.kps_min=80"]


def screen(out: Path, workers: int, *extra: str) -> int:
    command = ["screen", "--trial", "relieve,ssrs", "--source", str(SAMPLE_DIR), "--as-of", AS_OF]
    command += ["--out", str(out), "--no-progress", "--workers", str(workers), *extra]
    return main(command)


def test_values_set_reach_the_worker_processes(tmp_path: Path) -> None:
    assert screen(tmp_path / "one", 1, *SETTINGS) == 0
    assert screen(tmp_path / "two", 2, *SETTINGS) == 0
    assert_same_files(tmp_path / "one", tmp_path / "two")
    assert screen(tmp_path / "plain", 2) == 0
    for trial, version in (("relieve", "1.1.0+nrs_threshold=6"), ("ssrs", "1.0.0+kps_min=80")):
        summary = json.loads((tmp_path / "two" / trial / "summary.json").read_text())
        assert summary["ruleset_version"] == version
        plain = json.loads((tmp_path / "plain" / trial / "summary.json").read_text())
        assert summary["verdicts"]["candidate"] < plain["verdicts"]["candidate"]
        lines = read_ndjson(tmp_path / "two" / trial / "verdicts.ndjson")
        assert {line["ruleset"]["version"] for line in lines} == {version}
