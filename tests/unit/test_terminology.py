import json
from pathlib import Path

import pytest

from service.errors import ConfigError
from service.terminology import load_valueset, load_valuesets
from tests.conftest import MAPPINGS_DIR


def test_shipped_value_sets_load_as_fhir_valuesets() -> None:
    valuesets = load_valuesets([MAPPINGS_DIR / "valuesets"])
    assert valuesets["relieve-vertebral-metastasis"].contains("http://snomed.info/sct", "94602001")
    # Codes the terminology reference marks DO NOT USE stay out of the defaults.
    everything = {pair for vs in valuesets.values() for pair in vs.codes}
    assert ("http://snomed.info/sct", "94503003") not in everything
    assert ("http://snomed.info/sct", "429616001") not in everything


def test_any_coding_of_a_concept_matches() -> None:
    vs = load_valuesets([MAPPINGS_DIR / "valuesets"])["relieve-confounding-pain"]
    concept = {
        "coding": [
            {"system": "urn:local", "code": "x"},
            {"system": "http://hl7.org/fhir/sid/icd-10-cm", "code": "C78.7"},
        ]
    }
    assert vs.matches_concept(concept)
    assert not vs.matches_concept({"coding": [{"code": "C78.7"}]})  # no system, no match


def test_filters_that_need_a_terminology_server_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "vs.json"
    path.write_text(
        json.dumps(
            {
                "resourceType": "ValueSet",
                "id": "x",
                "compose": {
                    "include": [
                        {
                            "system": "http://snomed.info/sct",
                            "filter": [{"property": "concept", "op": "is-a", "value": "128462008"}],
                        }
                    ]
                },
            }
        )
    )
    with pytest.raises(ConfigError, match="cannot be expanded offline"):
        load_valueset(path)


def test_a_url_that_does_not_name_the_id_is_reported_against_the_file(tmp_path: Path) -> None:
    path = tmp_path / "rtog-pain.json"
    resource = {
        "resourceType": "ValueSet",
        "id": "rtog-pain",
        "url": "urn:prescreen:fhir:ValueSet:rtog-pian",
        "compose": {"include": [{"system": "http://loinc.org", "concept": [{"code": "72514-3"}]}]},
    }
    path.write_text(json.dumps(resource))
    with pytest.raises(ConfigError) as caught:
        load_valueset(path)
    assert str(caught.value).startswith(
        f"{path}: ValueSet url 'urn:prescreen:fhir:ValueSet:rtog-pian' does not end in its id "
        "'rtog-pain'"
    )
    for url in (
        "urn:prescreen:fhir:ValueSet:rtog-pain",
        "https://example.org/fhir/ValueSet/rtog-pain",
    ):
        path.write_text(json.dumps({**resource, "url": url}))
        assert load_valueset(path).url == url
