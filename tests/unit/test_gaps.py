"""Lost sources and unreadable records: a criterion reading a fact that may be missing records is
decided by the records present, never by their absence (service/ruleset/gaps.py)."""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path
from typing import Any

import orjson
import pytest

from service.ruleset.engines import EngineName
from service.ruleset.evaluate import Evaluator, PatientVerdict
from service.ruleset.gaps import GAPS
from service.ruleset.loader import RuleSet
from service.screening.ndjson import read_folder
from service.screening.source import Collector, IssueLog, SourceNotes
from tests.conftest import SAMPLE_DIR
from tests.helpers import read_ndjson, screen_cli

AS_OF = date(2026, 6, 15)
LOST = {
    "ServiceRequest": "the server refused it (HTTP 400)",
    "MedicationAdministration": "the server refused it (HTTP 400)",
    "MedicationStatement": "the server refused it (HTTP 400)",
}


def favourable(kind: str, result: str) -> bool:
    return result == ("met" if kind == "inclusion" else "not_met")


def sample_facts(relieve: RuleSet, notes: SourceNotes) -> list[tuple[str, dict[str, Any]]]:
    collector = Collector(relieve.mapper, AS_OF, IssueLog(), notes)
    read_folder(collector, SAMPLE_DIR)
    return [(pid, facts) for pid, _patient, facts in collector.screened_patients()]


def test_criteria_know_the_facts_they_read_through_derived_values(relieve: RuleSet) -> None:
    reads = {c.id: c.reads for c in relieve.criteria}
    assert reads["treatment"] == {"treatments"}
    assert reads["systemic-only"] == {"treatments"}
    assert reads["spinal-metastasis"] == {"conditions"}
    assert reads["pain-nrs"] == {"pain_scores"}
    assert reads["alive"] == {"patient"}
    assert reads["consent"] == frozenset()  # manual
    assert relieve.criteria_reading("ServiceRequest") == [
        "treatment",
        "augmentation-only",
        "systemic-only",
    ]
    assert relieve.criteria_reading("Medication") == relieve.criteria_reading("ServiceRequest")
    assert relieve.criteria_reading("Immunization") == []


@pytest.mark.parametrize("engine", ["cel", "celpy"])
def test_a_lost_source_never_decides_by_absence_on_either_engine(
    relieve: RuleSet, engine: EngineName
) -> None:
    """Every sample patient, with and without the lost types: criteria that do not read them
    are unchanged; those that do keep a favourable result only with evidence, else unknown."""
    plain = Evaluator(relieve, engine)
    complete = dict(sample_facts(relieve, SourceNotes()))
    lost = sample_facts(relieve, SourceNotes(lost=LOST))
    assert len(lost) == 300
    changed = 0
    for pid, facts in lost:
        assert facts[GAPS] == {
            "treatments": [
                "MedicationAdministration, MedicationStatement and ServiceRequest records are "
                "not available from the server"
            ]
        }
        before = plain.evaluate(pid, complete[pid], AS_OF)
        after = plain.evaluate(pid, facts, AS_OF)
        for old, new, criterion in zip(
            before.criteria, after.criteria, relieve.criteria, strict=True
        ):
            if "treatments" not in criterion.reads or old.manual:
                assert new == old
            elif favourable(old.kind, old.result) and old.evidence:
                assert (new.result, new.evidence) == (old.result, old.evidence)
            else:
                assert new.result == "unknown", (pid, criterion.id)
                assert new.evidence == old.evidence
                changed += old.result != "unknown"
        excluding = [
            c for c in after.criteria if c.result != "unknown" and not favourable(c.kind, c.result)
        ]
        # Only criteria that read no lost type exclude.
        assert all(
            c.id not in ("treatment", "augmentation-only", "systemic-only") for c in excluding
        )
    assert changed > 100  # the sample's exclusions and "no ... recorded" results


def test_the_engines_and_the_memo_agree_on_gaps(relieve: RuleSet) -> None:
    facts = sample_facts(relieve, SourceNotes(lost=LOST))
    fast, reference = Evaluator(relieve, "cel"), Evaluator(relieve, "celpy")
    memo = Evaluator(relieve, "cel", memoize=True)
    for pid, patient_facts in facts:
        expected = fast.evaluate(pid, patient_facts, AS_OF)
        assert reference.evaluate(pid, patient_facts, AS_OF) == expected
        assert memo.evaluate(pid, patient_facts, AS_OF) == expected
    assert memo.memo_hits > 100


def test_the_memo_tells_a_pattern_with_gaps_from_the_same_pattern_without(
    relieve: RuleSet,
) -> None:
    memo = Evaluator(relieve, "cel", memoize=True)
    facts: dict[str, Any] = {
        "patient": {**relieve.mapper.schema_sample()["patient"], "ref": "Patient/p"},
        **{name: [] for name, schema in relieve.mapper.facts.items() if not schema.one},
    }
    facts["patient"].update(has_birth_date=True, age_min=60.0, age_max=60.0)

    def systemic_only(result: PatientVerdict) -> str:
        return next(c.result for c in result.criteria if c.id == "systemic-only")

    assert systemic_only(memo.evaluate("p", facts, AS_OF)) == "not_met"
    gapped = {**facts, GAPS: {"treatments": ["ServiceRequest records are not available"]}}
    assert systemic_only(memo.evaluate("p", gapped, AS_OF)) == "unknown"
    assert systemic_only(memo.evaluate("p", facts, AS_OF)) == "not_met"


def test_an_unreadable_record_is_a_gap_of_its_patient_only(relieve: RuleSet) -> None:
    collector = Collector(relieve.mapper, AS_OF, IssueLog())
    patients = [{"resourceType": "Patient", "id": pid, "birthDate": "1960-01-01"} for pid in "ab"]
    condition = {
        "resourceType": "Condition",
        "id": "c",
        "subject": {"reference": "Patient/a"},
        "code": "C79.51",  # a string where a CodeableConcept belongs
    }
    collector.read_resources([*patients, condition])
    gaps = {pid: facts.get(GAPS) for pid, _p, facts in collector.screened_patients()}
    assert gaps == {
        "a": {"conditions": ["a Condition record could not be read (see the input issues)"]},
        "b": None,
    }


def test_a_condition_refused_for_its_status_is_no_gap(relieve: RuleSet) -> None:
    """A filter that decides (refuted) while another element is wrongly typed: not a record."""
    collector = Collector(relieve.mapper, AS_OF, IssueLog())
    refuted = {
        "resourceType": "Condition",
        "id": "c",
        "subject": {"reference": "Patient/a"},
        "code": "C79.51",
        "verificationStatus": {"coding": [{"code": "refuted"}]},
    }
    collector.read_resources([{"resourceType": "Patient", "id": "a"}, refuted])
    [(_pid, _patient, facts)] = list(collector.screened_patients())
    assert GAPS not in facts


def _export_folder(tmp_path: Path, lost: dict[str, str], deleted: list[str]) -> Path:
    """The sample hospital as a Bulk export folder whose state says what it lacks."""
    folder = tmp_path / "bulk"
    folder.mkdir()
    for file in SAMPLE_DIR.glob("*.ndjson"):
        (folder / file.name).write_bytes(file.read_bytes())
    job = {"request": {"level": "patient"}, "lost": lost, "deleted_patients": deleted}
    state = {"base_url": "http://fhir.example/", "jobs": [job]}
    (folder / "export.json").write_bytes(orjson.dumps(state))
    return folder


def test_a_folder_a_bulk_export_lost_types_of_is_screened_alike_by_every_executor(
    tmp_path: Path,
) -> None:
    folder = _export_folder(tmp_path, LOST, ["p0000001"])
    outs = []
    for workers in ("1", "2"):
        out = tmp_path / f"out-{workers}"
        assert screen_cli("--source", str(folder), out, "--workers", workers) == 1
        outs.append(out)
    for name in ("verdicts.ndjson", "issues.ndjson", "ResearchSubject.ndjson"):
        assert (outs[0] / name).read_bytes() == (outs[1] / name).read_bytes(), name
    issues = read_ndjson(outs[0] / "issues.ndjson")
    lost = [i for i in issues if i["kind"] == "source-unavailable"]
    assert [i["message"].split(" ")[0] for i in lost] == sorted(LOST)
    assert all("treatment, augmentation-only, systemic-only" in i["message"] for i in lost)
    summary = json.loads((outs[0] / "summary.json").read_text())
    assert summary["issues"]["by_kind"]["source-unavailable"] == 3
    assert summary["sources_unavailable"][0] == {
        "type": "MedicationAdministration",
        "reason": "the server refused it (HTTP 400)",
        "criteria": ["treatment", "augmentation-only", "systemic-only"],
    }
    [deleted] = summary["not_screened"]
    assert deleted["patient"] == "Patient/p0000001"
    assert "deleted on the server" in deleted["reason"]
    verdicts = read_ndjson(outs[0] / "verdicts.ndjson")
    assert "Patient/p0000001" not in {v["patient"] for v in verdicts}
    for verdict in verdicts:
        for cid in ("augmentation-only", "systemic-only"):
            criterion = verdict["criteria"][cid]
            assert criterion["result"] != "met", (verdict["patient"], cid)
