"""Elements in the wrong JSON type (a string where a CodeableConcept belongs, ``coding`` as an
object) are reported as ``bad-value`` and treated as absent: a patient never drops out silently."""

from __future__ import annotations

from datetime import date
from pathlib import Path
from typing import Any

import orjson
import pytest

from service.ruleset.loader import RuleSet
from tests.helpers import read_ndjson, screen_cli

AS_OF = date(2026, 6, 15)
SAMPLE = Path(__file__).resolve().parents[2] / "samples" / "hospital"
METASTASIS = {"system": "http://snomed.info/sct", "code": "94222008"}


def condition(**changes: Any) -> dict[str, Any]:
    resource: dict[str, Any] = {
        "resourceType": "Condition",
        "id": "c1",
        "subject": {"reference": "Patient/p"},
        "clinicalStatus": {
            "coding": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/condition-clinical",
                    "code": "active",
                }
            ]
        },
        "code": {"coding": [METASTASIS]},
        "bodySite": [{"coding": [{"system": "http://snomed.info/sct", "code": "122496007"}]}],
        "onsetDateTime": "2026-05-01",
    }
    resource.update(changes)
    return resource


def bad_values(relieve: RuleSet, resource: dict[str, Any]) -> list[tuple[str, str]]:
    mapped = relieve.mapper.map_resource(resource, AS_OF)
    assert mapped is not None
    return [(i.field, i.message) for i in mapped.issues if i.kind == "bad-value"]


def test_a_well_formed_condition_is_not_reported(relieve: RuleSet) -> None:
    assert bad_values(relieve, condition()) == []


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        ("94222008", "is a string, not a CodeableConcept"),
        ({"coding": METASTASIS}, "has 'coding' as an object, not a list of Codings"),
        ({"coding": ["94222008"]}, "has a 'coding' entry that is not an object"),
        ({"coding": [{**METASTASIS, "code": 94222008}]}, "has a Coding 'code' that is a number"),
    ],
)
def test_a_code_in_the_wrong_json_type_is_reported(
    relieve: RuleSet, code: Any, expected: str
) -> None:
    problems = bad_values(relieve, condition(code=code))
    assert problems, "the wrongly typed code was dropped silently"
    assert any(field == "Condition.code" and expected in message for field, message in problems)
    # The value itself never reaches the report (it could be patient data).
    assert all("94222008" not in message for _, message in problems)


def test_a_path_through_a_scalar_is_reported(relieve: RuleSet) -> None:
    problems = bad_values(relieve, condition(clinicalStatus="active"))
    assert (
        "Condition.clinicalStatus",
        "is a string, not an object (wrong JSON type, treated as absent)",
    ) in problems


def test_a_candidate_whose_condition_code_is_a_string_is_flagged_not_silently_dropped(
    tmp_path: Path,
) -> None:
    """End to end: the screen exits 1, issues.ndjson names the element and the patient stays a
    potential candidate, for a patient who is a candidate with well-formed data."""
    source = tmp_path / "in"
    source.mkdir()
    patient = "p0000005"
    for file in SAMPLE.glob("*.ndjson"):
        kept = []
        for resource in read_ndjson(file):
            text = str(resource)
            if resource.get("id") != patient and f"Patient/{patient}'" not in text:
                continue
            if resource["resourceType"] == "Condition":
                resource["code"] = "C79.51"
            kept.append(resource)
        (source / file.name).write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in kept))
    out = tmp_path / "out"
    assert screen_cli("--source", str(source), out) == 1
    issues = read_ndjson(out / "issues.ndjson")
    assert any(
        i["kind"] == "bad-value" and "Condition.code is a string" in i["message"] for i in issues
    )
    # ... and the unreadable Conditions never make the candidate ineligible (issue F7): the
    # criteria that read them are unknown, a look for a coordinator.
    [verdict] = read_ndjson(out / "verdicts.ndjson")
    assert verdict["verdict"] == "potential-candidate"
    spinal = verdict["criteria"]["spinal-metastasis"]
    assert spinal["result"] == "unknown"
    assert "a Condition record could not be read" in spinal["reason"]
