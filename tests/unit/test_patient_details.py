"""Who a patient is, read by a mapping's display section: name, MRN, birth date and sex, from
records as hospitals write them (several names and numbers, old ones, wrong JSON types)."""

from __future__ import annotations

import json
from copy import deepcopy
from datetime import date
from pathlib import Path
from typing import Any

import pytest
import yaml

from service.errors import RuleSetError
from service.mapping.display import DisplayReader, PatientDetails
from service.mapping.mapper import load_mapping
from service.ruleset.loader import RuleSet
from service.screening.details import DetailsCollector, details_of
from service.screening.source import IssueLog
from service.ui.people import age_text

V2 = "http://terminology.hl7.org/CodeSystem/v2-0203"
HOSPITAL = "http://hospital.example.org/mrn"


def reader(relieve: RuleSet) -> DisplayReader:
    assert relieve.mapper.display is not None
    return relieve.mapper.display


def identifier(value: Any, system: str = HOSPITAL, code: str = "MR", **more: Any) -> Any:
    typed = {"type": {"coding": [{"system": V2, "code": code}]}} if code else {}
    return {**typed, "system": system, "value": value, **more}


def patient(**elements: Any) -> dict[str, Any]:
    return {"resourceType": "Patient", "id": "p1", **elements}


def test_the_official_name_is_shown_family_first(relieve: RuleSet) -> None:
    names = [
        {"use": "nickname", "given": ["Bob"]},
        {"use": "old", "family": "Maiden", "given": ["Roberta"]},
        {"use": "official", "family": "García Núñez", "given": ["Roberta", "María"]},
    ]
    assert reader(relieve).read(patient(name=names)).name == "García Núñez, Roberta María"
    # No official one: usual, then any other; an old name only when there is nothing else.
    assert reader(relieve).read(patient(name=names[:2])).name == "Bob"
    assert reader(relieve).read(patient(name=names[1:2])).name == "Maiden, Roberta"
    assert reader(relieve).read(patient(name=[{"text": "Dr. Ann Lee"}])).name == "Dr. Ann Lee"


def test_a_name_of_the_wrong_json_type_is_passed_over(relieve: RuleSet) -> None:
    odd = [
        "Smith, John",
        {"family": 42, "given": "John"},
        {"family": "Lee\x00\n", "given": [None, 7, " Ann "]},
    ]
    assert reader(relieve).read(patient(name=odd)).name == "Lee, Ann"
    assert reader(relieve).read(patient(name="Smith")) == PatientDetails()


def test_the_mrn_is_the_identifier_typed_mr_in_use(relieve: RuleSet) -> None:
    identifiers = [
        identifier("SSN-1", code="SS"),
        identifier("OLD-1", use="old"),
        # The identifier type under the URI earlier FHIR versions used, with stray spaces.
        {
            "type": {"coding": [{"system": " http://hl7.org/fhir/v2/0203", "code": "MR "}]},
            "system": HOSPITAL,
            "value": " 0042 ",
        },
    ]
    read = reader(relieve).read(patient(identifier=identifiers))
    assert read.mrn == "0042"
    # The record is left as it came.
    assert identifiers[2]["type"]["coding"][0] == {
        "system": " http://hl7.org/fhir/v2/0203",
        "code": "MR ",
    }
    # Only an old one: better than none.
    assert reader(relieve).read(patient(identifier=identifiers[:2])).mrn == "OLD-1"
    assert reader(relieve).read(patient(identifier=identifiers[:1])).mrn == ""


def test_the_mrn_system_setting_picks_the_hospitals_number(relieve: RuleSet) -> None:
    identifiers = [identifier("P-77", system="http://partner.example.org/mrn"), identifier("0042")]
    assert reader(relieve).read(patient(identifier=identifiers)).mrn == "P-77"
    assert reader(relieve).read(patient(identifier=identifiers), f"{HOSPITAL}/ ").mrn == "0042"
    assert reader(relieve).read(patient(identifier=identifiers), "urn:other").mrn == ""
    wrong = [{"type": "MR", "value": "x"}, identifier(["0042"]), identifier(None), "0042"]
    assert reader(relieve).read(patient(identifier=wrong)).mrn == ""


def test_birth_date_and_sex(relieve: RuleSet) -> None:
    read = reader(relieve).read(patient(birthDate="1950-03", gender="female"))
    assert (read.birth_date, read.sex) == ("1950-03", "female")
    assert reader(relieve).read(patient(birthDate="03/04/1950")).birth_date == ""
    odd = patient(birthDate=1950, gender={"code": "male"})
    assert reader(relieve).read(odd) == PatientDetails()


def test_ages_from_full_and_partial_birth_dates() -> None:
    today = date(2026, 6, 15)
    assert age_text("1950-06-15", today) == "76"
    assert age_text("1950-06-16", today) == "75"
    assert age_text("1950-06", today) == "75–76"
    assert age_text("1950", today) == "75–76"
    assert age_text("2027-01-01", today) == ""
    assert age_text("1950-02-30", today) == age_text("", today) == ""


def test_the_current_version_of_a_patient_gives_the_details(relieve: RuleSet) -> None:
    first = patient(meta={"versionId": "2"}, name=[{"family": "New"}])
    second = patient(meta={"versionId": "1"}, name=[{"family": "Old"}])
    assert details_of([first, second], reader(relieve))["p1"].name == "New"
    assert details_of([second, first], reader(relieve))["p1"].name == "New"
    assert details_of([{"resourceType": "Patient"}, "x"], reader(relieve)) == {}
    assert details_of([first], None) == {}


def test_a_reading_keeps_the_details_beside_the_facts(relieve: RuleSet) -> None:
    collector = DetailsCollector(relieve.mapper, date(2026, 6, 15), IssueLog(), mrn_system=HOSPITAL)
    collector.read_resources([patient(name=[{"family": "Kim"}], identifier=[identifier("7")])])
    assert collector.keeper.details() == {"p1": PatientDetails("Kim", "7", "", "")}
    assert [pid for pid, _, _ in collector.screened_patients()] == ["p1"]


def test_no_rule_can_read_the_details(relieve: RuleSet) -> None:
    sample = relieve.mapper.schema_sample()["patient"]
    assert not {"name", "mrn", "identifier"} & set(sample)


def test_a_display_path_naming_an_unknown_value_set_fails_at_load(
    relieve: RuleSet, tmp_path: Path
) -> None:
    doc = yaml.safe_load(relieve.mapper.source_file.read_text())
    doc = deepcopy(doc) | {"valuesets": ["valuesets"]}
    doc["display"]["mrn"] = "identifier[type in patient-identifier-mrn]"
    (tmp_path / "valuesets").mkdir()
    source = relieve.mapper.source_file.parent / "valuesets"
    for path in source.glob("*.json"):
        (tmp_path / "valuesets" / path.name).write_text(path.read_text())
    (tmp_path / "demo.yaml").write_text(yaml.safe_dump(doc))
    with pytest.raises(RuleSetError) as caught:
        load_mapping(tmp_path / "demo.yaml")
    (problem,) = caught.value.problems
    assert "display 'mrn': unknown value set 'patient-identifier-mrn'" in problem
    assert "the closest ids: patient-identifier-mr" in problem


def test_the_shipped_value_set_names_the_identifier_type() -> None:
    root = Path(__file__).resolve().parents[2] / "fhir_mappings" / "valuesets"
    resource = json.loads((root / "patient-identifier-mr.json").read_text())
    systems = {include["system"] for include in resource["compose"]["include"]}
    assert systems == {V2, "http://hl7.org/fhir/v2/0203"}
