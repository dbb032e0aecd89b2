"""celpy and cel give identical results on every patient of the shipped sample hospital."""

from __future__ import annotations

from datetime import date

from service.ruleset.evaluate import Evaluator
from service.ruleset.loader import RuleSet
from service.screening.ndjson import read_folder
from service.screening.source import Collector, IssueLog
from tests.conftest import SAMPLE_DIR


def test_engines_agree_on_the_sample_hospital(relieve: RuleSet) -> None:
    as_of = date(2026, 6, 15)
    collector = Collector(relieve.mapper, as_of, IssueLog())
    read_folder(collector, SAMPLE_DIR)
    fast, reference = Evaluator(relieve, "cel"), Evaluator(relieve, "celpy")
    compared = 0
    for patient_id, _patient, facts in collector.screened_patients():
        ours = fast.evaluate(patient_id, facts, as_of).as_contract(relieve, as_of)
        theirs = reference.evaluate(patient_id, facts, as_of).as_contract(relieve, as_of)
        assert ours == theirs, patient_id
        compared += 1
    assert compared == 300


def test_memoised_evaluation_equals_plain_evaluation(relieve: RuleSet) -> None:
    as_of = date(2026, 6, 15)
    collector = Collector(relieve.mapper, as_of, IssueLog())
    read_folder(collector, SAMPLE_DIR)
    plain, memo = Evaluator(relieve, "cel"), Evaluator(relieve, "cel", memoize=True)
    for patient_id, _patient, facts in collector.screened_patients():
        assert memo.evaluate(patient_id, facts, as_of) == plain.evaluate(patient_id, facts, as_of)
    assert memo.memo_hits > 100  # most sample patients share a fact pattern
