"""General capabilities of the mapping language, each shown on a small mapping of its own.

None of these mappings is RELIEVE's: the point is that any trial can use them.
"""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service.errors import ConfigError, RuleSetError
from service.mapping.mapper import Mapper, load_mapping
from service.screening.source import Collector, InputIssue, IssueLog, current_copy

AS_OF = date(2026, 6, 15)
SNOMED = "http://snomed.info/sct"
ICD = "http://hl7.org/fhir/sid/icd-10-cm"
ATC = "http://www.whocc.no/atc"


def valueset(folder: Path, vs_id: str, include: list[dict[str, Any]]) -> None:
    resource = {"resourceType": "ValueSet", "id": vs_id, "compose": {"include": include}}
    (folder / f"{vs_id}.json").write_text(json.dumps(resource))


def mapping(tmp_path: Path, facts: dict[str, Any], **top: Any) -> Mapper:
    folder = tmp_path / "valuesets"
    folder.mkdir(exist_ok=True)
    valueset(folder, "tumour", [{"system": SNOMED, "concept": [{"code": "1"}]}])
    valueset(folder, "icd-tumour", [{"system": ICD, "concept": [{"code": "C79.51"}]}])
    valueset(
        folder,
        "drugs",
        [{"system": ATC, "filter": [{"property": "code", "op": "regex", "value": "L0[12].*"}]}],
    )
    valueset(folder, "kinds", [{"system": "urn:kinds", "concept": [{"code": "a"}, {"code": "b"}]}])
    doc = {
        "id": "demo",
        "version": "1",
        **top,
        "facts": {
            "patient": {
                "one": True,
                "sources": [
                    {
                        "resource": "Patient",
                        "fields": {"born": {"type": "date", "path": "birthDate"}},
                    }
                ],
            },
            **facts,
        },
    }
    path = tmp_path / "demo.yaml"
    path.write_text(yaml.safe_dump(doc))
    return load_mapping(path)


def condition(cid: str, *codings: dict[str, str], **extra: Any) -> dict[str, Any]:
    return {
        "resourceType": "Condition",
        "id": cid,
        "subject": {"reference": "Patient/p"},
        "code": {"coding": list(codings)},
        **extra,
    }


CONDITIONS = {
    "conditions": {
        "sources": [
            {
                "resource": "Condition",
                "where": [{"path": "code", "in_valueset": ["tumour", "icd-tumour"]}],
                "fields": {"seen": {"type": "const", "value": True}},
            }
        ]
    }
}


# --- code rules -----------------------------------------------------------------------------


def test_without_code_rules_only_exact_codings_match(tmp_path: Path) -> None:
    mapper = mapping(
        tmp_path,
        CONDITIONS,
        codes={"trim_whitespace": False, "ignore_trailing_slash": False, "ignore_scheme": False},
    )
    spaced = condition("c", {"system": SNOMED, "code": " 1"})
    assert mapper.map_resource(spaced, AS_OF).contributions == []  # type: ignore[union-attr]


def test_code_rules_match_variants_and_report_them(tmp_path: Path) -> None:
    mapper = mapping(
        tmp_path,
        CONDITIONS,
        codes={
            "systems": {
                SNOMED: {
                    "aliases": ["urn:oid:1.2.3"],
                    "alias_patterns": [r"http://snomed\.info/sct/\d+"],
                },
                ICD: {"ignore_in_code": "."},
            }
        },
    )
    variants = [
        {"system": "https://snomed.info/sct/", "code": "1"},
        {"system": SNOMED, "code": " 1 "},
        {"system": "urn:oid:1.2.3", "code": "1"},
        {"system": "http://snomed.info/sct/900000000000207008", "code": "1"},
        {"system": ICD, "code": "C7951"},
    ]
    for coding in variants:
        mapped = mapper.map_resource(condition("c", coding), AS_OF)
        assert mapped is not None and len(mapped.contributions) == 1, coding
        assert [i.kind for i in mapped.issues] == ["noncanonical-code"], coding
    exact = mapper.map_resource(condition("c", {"system": SNOMED, "code": "1"}), AS_OF)
    assert exact is not None and exact.issues == []
    # A variant beside an exact coding matched anyway: nothing to report.
    both = condition("c", {"system": SNOMED, "code": "1"}, {"system": ICD, "code": "C7951"})
    assert mapper.map_resource(both, AS_OF).issues == []  # type: ignore[union-attr]
    # The raw-line prefilter lets the undotted spelling and surrounding spaces through.
    prefilter = mapper.prefilters["Condition"]
    assert prefilter is not None
    assert prefilter.search(b'{"code": " C7951 "}') and prefilter.search(b'{"code":"C79.51"}')


def test_an_unknown_value_set_names_the_mapping_line_and_the_closest_ids(tmp_path: Path) -> None:
    facts = {
        "conditions": {
            "sources": [
                {
                    "resource": "Condition",
                    "where": [{"path": "code", "in_valueset": ["tumour", "icd-tumor"]}],
                    "fields": {"seen": {"type": "const", "value": True}},
                }
            ]
        }
    }
    with pytest.raises(RuleSetError) as caught:
        mapping(tmp_path, facts)
    (problem,) = caught.value.problems
    path = tmp_path / "demo.yaml"
    line = next(n for n, text in enumerate(path.read_text().splitlines(), 1) if "icd-tumor" in text)
    assert problem == (
        f"{path}:{line}: fact 'conditions' source 1 (Condition) where 1: unknown value set "
        "'icd-tumor' (none of the ValueSets in valuesets/ has this id); the closest ids: "
        "icd-tumour, tumour"
    )


def test_a_coding_without_system_matches_nothing(tmp_path: Path) -> None:
    mapper = mapping(tmp_path, CONDITIONS)
    mapped = mapper.map_resource(condition("c", {"code": "1"}), AS_OF)
    assert mapped is not None and mapped.contributions == []


def test_regex_filters_are_evaluated_offline(tmp_path: Path) -> None:
    mapper = mapping(
        tmp_path,
        {
            "drugs": {
                "sources": [
                    {
                        "resource": "MedicationStatement",
                        "where": [{"path": "medicationCodeableConcept", "in_valueset": "drugs"}],
                        "fields": {"seen": {"type": "const", "value": True}},
                    }
                ]
            }
        },
    )

    def statement(code: str) -> dict[str, Any]:
        return {
            "resourceType": "MedicationStatement",
            "id": "m",
            "subject": {"reference": "Patient/p"},
            "medicationCodeableConcept": {"coding": [{"system": ATC, "code": code}]},
        }

    assert len(mapper.map_resource(statement("L01XA01"), AS_OF).contributions) == 1  # type: ignore[union-attr]
    assert len(mapper.map_resource(statement("L02BG04"), AS_OF).contributions) == 1  # type: ignore[union-attr]
    assert mapper.map_resource(statement("N02BE01"), AS_OF).contributions == []  # type: ignore[union-attr]
    assert mapper.map_resource(statement("XL01"), AS_OF).contributions == []  # type: ignore[union-attr]
    assert mapper.prefilters["MedicationStatement"] is None  # no code list to look for


def test_a_server_search_on_a_regex_value_set_is_refused(tmp_path: Path) -> None:
    facts = {
        "drugs": {
            "sources": [
                {
                    "resource": "MedicationStatement",
                    "where": [
                        {
                            "path": "medicationCodeableConcept",
                            "in_valueset": "drugs",
                            "search": "code",
                        }
                    ],
                    "fields": {"seen": {"type": "const", "value": True}},
                }
            ]
        }
    }
    with pytest.raises(ConfigError, match="regex"):
        mapping(tmp_path, facts)


# --- field types ----------------------------------------------------------------------------

FIELDS = {
    "things": {
        "sources": [
            {
                "resource": "Observation",
                "fields": {
                    "kinds": {
                        "type": "codes",
                        "path": "component.valueCodeableConcept",
                        "valueset": "kinds",
                        "default": ["none"],
                    },
                    "coded_site": {"type": "coded", "path": "bodySite"},
                    "stage": {
                        "type": "lookup",
                        "path": "status",
                        "map": {"preliminary": "early", "final": "late"},
                    },
                    "score": {
                        "type": "number",
                        "path": "valueInteger | valueString",
                        "required": True,
                        "range": [0, 10],
                        "integer": True,
                        "text_pattern": r"\s*(\d+)\s*(?:/\s*10)?\s*",
                    },
                    "score_usable": {"type": "present", "field": "score"},
                    "score_unusable": {"type": "unusable", "field": "score"},
                    "flag": {"type": "bool", "path": "extension.valueBoolean"},
                },
            }
        ]
    }
}


def observation(**extra: Any) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "id": "o",
        "subject": {"reference": "Patient/p"},
        **extra,
    }


def record_of(mapper: Mapper, resource: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    mapped = mapper.map_resource(resource, AS_OF)
    assert mapped is not None
    return dict(mapped.contributions[0].record), [i.kind for i in mapped.issues]


def test_codes_fields_list_every_code_in_any_order(tmp_path: Path) -> None:
    mapper = mapping(tmp_path, FIELDS)

    def kinds(*codes: str) -> Any:
        components = [
            {"valueCodeableConcept": {"coding": [{"system": "urn:kinds", "code": c}]}}
            for c in codes
        ]
        return record_of(mapper, observation(valueInteger=1, component=components))[0]["kinds"]

    assert kinds("b", "a") == kinds("a", "b") == ["a", "b"]
    assert kinds("zzz") == ["none"]


def test_coded_means_a_coding_in_a_system_some_value_set_uses(tmp_path: Path) -> None:
    mapper = mapping(tmp_path, FIELDS)

    def coded(site: Any) -> Any:
        return record_of(mapper, observation(valueInteger=1, bodySite=site))[0]["coded_site"]

    assert coded({"coding": [{"system": SNOMED, "code": "999"}]}) is True
    assert coded({"text": "lower back"}) is False
    assert coded({"coding": [{"system": "urn:local", "code": "L3"}]}) is False


def test_lookup_fields_label_values(tmp_path: Path) -> None:
    mapper = mapping(tmp_path, FIELDS)
    assert record_of(mapper, observation(status="final", valueInteger=1))[0]["stage"] == "late"
    assert record_of(mapper, observation(status="other", valueInteger=1))[0]["stage"] == ""


@pytest.mark.parametrize(
    ("value", "score", "usable", "issues"),
    [
        ({"valueInteger": 7}, 7.0, True, []),
        ({"valueInteger": 7.5}, 7.5, True, ["lenient-value"]),
        ({"valueString": "7/10"}, 7.0, True, ["lenient-value"]),
        ({"valueString": "seven"}, 0.0, False, ["bad-value"]),
        ({"valueInteger": 11}, 0.0, False, ["bad-value"]),
        ({"valueInteger": True}, 0.0, False, ["bad-value"]),
        ({}, 0.0, False, ["bad-value"]),  # required: no value is unusable
    ],
)
def test_number_options(
    tmp_path: Path, value: dict[str, Any], score: float, usable: bool, issues: list[str]
) -> None:
    record, kinds = record_of(mapping(tmp_path, FIELDS), observation(**value))
    assert (record["score"], record["score_usable"], record["score_unusable"]) == (
        score,
        usable,
        not usable,
    )
    assert kinds == issues


@pytest.mark.parametrize(
    ("flag", "value", "issues"),
    [(True, True, []), ("true", True, ["lenient-value"]), ("yes", False, ["bad-value"])],
)
def test_booleans_written_as_text(
    tmp_path: Path, flag: Any, value: bool, issues: list[str]
) -> None:
    resource = observation(valueInteger=1, extension=[{"url": "x", "valueBoolean": flag}])
    record, kinds = record_of(mapping(tmp_path, FIELDS), resource)
    assert record["flag"] is value and kinds == issues


def test_quantity_units_ignore_case_and_read_code_or_unit(tmp_path: Path) -> None:
    facts = {
        "amounts": {
            "sources": [
                {
                    "resource": "Observation",
                    "fields": {
                        "days": {
                            "type": "quantity",
                            "path": "valueQuantity",
                            "required": True,
                            "units": {"d": 1.0, "wk": 7.0},
                            "ignore_unit_case": True,
                        },
                        "bound": {"type": "code", "path": "valueQuantity.comparator"},
                    },
                }
            ]
        }
    }
    mapper = mapping(tmp_path, facts)
    record, kinds = record_of(
        mapper, observation(valueQuantity={"value": 2, "unit": "WK", "comparator": "<"})
    )
    assert (record["days"], record["bound"], kinds) == (14.0, "<", [])
    record, kinds = record_of(
        mapper, observation(valueQuantity={"value": 2, "code": "x", "unit": "d"})
    )
    assert record["days"] == 2.0
    _, kinds = record_of(mapper, observation(valueQuantity={"value": 2, "unit": "fortnight"}))
    assert kinds == ["bad-value"]


# --- resolve() ------------------------------------------------------------------------------

RESOLVING = {
    "drugs": {
        "sources": [
            {
                "resource": "MedicationRequest",
                "resolve": {"medicationReference": "Medication"},
                "where": [
                    {
                        "path": "medicationCodeableConcept | medicationReference.resolve().code",
                        "in_valueset": "drugs",
                    }
                ],
                "fields": {"seen": {"type": "const", "value": True}},
            }
        ]
    }
}


def request(reference: str, **extra: Any) -> dict[str, Any]:
    return {
        "resourceType": "MedicationRequest",
        "id": "r",
        "subject": {"reference": "Patient/p"},
        "medicationReference": {"reference": reference},
        **extra,
    }


def medication(mid: str, code: str, **extra: Any) -> dict[str, Any]:
    return {
        "resourceType": "Medication",
        "id": mid,
        "code": {"coding": [{"system": ATC, "code": code}]},
        **extra,
    }


def collect(mapper: Mapper, resources: list[dict[str, Any]]) -> tuple[Collector, list[InputIssue]]:
    issues: list[InputIssue] = []
    collector = Collector(mapper, AS_OF, IssueLog(sink=issues.append))
    collector.read_resources(resources)
    return collector, issues


def drug_records(collector: Collector) -> list[Any]:
    data = collector.patients.get("p")
    return [] if data is None else data.facts().get("drugs", [])


def test_resolve_follows_a_reference_whatever_the_order(tmp_path: Path) -> None:
    mapper = mapping(tmp_path, RESOLVING)
    assert mapper.join_targets == {"Medication"}
    for reference in ("Medication/m1", "https://ehr.example/fhir/Medication/m1/_history/3"):
        collector, issues = collect(mapper, [request(reference), medication("m1", "L01XA01")])
        assert len(drug_records(collector)) == 1 and issues == []
    other, _ = collect(mapper, [request("Medication/m1"), medication("m1", "N02BE01")])
    assert drug_records(other) == []


def test_resolve_reads_contained_resources(tmp_path: Path) -> None:
    mapper = mapping(tmp_path, RESOLVING)
    contained = request("#x", contained=[medication("x", "L02BG04")])
    collector, issues = collect(mapper, [contained])
    assert len(drug_records(collector)) == 1 and issues == []


def test_an_unresolved_reference_is_reported(tmp_path: Path) -> None:
    collector, issues = collect(mapping(tmp_path, RESOLVING), [request("Medication/gone")])
    assert drug_records(collector) == []
    assert [i.kind for i in issues] == ["unresolved-reference"]


def test_resolve_must_be_declared(tmp_path: Path) -> None:
    facts = json.loads(json.dumps(RESOLVING))
    del facts["drugs"]["sources"][0]["resolve"]
    with pytest.raises(ConfigError, match="resolve"):
        mapping(tmp_path, facts)


def test_the_live_run_is_told_which_references_to_fetch(tmp_path: Path) -> None:
    mapper = mapping(tmp_path, RESOLVING)
    assert mapper.references_to_resolve(request("Medication/m1")) == ["Medication/m1"]
    assert mapper.references_to_resolve(request("#x")) == []


# --- versions and patients not to screen ----------------------------------------------------


def copy(version: str | None, updated: str | None, order: int) -> Any:
    return (version, updated, order, f"v{version}-u{updated}-#{order}")


def test_the_current_copy_of_a_resource() -> None:
    assert current_copy([copy("10", None, 1), copy("9", None, 2)])[3] == "v10-uNone-#1"
    assert current_copy([copy("b", None, 1), copy("a1", None, 2)])[3] == "vb-uNone-#1"
    assert current_copy([copy("3", "2026-06-01", 1), copy("3", "2026-05-01", 2)])[2] == 2
    assert current_copy([copy(None, "2026-06-01", 1), copy(None, "2026-05-01", 2)])[2] == 1
    assert current_copy([copy(None, None, 1), copy(None, None, 2)])[2] == 2
    # "²" is a digit to str.isdigit() but no integer: the versions compare as text.
    assert current_copy([copy("²", None, 1), copy("3", None, 2)])[2] == 1


def test_patients_not_to_screen(tmp_path: Path) -> None:
    mapper = mapping(
        tmp_path,
        {},
        patients={"not_screened": [{"path": "active", "in": ["false"], "reason": "inactive"}]},
    )
    patients = [
        {"resourceType": "Patient", "id": "a", "active": False},
        {"resourceType": "Patient", "id": "b", "active": True},
        {"resourceType": "Patient", "id": "c", "meta": {"versionId": "2"}},
        {"resourceType": "Patient", "id": "c", "meta": {"versionId": "1"}, "active": False},
    ]
    collector, _ = collect(mapper, patients)
    assert [pid for pid, _, _ in collector.screened_patients()] == ["b", "c"]
    assert [(pid, reason) for pid, reason, _ in collector.not_screened()] == [("a", "inactive")]


# --- properties of the quantity and number readers ------------------------------------------

_any_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner),
    max_leaves=10,
)
QUANTITY = {
    "amounts": {
        "sources": [
            {
                "resource": "Observation",
                "fields": {
                    "months": {
                        "type": "quantity",
                        "path": "valueQuantity | valueInteger",
                        "required": True,
                        "units": {"mo": 1.0, "wk": 0.25},
                        "if_no_unit": "mo",
                        "ignore_unit_case": True,
                    },
                    "usable": {"type": "present", "field": "months"},
                    "score": {
                        "type": "number",
                        "path": "valueString",
                        "range": [0, 10],
                        "text_pattern": r"\s*(\d+)\s*",
                    },
                },
            }
        ]
    }
}


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(value=_any_json, text=_any_json)
def test_any_json_value_is_read_or_reported_never_raised(
    tmp_path: Path, value: Any, text: Any
) -> None:
    mapper = mapping(tmp_path, QUANTITY)
    mapped = mapper.map_resource(observation(valueQuantity=value, valueString=text), AS_OF)
    assert mapped is not None
    record = mapped.contributions[0].record
    assert isinstance(record["months"], float) and isinstance(record["score"], float)
    assert record["usable"] or "bad-value" in [i.kind for i in mapped.issues]


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    amount=st.floats(min_value=-1e12, max_value=1e12, allow_nan=False),
    unit=st.sampled_from(["mo", "MO", "wk", "Wk", None]),
    as_code=st.booleans(),
)
def test_valid_quantities_convert_by_their_unit(
    tmp_path: Path, amount: float, unit: str | None, as_code: bool
) -> None:
    quantity: dict[str, Any] = {"value": amount}
    if unit is not None:
        quantity["code" if as_code else "unit"] = unit
    record, kinds = record_of(mapping(tmp_path, QUANTITY), observation(valueQuantity=quantity))
    factor = 0.25 if unit and unit.lower() == "wk" else 1.0
    assert record["months"] == amount * factor and record["usable"] and kinds == []


# --- capabilities the second trial needed ---------------------------------------------------

SCORES = {
    "scores": {
        "sources": [
            {
                "resource": "Observation",
                "fields": {
                    "score": {
                        "type": "number",
                        "required": True,
                        "range": [0, 100],
                        "step": 10,
                        "path": "valueInteger | valueString | valueCodeableConcept",
                        "text_pattern": r"\s*(\d+)\s*%?\s*",
                        "valueset": "kinds",
                        "code_values": {"a": 100, "b": 90},
                    },
                    "answer": {
                        "type": "lookup",
                        "path": "valueString",
                        "ignore_case": True,
                        "map": {"not detected": "negative"},
                    },
                    "sex": {
                        "type": "code",
                        "path": "extension[url = 'urn:sex'].valueCode | gender",
                    },
                    "levels": {
                        "type": "codes",
                        "path": "bodySite",
                        "valueset": "tumour",
                        "map": {"1": "L1"},
                    },
                },
            }
        ]
    }
}


@pytest.mark.parametrize(
    ("value", "score", "issues"),
    [
        ({"valueInteger": 70}, 70.0, []),
        ({"valueInteger": 75}, 0.0, ["bad-value"]),  # not in steps of 10
        ({"valueString": "80%"}, 80.0, ["lenient-value"]),
        ({"valueCodeableConcept": {"coding": [{"system": "urn:kinds", "code": "b"}]}}, 90.0, []),
        (
            {"valueCodeableConcept": {"coding": [{"system": "urn:other", "code": "b"}]}},
            0.0,
            ["bad-value"],
        ),  # a code outside the answer value set
    ],
)
def test_numbers_from_coded_answers_and_steps(
    tmp_path: Path, value: dict[str, Any], score: float, issues: list[str]
) -> None:
    record, kinds = record_of(mapping(tmp_path, SCORES), observation(**value))
    assert record["score"] == score and kinds == issues


def test_text_filters_case_free_lookups_and_translated_codes(tmp_path: Path) -> None:
    mapper = mapping(tmp_path, SCORES)
    resource = observation(
        valueString=" Not Detected ",
        extension=[{"url": "urn:other", "valueCode": "M"}, {"url": "urn:sex", "valueCode": "F"}],
        bodySite=[{"coding": [{"system": SNOMED, "code": "1"}]}],
    )
    record, _ = record_of(mapper, resource)
    assert (record["answer"], record["sex"], record["levels"]) == ("negative", "F", ["L1"])
    record, _ = record_of(mapper, observation(valueString="x", gender="female"))
    assert (record["answer"], record["sex"], record["levels"]) == ("", "female", [])


def test_code_rules_apply_to_regex_value_sets_dotted_and_dotless(tmp_path: Path) -> None:
    # ICD-10-CM written with or without its dot, against regex filters written either way.
    folder = tmp_path / "valuesets"
    folder.mkdir()
    lymphoma = [
        {"system": ICD, "filter": [{"property": "code", "op": "regex", "value": r"C8[1-8]\.\d+"}]}
    ]
    valueset(folder, "lymphoma-dotted", lymphoma)
    myeloma = [
        {"system": ICD, "filter": [{"property": "code", "op": "regex", "value": r"C90[0-9]{2}"}]}
    ]
    valueset(folder, "myeloma-dotless", myeloma)
    facts = {
        "conditions": {
            "sources": [
                {
                    "resource": "Condition",
                    "where": [
                        {"path": "code", "in_valueset": ["lymphoma-dotted", "myeloma-dotless"]}
                    ],
                    "fields": {"code": {"type": "string", "path": "code.coding.code"}},
                }
            ]
        }
    }
    mapper = mapping(tmp_path, facts, codes={"systems": {ICD: {"ignore_in_code": "."}}})

    def mapped(code: str) -> tuple[list[str], list[str]]:
        result = mapper.map_resource(condition("c", {"system": ICD, "code": code}), AS_OF)
        assert result is not None
        return [str(c.record["code"]) for c in result.contributions], [
            i.kind for i in result.issues
        ]

    assert mapped("C83.30") == (["C83.30"], [])  # as the filter writes it
    assert mapped("C8330") == (["C83.30"], ["noncanonical-code"])  # the dot put back
    assert mapped(" C83.30 ") == (["C83.30"], ["noncanonical-code"])
    assert mapped("C90.00") == (["C9000"], ["noncanonical-code"])  # the dot taken out
    assert mapped("C9000") == (["C9000"], [])
    assert mapped("C8O30") == ([], [])  # a letter O is no digit: no spelling matches
