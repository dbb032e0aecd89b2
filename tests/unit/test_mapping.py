from datetime import date

import pytest

from service.mapping.resources import UnattributableResourceError, patient_id_from_reference
from service.ruleset.loader import RuleSet

AS_OF = date(2026, 6, 15)


def nrs(**extra: object) -> dict[str, object]:
    return {
        "resourceType": "Observation",
        "id": "o1",
        "status": "final",
        "subject": {"reference": "Patient/p"},
        "code": {"coding": [{"system": "http://loinc.org", "code": "72514-3"}]},
        "effectiveDateTime": "2026-06-10T09:00:00+02:00",
        **extra,
    }


def test_every_field_is_present_with_plain_values(relieve: RuleSet) -> None:
    mapped = relieve.mapper.map_resource(nrs(valueInteger=7), AS_OF)
    assert mapped is not None and mapped.patient_id == "p"
    (contribution,) = mapped.contributions
    assert contribution.record == {
        "ref": "Observation/o1",
        "has_score": True,
        "score": 7.0,
        "pain_types": ["unspecified"],
        "date": "2026-06-10",
        "instant": "2026-06-10T07:00:00Z",
    }
    assert isinstance(contribution.record["score"], float)


def test_unusable_value_counts_as_absent_and_is_reported_without_the_value(
    relieve: RuleSet,
) -> None:
    mapped = relieve.mapper.map_resource(nrs(valueQuantity={"value": "seven"}), AS_OF)
    assert mapped is not None
    record = mapped.contributions[0].record
    assert record["has_score"] is False and record["score"] == 0.0
    assert [(i.field, i.message, i.kind) for i in mapped.issues] == [
        (
            "Observation.valueInteger | valueQuantity.value | valueString",
            "is text that is not a number in the expected form",
            "bad-value",
        )
    ]
    assert "seven" not in repr(mapped.issues)


def test_resources_outside_the_value_sets_give_no_record(relieve: RuleSet) -> None:
    blood_pressure = nrs(code={"coding": [{"system": "http://loinc.org", "code": "8480-6"}]})
    mapped = relieve.mapper.map_resource(blood_pressure, AS_OF)
    # Still known as a copy of Observation/o1 (a newer copy that no longer counts retracts it).
    assert mapped is not None and mapped.contributions == [] and mapped.ref == "Observation/o1"
    assert relieve.mapper.map_resource({"resourceType": "Encounter", "id": "e"}, AS_OF) is None


def test_status_filters_come_from_the_mapping(relieve: RuleSet) -> None:
    cancelled = relieve.mapper.map_resource(nrs(status="cancelled", valueInteger=7), AS_OF)
    assert cancelled is not None and cancelled.contributions == []
    preliminary = relieve.mapper.map_resource(nrs(status="preliminary", valueInteger=7), AS_OF)
    assert preliminary is not None and len(preliminary.contributions) == 1


def test_a_wanted_resource_without_subject_is_rejected(relieve: RuleSet) -> None:
    resource = nrs(valueInteger=7)
    del resource["subject"]
    with pytest.raises(UnattributableResourceError, match="no subject"):
        relieve.mapper.map_resource(resource, AS_OF)


@pytest.mark.parametrize(
    "reference",
    ["Patient/42", "https://ehr.example/fhir/Patient/42", "Patient/42/_history/3"],
)
def test_patient_references_in_any_form(reference: str) -> None:
    assert patient_id_from_reference(reference) == "42"


def test_group_subject_is_not_a_patient() -> None:
    with pytest.raises(UnattributableResourceError):
        patient_id_from_reference("Group/7")


def test_prefilter_only_lets_lines_with_relevant_codes_through(relieve: RuleSet) -> None:
    pattern = relieve.mapper.prefilters["Observation"]
    assert pattern is not None
    assert pattern.search(b'{"code":{"coding":[{"code":"72514-3"}]}}')
    assert not pattern.search(b'{"code":{"coding":[{"code":"8480-6"}]}}')
    # A code that merely contains a relevant one as a substring does not match.
    assert not pattern.search(b'{"code":"172514-3"}')
    assert relieve.mapper.prefilters["Patient"] is None


def test_survival_units_are_converted_to_months(relieve: RuleSet) -> None:
    survival = {
        "resourceType": "Observation",
        "id": "s",
        "status": "final",
        "subject": {"reference": "Patient/p"},
        "code": {"coding": [{"system": "urn:prescreen:relieve", "code": "estimated-survival"}]},
        "valueQuantity": {"value": 2, "code": "a"},
    }
    mapped = relieve.mapper.map_resource(survival, AS_OF)
    assert mapped is not None and mapped.contributions[0].record["months"] == 24.0
