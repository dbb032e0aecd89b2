"""``--executor spark`` writes the files the local executor writes, byte for byte: on a real
standalone cluster (a master and two workers on 127.0.0.1) and in local mode, for the shipped
sample and for a messy synthetic hospital whose every kind of problem is reported."""

from __future__ import annotations

import json
import signal
import sys
from pathlib import Path

import pytest

from service.cli import main
from service.ndjson_files import BLOCK_BYTES
from service.spark import driver as spark_executor
from tests.conftest import SAMPLE_DIR
from tests.helpers import AS_OF, read_ndjson
from tests.spark.cluster import StandaloneCluster


def screen(trials: str, source: str, out: Path, *extra: str) -> int:
    command = ["screen", "--trial", trials, "--source", source, "--as-of", AS_OF]
    return main([*command, "--out", str(out), "--no-progress", *extra])


def assert_same_files(local: Path, spark: Path) -> list[str]:
    """Every file of both runs, byte for byte; summary.json apart from its timings (which no
    two runs share). Returns the names compared."""
    names = sorted(str(p.relative_to(local)) for p in local.rglob("*") if p.is_file())
    assert names == sorted(str(p.relative_to(spark)) for p in spark.rglob("*") if p.is_file())
    for name in names:
        ours, theirs = (local / name).read_bytes(), (spark / name).read_bytes()
        if Path(name).name == "summary.json":
            ours_json, theirs_json = json.loads(ours), json.loads(theirs)
            ours_json.pop("seconds", None)
            theirs_json.pop("seconds", None)
            # Same keys in the same order, same values: only the timings differ.
            assert json.dumps(theirs_json) == json.dumps(ours_json), name
        else:
            assert theirs == ours, name
    return names


def test_the_sample_portfolio_on_a_standalone_cluster_gives_the_local_files(
    cluster: StandaloneCluster, tmp_path: Path
) -> None:
    local, spark = tmp_path / "local", tmp_path / "spark"
    assert screen("relieve,ssrs", str(SAMPLE_DIR), local) == 0
    master = ["--executor", "spark", "--spark-master", cluster.master_url]
    assert screen("relieve,ssrs", str(SAMPLE_DIR), spark, *master) == 0
    names = assert_same_files(local, spark)
    assert "relieve/verdicts.ndjson" in names and "patients.ndjson" in names
    assert len(read_ndjson(spark / "patients.ndjson")) == 300


def test_a_messy_hospital_on_a_standalone_cluster_gives_the_local_files_and_problems(
    cluster: StandaloneCluster, messy_source: Path, tmp_path: Path
) -> None:
    local, spark = tmp_path / "local", tmp_path / "spark"
    assert screen("relieve,ssrs", str(messy_source), local) == 1
    master = ["--executor", "spark", "--spark-master", cluster.master_url]
    assert screen("relieve,ssrs", str(messy_source), spark, *master) == 1
    assert_same_files(local, spark)
    # The comparison means something: every kind of problem is there, and the Observation
    # file spans several of the local reader's blocks, whose order Spark must reproduce.
    issues = read_ndjson(spark / "relieve" / "issues.ndjson")
    kinds = {issue["kind"] for issue in issues}
    assert kinds >= {
        "malformed-json",
        "bad-value",
        "lenient-value",
        "noncanonical-code",
        "unresolved-reference",
        "unreadable-file",
        "unknown-resource-type",
        "no-patient",
        "not-screened",
        "line-too-long",
    }
    assert (messy_source / "Observation.ndjson").stat().st_size > 3 * BLOCK_BYTES
    # The long lines Spark's text source skipped, numbered as the local reader numbers them:
    # one amid the Observations, two in a row, a Patient, an open last line, a first line.
    too_long = sorted((i["file"], i["line"]) for i in issues if i["kind"] == "line-too-long")
    assert [file for file, _ in too_long] == [
        "Condition.ndjson",
        "Observation.ndjson",
        "Observation.ndjson",
        "Observation.ndjson",
        "Patient.ndjson",
        "Practitioner.ndjson",
    ]
    assert ("Practitioner.ndjson", 1) in too_long
    lines = [i["line"] for i in issues if i["file"] == "Observation.ndjson"]
    assert lines != sorted(lines)  # a block's parsed lines are reported before its shapes
    summary = json.loads((spark / "relieve" / "summary.json").read_text())
    assert summary["input"]["files"] == 15 and summary["records_without_patient"]


def test_one_trial_from_a_file_uri_in_local_mode(
    messy_source: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Problems sorted by Spark, as when there are too many to sort on the driver.
    monkeypatch.setattr(spark_executor, "ISSUES_IN_MEMORY", 0)
    local, spark = tmp_path / "local", tmp_path / "spark"
    assert screen("relieve", str(messy_source), local) == 1
    uri = messy_source.resolve().as_uri()  # file:///...: read through Hadoop's file system
    assert screen("relieve", uri, spark, "--executor", "spark", "--spark-master", "local[2]") == 1
    names = assert_same_files(local, spark)
    assert "verdicts.ndjson" in names  # one trial: the files straight in OUT
    missing = ["--executor", "spark", "--spark-master", "local[1]"]
    assert screen("relieve", f"{uri}/nowhere", tmp_path / "none", *missing) == 2


def test_without_pyspark_the_spark_executor_exits_2_and_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for module in ("pyspark", "pyspark.sql"):
        monkeypatch.setitem(sys.modules, module, None)  # an import of it fails
    assert screen("relieve", str(SAMPLE_DIR), tmp_path, "--executor", "spark") == 2
    assert "pip install 'prescreen[spark]'" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_after_a_spark_run_an_interrupt_is_an_interrupt_again(tmp_path: Path) -> None:
    # The SparkContext of a run installs its own SIGINT handler, which survived the context:
    # a later Ctrl-C raised "AttributeError: 'NoneType' object has no attribute 'sc'" wherever
    # this process was. Once it was loading the shipped rules for `prescreen demo`, and the
    # engine reported "rules/ssrs.yaml: derived 'mri_region_levels': fails on a sample patient
    # (cel): AttributeError: 'NoneType' object has no attribute 'sc'".
    # Python's own handler, whatever an earlier test of the session left installed.
    earlier = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        local = ["--executor", "spark", "--spark-master", "local[1]"]
        assert screen("relieve", str(SAMPLE_DIR), tmp_path, *local) == 0
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
        with pytest.raises(KeyboardInterrupt):
            signal.raise_signal(signal.SIGINT)
    finally:
        signal.signal(signal.SIGINT, earlier)


def test_a_bulk_export_folder_that_lost_types_gives_the_local_files_in_local_mode(
    tmp_path: Path,
) -> None:
    """A folder whose export.json says the export lost types and a Patient was deleted: Spark
    reads it as the local run does (lost sources, the deleted Patient not screened)."""
    folder = tmp_path / "bulk"
    folder.mkdir()
    for file in SAMPLE_DIR.glob("*.ndjson"):
        (folder / file.name).write_bytes(file.read_bytes())
    job = {
        "request": {"level": "patient"},
        "lost": {"ServiceRequest": "the server refused the $export kick-off naming it"},
        "deleted_patients": ["p0000001"],
    }
    (folder / "export.json").write_text(json.dumps({"base_url": "x", "jobs": [job]}))
    local, spark = tmp_path / "local", tmp_path / "spark"
    assert screen("relieve,ssrs", str(folder), local) == 1
    assert (
        screen(
            "relieve,ssrs", str(folder), spark, "--executor", "spark", "--spark-master", "local[2]"
        )
        == 1
    )
    assert_same_files(local, spark)
    summary = json.loads((spark / "relieve" / "summary.json").read_text())
    assert [e["type"] for e in summary["sources_unavailable"]] == ["ServiceRequest"]
    assert [p["patient"] for p in summary["not_screened"]] == ["Patient/p0000001"]
