from service.mapping.paths import compile_path
from service.terminology import ValueSet

PAIN_TYPE = ValueSet("pt", "", "", frozenset({("urn:x", "pain-type")}))
VALUESETS = {"pt": PAIN_TYPE}


def test_steps_flatten_lists_like_fhirpath() -> None:
    path = compile_path("code.coding.code", VALUESETS, "t")
    resource = {"code": {"coding": [{"code": "a"}, {"code": "b"}]}}
    assert path.values(resource) == ["a", "b"]


def test_first_alternative_with_a_value_wins() -> None:
    path = compile_path(
        "effectiveDateTime | effectivePeriod.end | effectivePeriod.start", VALUESETS, "t"
    )
    assert path.first({"effectivePeriod": {"start": "s", "end": "e"}}) == "e"
    assert path.first({"effectivePeriod": {"start": "s"}}) == "s"
    assert path.first({}) is None


def test_bracket_keeps_elements_whose_code_is_in_the_value_set() -> None:
    path = compile_path("component[code in pt].valueCodeableConcept.text", VALUESETS, "t")
    resource = {
        "component": [
            {
                "code": {"coding": [{"system": "urn:x", "code": "other"}]},
                "valueCodeableConcept": {"text": "no"},
            },
            {
                "code": {"coding": [{"system": "urn:x", "code": "pain-type"}]},
                "valueCodeableConcept": {"text": "yes"},
            },
        ]
    }
    assert path.values(resource) == ["yes"]


def test_unknown_value_set_in_a_path_is_a_configuration_error() -> None:
    import pytest

    from service.errors import ConfigError

    with pytest.raises(ConfigError, match="unknown value set 'nope'"):
        compile_path("component[code in nope].value", VALUESETS, "file.yaml")
