"""``--workers N`` writes exactly the files ``--workers 1`` writes, byte for byte.

Only the timings in summary.json (``seconds``) may differ: two runs of one process differ there
too. The synthetic hospital is made messy where a parallel reading could go wrong: spans of one
file meeting, copies of one resource in different spans, line numbers past a span's start,
problems of matched and unmatched lines in one block, records of patients without a Patient,
patients not to screen, a gzipped file, references resolved to a Medication file.
"""

from __future__ import annotations

import gzip
import json
import logging
import os
import queue
import random
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from datetime import date
from pathlib import Path
from typing import Any, TypeVar

import pytest

from service.cli import main
from service.ndjson_files import discover
from service.ruleset.engines import EngineName
from service.ruleset.loader import RuleSet, load_ruleset
from service.screening import parallel, pool, workers
from service.screening.partition import plan_spans
from service.screening.pool import WorkerPool
from service.screening.run import screen_portfolio
from tests.conftest import MAPPINGS_DIR, RULES_DIR, SAMPLE_DIR
from tests.helpers import AS_OF, read_ndjson
from tests.offline.test_robustness import mutate

SECONDS = re.compile(rb'"seconds": \{[^}]*\}')
PAIN_SCORE = b'"72514-3"'  # test data: the NRS pain score code the synthetic hospital writes
SPINAL = b'"94602001"'  # test data: a spinal metastasis code the synthetic hospital writes
T = TypeVar("T")
LINE_LIMIT = 4 << 20  # PRESCREEN_MAX_LINE_BYTES here (its minimum): long lines stay small


@pytest.fixture(scope="module", autouse=True)
def line_limit() -> Iterator[None]:
    from service.settings import get_settings

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PRESCREEN_MAX_LINE_BYTES", str(LINE_LIMIT))
        get_settings.cache_clear()
        yield
    get_settings.cache_clear()


def screen(source: Path, out: Path, trials: str, workers: int) -> int:
    command = ["screen", "--trial", trials, "--source", str(source), "--as-of", AS_OF]
    return main([*command, "--out", str(out), "--no-progress", "--workers", str(workers)])


def assert_same_files(one: Path, other: Path) -> None:
    names = sorted(p.relative_to(one) for p in one.rglob("*") if p.is_file())
    assert names == sorted(p.relative_to(other) for p in other.rglob("*") if p.is_file())
    assert names, "no output files"
    for name in names:
        expected, found = (one / name).read_bytes(), (other / name).read_bytes()
        if name.name == "summary.json":
            expected, found = SECONDS.sub(b"", expected), SECONDS.sub(b"", found)
        assert found == expected, name


def pad(line: bytes, size: int) -> bytes:
    """A Patient with a long narrative: the Patient file then spans several blocks."""
    resource = json.loads(line)
    resource["text"] = {"status": "generated", "div": f"<div>{'x' * size}</div>"}
    return json.dumps(resource).encode()


@pytest.fixture(scope="module")
def hospital(tmp_path_factory: pytest.TempPathFactory) -> Path:
    source = tmp_path_factory.mktemp("hospital")
    synth = ["synth", "--patients", "400", "--seed", "12", "--as-of", AS_OF]
    assert main([*synth, "--out", str(source)]) == 0
    rng = random.Random(1128)

    # Patients: big enough to be cut in spans; some not to screen, spread over the file; two
    # twice, the later copy being the record.
    patients = (source / "Patient.ndjson").read_bytes().splitlines()
    patients = [pad(line, 30_000) for line in patients]
    for index in range(7, len(patients), 53):
        patients[index] = patients[index].replace(b"{", b'{"active": false, ', 1)
    patients.append(patients[7].replace(b'"active": false', b'"active": true'))
    patients.append(patients[8].replace(b"{", b'{"active": false, ', 1))
    patients[100] = pad(patients[100], LINE_LIMIT)  # a Patient too long to read: no Patient
    (source / "Patient.ndjson").write_bytes(b"\n".join(patients) + b"\n")

    # Observations: damaged lines everywhere; pain scores of patients that do not exist; and
    # copies of pain scores at the end of the file, some newer by versionId, some by order.
    observations = (source / "Observation.ndjson").read_bytes().splitlines()
    conditions = (source / "Condition.ndjson").read_bytes().splitlines()
    spinal_patients = sorted(
        {json.loads(line)["subject"]["reference"] for line in conditions if SPINAL in line}
    )
    # Scores of patients with spinal metastases decide their pain criterion: which copy is the
    # record shows in the verdicts.
    scores = sorted(
        (line for line in observations if PAIN_SCORE in line),
        key=lambda line: json.loads(line)["subject"]["reference"] not in spinal_patients,
    )
    assert len(scores) > 20
    late = []
    for position, line in enumerate(scores[:12]):
        resource = json.loads(line)
        resource["valueInteger"] = 10 - resource["valueInteger"]
        if position % 2:
            resource["meta"] = {"versionId": "2"}
        observations.append(json.dumps(resource).encode())
        # A third copy in a file read later: the record where no copy has a versionId.
        resource.pop("meta", None)
        resource["valueInteger"] = 0
        late.append(json.dumps(resource).encode())
    (source / "Observation.late.ndjson").write_bytes(b"\n".join(late) + b"\n")
    for n in range(6):
        ghost = json.loads(scores[n])
        ghost["id"], ghost["subject"] = f"ghost-{n}", {"reference": f"Patient/ghost-{n}"}
        observations.insert(rng.randrange(len(observations)), json.dumps(ghost).encode())
    for line in scores[12:20]:
        # A line that is no JSON object, just before a matched line with an unusable score:
        # one block reports the matched line first, whatever block it falls in.
        at = observations.index(line)
        observations[at] = re.sub(rb'"valueInteger":\s*\d+', b'"valueInteger":42', line)
        observations.insert(at, b'{"resourceType": "Observation", "id": "cut')
    observations = [mutate(line, rng) if rng.random() < 0.002 else line for line in observations]
    # Lines too long to read: one alone, two in a row (spans and blocks meet them whole).
    middle = len(observations) // 2
    observations[middle] = pad(scores[20], LINE_LIMIT + 100_000)
    observations[middle + 500 : middle + 500] = [pad(scores[21], LINE_LIMIT)] * 2
    (source / "Observation.ndjson").write_bytes(b"\xef\xbb\xbf" + b"\n".join(observations) + b"\n")

    # Conditions gzipped (a whole span), with a patient that does not exist.
    stray = json.loads(next(line for line in conditions if SPINAL in line))
    stray["id"], stray["subject"] = "stray", {"reference": "Patient/nobody"}
    conditions.append(json.dumps(stray).encode())
    (source / "Condition.ndjson").unlink()
    (source / "Condition.ndjson.gz").write_bytes(gzip.compress(b"\n".join(conditions) + b"\n"))

    # Medications ordered by reference: the Medication file is read before any worker starts.
    (source / "Medication.ndjson").write_text(
        json.dumps(
            {
                "resourceType": "Medication",
                "id": "cisplatin",
                "code": {
                    "coding": [
                        {"system": "http://www.nlm.nih.gov/research/umls/rxnorm", "code": "2555"}
                    ]
                },
            }
        )
        + "\n"
    )
    (source / "MedicationRequest.ndjson").write_text(
        "".join(
            json.dumps(
                {
                    "resourceType": "MedicationRequest",
                    "id": f"mr-{n}",
                    "status": "active",
                    "intent": "order",
                    "subject": {"reference": patient},
                    "medicationReference": {"reference": "Medication/cisplatin"},
                    "authoredOn": "2026-05-01",
                }
            )
            + "\n"
            for n, patient in enumerate([*spinal_patients[:5], "Patient/nobody"])
        )
    )
    (source / "Mystery.ndjson").write_text('{"resourceType": "Mystery"}\n')
    return source


@pytest.fixture(scope="module")
def one_process(hospital: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("one")
    assert screen(hospital, out, "relieve,ssrs", 1) == 1  # damaged lines: exit code 1
    return out


def test_the_messy_hospital_exercises_what_it_should(one_process: Path) -> None:
    issues = read_ndjson(one_process / "relieve" / "issues.ndjson")
    kinds = {issue["kind"] for issue in issues}
    assert {"malformed-json", "bad-value", "not-screened", "no-patient"} <= kinds
    assert "unknown-resource-type" in kinds
    too_long = [(i["file"], i["line"]) for i in issues if i["kind"] == "line-too-long"]
    assert [file for file, _ in too_long] == ["Observation.ndjson"] * 3 + ["Patient.ndjson"]
    assert too_long[2][1] == too_long[1][1] + 1  # two in a row
    # Problems reported past the first block of a file, and Patients not to screen past it.
    assert max(i["line"] for i in issues if i["file"] == "Observation.ndjson") > 30_000
    assert max(i["line"] for i in issues if i["kind"] == "not-screened") > 150
    # The orders name their drug only through the Medication file: a record means resolved.
    assert "unresolved-reference" not in kinds
    orphans = [i["message"] for i in issues if i["kind"] == "no-patient"]
    assert any(message.startswith("1 treatments record") for message in orphans)


@pytest.mark.parametrize("workers", [2, 3])
def test_a_portfolio_on_several_processes_writes_the_same_files(
    hospital: Path, one_process: Path, tmp_path: Path, workers: int
) -> None:
    assert screen(hospital, tmp_path, "relieve,ssrs", workers) == 1
    assert_same_files(one_process, tmp_path)


def test_a_source_too_large_for_memory_is_screened_in_buckets_by_one_process(
    hospital: Path, one_process: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past the in-memory limit one process screens through spill files, bucket by bucket,
    and writes the same files; no worker process is started. Patients are spilled every few
    while a span is read, so one patient's resources and copies arrive in several parts."""
    monkeypatch.setattr(pool, "IN_MEMORY_MAX_BYTES", 1 << 20)
    monkeypatch.setattr(workers, "SPILL_EVERY_PATIENTS", 7)
    pools: list[int] = []

    class RecordingPool(WorkerPool):
        def __init__(self, count: int, *args: Any) -> None:
            pools.append(count)
            super().__init__(count, *args)
            assert self._executor is None  # no process spawned

    monkeypatch.setattr(parallel, "WorkerPool", RecordingPool)
    buckets: list[int] = []
    screen_bucket = workers.screen_bucket

    def recording_screen_bucket(bucket: int, *args: Any) -> Any:
        buckets.append(bucket)
        return screen_bucket(bucket, *args)

    monkeypatch.setattr(workers, "screen_bucket", recording_screen_bucket)
    assert screen(hospital, tmp_path, "relieve,ssrs", 1) == 1
    assert pools == [1]
    assert len(buckets) > 1  # screened bucket by bucket
    assert_same_files(one_process, tmp_path)


def test_one_trial_on_several_processes_writes_the_same_files(
    hospital: Path, tmp_path: Path
) -> None:
    assert screen(hospital, tmp_path / "one", "ssrs", 1) == 1
    assert screen(hospital, tmp_path / "two", "ssrs", 2) == 1
    assert_same_files(tmp_path / "one", tmp_path / "two")


def test_the_shipped_sample_on_two_processes(tmp_path: Path) -> None:
    assert screen(SAMPLE_DIR, tmp_path / "one", "relieve,ssrs", 1) == 0
    assert screen(SAMPLE_DIR, tmp_path / "two", "relieve,ssrs", 2) == 0
    assert_same_files(tmp_path / "one", tmp_path / "two")


def test_a_medication_outside_its_own_file_is_screened_in_one_process(
    hospital: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # A reference target in another type's file (read before the file of the references)
    # would be known to the worker reading it only: the run notices and screens again in one
    # process, with the same files as a result.
    source = tmp_path / "source"
    source.mkdir()
    for path in hospital.iterdir():
        (source / path.name).symlink_to(path)
    (source / "MedicationRequest.ndjson").unlink()
    requests = (hospital / "MedicationRequest.ndjson").read_text()
    moved = (hospital / "Medication.ndjson").read_text().replace("cisplatin", "moved")
    (source / "MedicationAdministration.ndjson").write_text(moved)
    (source / "MedicationRequest.ndjson").write_text(requests.replace("cisplatin", "moved"))
    assert screen(source, tmp_path / "one", "relieve", 1) == 1
    assert "unresolved-reference" not in (tmp_path / "one" / "issues.ndjson").read_text()
    with caplog.at_level(logging.WARNING):
        assert screen(source, tmp_path / "two", "relieve", 2) == 1
    assert "screening in one process" in caplog.text
    assert_same_files(tmp_path / "one", tmp_path / "two")


class EveryTaskInAFreshProcess(WorkerPool):
    """Runs each task here, in reverse order, each on a worker of its own (its own counters and
    caches), as if every task went to another process: scheduling must not matter."""

    def __init__(self, rulesets: list[RuleSet], count: int) -> None:  # no processes
        self.rulesets, self.count, self.max_line = rulesets, count, LINE_LIMIT
        self.messages_here: queue.SimpleQueue[tuple[Any, ...]] = queue.SimpleQueue()

    def serves(
        self, rulesets: Sequence[RuleSet], engine: EngineName, as_of: date, max_line: int = 0
    ) -> bool:
        return True

    def run_all(
        self,
        calls: Sequence[tuple[Callable[..., T], tuple[Any, ...]]],
        on_message: Callable[[tuple[Any, ...]], None],
    ) -> list[T]:
        results: list[T] = []
        for fn, args in reversed(calls):
            workers._worker = workers.Worker(
                self.rulesets, "cel", date.fromisoformat(AS_OF), LINE_LIMIT
            )
            results.append(fn(*args))
        return results[::-1]


def test_the_order_of_tasks_and_processes_does_not_matter(
    hospital: Path, one_process: Path, tmp_path: Path
) -> None:
    rulesets = [load_ruleset(RULES_DIR / f"{t}.yaml", MAPPINGS_DIR) for t in ("relieve", "ssrs")]
    portfolio = screen_portfolio(
        rulesets,
        hospital,
        date.fromisoformat(AS_OF),
        tmp_path,
        subject_identifier_system="urn:prescreen:research-subject",
        workers=EveryTaskInAFreshProcess(rulesets, 3),
        max_line=LINE_LIMIT,
    )
    assert portfolio.exit_code == 1
    assert_same_files(one_process, tmp_path)


class FailingToEvaluate(EveryTaskInAFreshProcess):
    """A worker that dies while evaluating."""

    def run_all(
        self,
        calls: Sequence[tuple[Callable[..., T], tuple[Any, ...]]],
        on_message: Callable[[tuple[Any, ...]], None],
    ) -> list[T]:
        if calls and calls[0][0] is workers.screen_bucket:
            raise RuntimeError("a worker process died")
        return super().run_all(calls, on_message)


def test_a_parallel_run_stopped_midway_leaves_the_previous_outputs_and_no_spill(
    hospital: Path, one_process: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "out"
    shutil.copytree(one_process, out)
    before = {path: path.read_bytes() for path in out.rglob("*") if path.is_file()}
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    rulesets = [load_ruleset(RULES_DIR / f"{t}.yaml", MAPPINGS_DIR) for t in ("relieve", "ssrs")]
    with pytest.raises(RuntimeError):
        screen_portfolio(
            rulesets,
            hospital,
            date.fromisoformat(AS_OF),
            out,
            subject_identifier_system="urn:prescreen:research-subject",
            workers=FailingToEvaluate(rulesets, 2),
        )
    assert {path: path.read_bytes() for path in out.rglob("*") if path.is_file()} == before
    assert list(scratch.iterdir()) == []  # the spill files went with the run


def test_patients_spilled_in_parts_keep_the_order_one_reading_meets_them(
    relieve: RuleSet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A span spilled every 3 patients: merged, each patient's place is where the reading first
    met it, counted over the whole span (not from each part's start)."""
    monkeypatch.setattr(workers, "SPILL_EVERY_PATIENTS", 3)
    lines = (SAMPLE_DIR / "Patient.ndjson").read_bytes().splitlines()[:10]
    lines.append(lines[1])  # met again after a spill: its place stays the first
    (tmp_path / "Patient.ndjson").write_bytes(b"\n".join(lines) + b"\n")
    span = plan_spans(discover(tmp_path), 1 << 30)[0]
    worker = workers.Worker([relieve], "cel", date.fromisoformat(AS_OF))
    spill = tmp_path / "spill"
    worker.read(span, spill, 1, lambda message: None)
    _, first_seen = workers._merge_bucket(spill, 0, [0], 1)
    in_file_order = [f"{json.loads(line)['id']}" for line in lines[:10]]
    assert sorted(first_seen[0], key=lambda pid: first_seen[0][pid]) == in_file_order
    assert [rank for _, rank in first_seen[0].values()] == list(range(10))


# Run by a Python child that adopts orphans (PR_SET_CHILD_SUBREAPER): a process prescreen
# started and left running when it exited becomes that child's own, whatever the timing, and
# is counted when it ends.
ORPHAN_COUNTER = """
import ctypes, json, os, subprocess, sys, time
PR_SET_CHILD_SUBREAPER = 36
if ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
    print(json.dumps({"skip": "prctl refused"}))
    sys.exit(0)
screen = subprocess.Popen(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
code = screen.wait()
orphans = 0
deadline = time.monotonic() + 60
while time.monotonic() < deadline:
    try:
        pid, _status = os.waitpid(-1, os.WNOHANG)
    except ChildProcessError:
        break  # no child left at all
    if pid:
        orphans += 1
    else:
        time.sleep(0.05)
print(json.dumps({"code": code, "orphans": orphans}))
"""


@pytest.mark.skipif(not Path("/proc/self").exists(), reason="Linux only (PR_SET_CHILD_SUBREAPER)")
def test_workers_are_all_joined_before_the_command_exits(tmp_path: Path) -> None:
    """No helper process outlives ``prescreen screen --workers 2`` (multiprocessing's resource
    tracker was left behind, a defunct process once its parent had gone)."""
    import subprocess
    import sys

    command = [sys.executable, "-m", "service", "screen", "--trial", "relieve,ssrs"]
    command += ["--source", str(SAMPLE_DIR), "--as-of", AS_OF, "--out", str(tmp_path / "out")]
    command += ["--no-progress", "--workers", "2"]
    done = subprocess.run(
        [sys.executable, "-c", ORPHAN_COUNTER, *command],
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
    )
    report = json.loads(done.stdout.strip().splitlines()[-1])
    if "skip" in report:
        pytest.skip(report["skip"])
    assert report == {"code": 0, "orphans": 0}
