"""The HAPI FHIR instance validator finds real errors, and none in what prescreen publishes
and writes offline.

Codes from external systems the validator cannot look up offline (SNOMED CT, LOINC) are warnings
at most: a code is not wrong for being unknown here. Codes in prescreen's own systems are
checked against its published CodeSystems.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from service.cli import main
from tests.conformance.validator import REPO, Checked, InstanceValidator, errors_of
from tests.helpers import AS_OF


def messages(result: Checked) -> str:
    return "\n".join(i.message for i in result.errors)


def criterion_observation(**changes: Any) -> dict[str, Any]:
    """A criterion Observation as write-back builds it (valid as it stands)."""
    observation: dict[str, Any] = {
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": "urn:prescreen:criterion:relieve", "code": "age"}]},
        "subject": {"reference": "Patient/p1"},
        "effectiveDateTime": AS_OF,
        "valueCodeableConcept": {
            "coding": [{"system": "urn:prescreen:criterion-result", "code": "met"}]
        },
        "component": [
            {
                "code": {
                    "coding": [
                        {"system": "urn:prescreen:criterion-attribute", "code": "criterion-kind"}
                    ]
                },
                "valueCodeableConcept": {
                    "coding": [{"system": "urn:prescreen:criterion-attribute", "code": "inclusion"}]
                },
            },
            {
                "code": {
                    "coding": [{"system": "urn:prescreen:criterion-attribute", "code": "manual"}]
                },
                "valueBoolean": False,
            },
        ],
    }
    return {**observation, **changes}


BROKEN: dict[str, tuple[dict[str, Any], str]] = {
    # The shape of the old update transactions: a relative fullUrl, a Provenance without one.
    "relative-full-url": (
        {
            "resourceType": "Bundle",
            "type": "transaction",
            "entry": [
                {
                    "fullUrl": "ResearchSubject/rs1",
                    "resource": {
                        "resourceType": "ResearchSubject",
                        "id": "rs1",
                        "status": "candidate",
                        "study": {"reference": "ResearchStudy/s1"},
                        "individual": {"reference": "Patient/p1"},
                    },
                    "request": {"method": "PUT", "url": "ResearchSubject/rs1"},
                },
                {
                    "resource": {
                        "resourceType": "Provenance",
                        "target": [{"reference": "ResearchSubject/rs1"}],
                        "recorded": "2026-06-15T00:00:00+00:00",
                        "agent": [{"who": {"display": "prescreen"}}],
                    },
                    "request": {"method": "POST", "url": "Provenance"},
                },
            ],
        },
        "fullUrl must be an absolute URL",
    ),
    "missing-required-element": (
        {
            "resourceType": "ResearchSubject",
            "status": "candidate",
            "study": {"reference": "ResearchStudy/s1"},
        },
        "ResearchSubject.individual: minimum required = 1",
    ),
    "too-many": (
        {
            "resourceType": "ResearchSubject",
            "status": "candidate",
            "study": {"reference": "ResearchStudy/s1"},
            "individual": [{"reference": "Patient/p1"}, {"reference": "Patient/p2"}],
        },
        "must be an Object, not an Array",
    ),
    "code-outside-required-binding": (
        {
            "resourceType": "ResearchSubject",
            "status": "maybe",
            "study": {"reference": "ResearchStudy/s1"},
            "individual": {"reference": "Patient/p1"},
        },
        "research-subject-status",
    ),
    # Resolvable inside a Bundle, so the validator checks the target's type.
    "wrong-reference-target": (
        {
            "resourceType": "Bundle",
            "type": "transaction",
            "entry": [
                {
                    "fullUrl": "urn:uuid:6a1c8c52-9ed4-4cf4-a0f2-7a4b1e0f7d01",
                    "resource": {
                        "resourceType": "ResearchSubject",
                        "status": "candidate",
                        "study": {"reference": "urn:uuid:0f0e3c2a-2a51-4b0e-9f0c-8d2f5b3a1c11"},
                        "individual": {"reference": "Patient/p1"},
                    },
                    "request": {"method": "POST", "url": "ResearchSubject"},
                },
                {
                    "fullUrl": "urn:uuid:0f0e3c2a-2a51-4b0e-9f0c-8d2f5b3a1c11",
                    "resource": {"resourceType": "Group", "type": "person", "actual": True},
                    "request": {"method": "POST", "url": "Group"},
                },
            ],
        },
        "Invalid Resource target type",
    ),
    "unknown-prescreen-result-code": (
        criterion_observation(
            valueCodeableConcept={
                "coding": [{"system": "urn:prescreen:criterion-result", "code": "maybe"}]
            }
        ),
        "maybe",
    ),
    "unknown-criterion-code": (
        criterion_observation(
            code={"coding": [{"system": "urn:prescreen:criterion:relieve", "code": "shoe-size"}]}
        ),
        "shoe-size",
    ),
}


def test_a_valid_criterion_observation_passes(fhir_validator: InstanceValidator) -> None:
    (result,) = fhir_validator.validate([criterion_observation()], "good-observation")
    assert result.errors == []


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_the_validator_reports_real_errors(fhir_validator: InstanceValidator, case: str) -> None:
    resource, expected = BROKEN[case]
    (result,) = fhir_validator.validate([resource], case)
    assert result.errors, f"{case}: no error reported"
    assert expected in messages(result)


def test_codes_of_systems_unknown_offline_are_not_errors(
    fhir_validator: InstanceValidator,
) -> None:
    snomed, loinc = "http://snomed.info/sct", "http://loinc.org"
    resources = [
        {
            "resourceType": "Condition",
            "id": "c1",
            "subject": {"reference": "Patient/p1"},
            "code": {"coding": [{"system": snomed, "code": "94503003"}]},
            "bodySite": [{"coding": [{"system": snomed, "code": "122494005"}]}],
        },
        {
            "resourceType": "Observation",
            "id": "o1",
            "status": "final",
            "category": [{"coding": [{"system": snomed, "code": "363788007"}]}],
            "code": {"coding": [{"system": loinc, "code": "72514-3"}]},
            "subject": {"reference": "Patient/p1"},
            "valueCodeableConcept": {"coding": [{"system": snomed, "code": "260385009"}]},
            "interpretation": [{"coding": [{"system": snomed, "code": "281302008"}]}],
        },
    ]
    results = fhir_validator.validate(resources, "external-codes")
    assert errors_of(results) == ""


def test_the_published_terminology_is_valid(fhir_validator: InstanceValidator) -> None:
    files = sorted((REPO / "terminology").rglob("*.json"))
    files += sorted((REPO / "fhir_mappings" / "codesystems").glob("*.json"))
    assert len(files) >= 6
    results = [r for path in files for r in fhir_validator.validate_file(path)]
    assert {r.resource_type for r in results} == {"CodeSystem"}
    assert errors_of(results) == ""


def test_offline_outputs_are_valid(fhir_validator: InstanceValidator, tmp_path: Path) -> None:
    out = tmp_path / "out"
    source = REPO / "samples" / "hospital"
    command = ["screen", "--trial", "relieve,ssrs", "--source", str(source), "--as-of", AS_OF]
    assert main([*command, "--out", str(out), "--no-progress"]) in (0, 1)
    files = sorted(out.glob("*/Research*.ndjson"))
    assert [f.name for f in files] == ["ResearchStudy.ndjson", "ResearchSubject.ndjson"] * 2
    results = [r for path in files for r in fhir_validator.validate_file(path)]
    assert sum(r.resource_type == "ResearchSubject" for r in results) > 10
    assert errors_of(results) == ""
