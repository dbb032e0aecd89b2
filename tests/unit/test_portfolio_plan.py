"""The searches of a portfolio's one reading: each trial gets at least what its own searches
would have fetched, with one search per resource type for all of them."""

from __future__ import annotations

from service.fhir.retrieval import search_plan, search_requests
from service.ruleset.loader import RuleSet, load_ruleset
from tests.conftest import MAPPINGS_DIR, RULES_DIR


def ssrs() -> RuleSet:
    return load_ruleset(RULES_DIR / "ssrs.yaml", MAPPINGS_DIR)


def test_one_search_per_type_asking_for_what_any_trial_asks_for(relieve: RuleSet) -> None:
    mappers = [relieve.mapper, ssrs().mapper]
    shared = search_plan(mappers)
    keys = [(spec.resource_type, spec.patient_param) for spec in shared]
    assert len(keys) == len(set(keys))  # one search per type (and patient parameter)
    for mapper in mappers:
        for own in search_plan(mapper):
            merged = next(
                s
                for s in shared
                if (s.resource_type, s.patient_param) == (own.resource_type, own.patient_param)
            )
            own_filters = dict(own.filters)
            for param, values in merged.filters:
                # A filter kept is one this trial's search has too, with its values and more:
                # comma-separated values are alternatives, so the merged search finds more.
                assert param in own_filters, (own.resource_type, param)
                assert set(own_filters[param]) <= set(values), (own.resource_type, param)
    own_requests = sum(
        len(search_requests(spec, ["p1"], 40, 200)) for m in mappers for spec in search_plan(m)
    )
    shared_requests = sum(len(search_requests(spec, ["p1"], 40, 200)) for spec in shared)
    assert shared_requests < own_requests


def test_one_mapping_keeps_its_own_plan(relieve: RuleSet) -> None:
    assert search_plan([relieve.mapper]) == search_plan(relieve.mapper)
