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


def test_one_evaluator_gives_each_patient_what_a_fresh_one_gives() -> None:
    """An evaluator keeps what every patient shares (parameters, tables) converted from one
    patient to the next: nothing of a patient may reach the next one, whatever the order,
    the as_of, or a patient whose facts lack a name the others have."""
    from service.ruleset.engines import ENGINE_NAMES
    from service.ruleset.loader import load_ruleset
    from tests.conftest import MAPPINGS_DIR, RULES_DIR

    for trial in ("relieve", "ssrs"):
        ruleset = load_ruleset(RULES_DIR / f"{trial}.yaml", MAPPINGS_DIR, ENGINE_NAMES)
        collector = Collector(ruleset.mapper, date(2026, 6, 15), IssueLog())
        read_folder(collector, SAMPLE_DIR)
        patients = [(pid, facts) for pid, _patient, facts in collector.screened_patients()]
        # The patients with the most records first, then the others, each twice, on two dates;
        # one of them without one of its fact names (that fact's records are then unknown).
        patients.sort(key=lambda p: -sum(len(v) for v in p[1].values() if isinstance(v, list)))
        chosen = patients[:12] + patients[-6:]
        lacking_name = next(name for name, v in chosen[0][1].items() if isinstance(v, list))
        chosen.insert(3, ("lacking", {k: v for k, v in chosen[0][1].items() if k != lacking_name}))
        for engine in ENGINE_NAMES:
            kept = Evaluator(ruleset, engine)
            for as_of in (date(2026, 6, 15), date(2027, 1, 1), date(2026, 6, 15)):
                for patient_id, facts in chosen:
                    fresh = Evaluator(ruleset, engine).evaluate_safely(patient_id, facts, as_of)
                    ours = kept.evaluate_safely(patient_id, facts, as_of)
                    assert ours == fresh, (trial, engine, patient_id, as_of)


def test_a_memoised_evaluator_follows_a_change_of_date(relieve: RuleSet) -> None:
    """A service's evaluator sees today change (its memo starts over); any date interleaved
    gives what a plain evaluation gives."""
    collector = Collector(relieve.mapper, date(2026, 6, 15), IssueLog())
    read_folder(collector, SAMPLE_DIR)
    plain, memo = Evaluator(relieve, "cel"), Evaluator(relieve, "cel", memoize=True)
    dates = (date(2026, 6, 15), date(2027, 6, 15), date(2026, 6, 15))
    for index, (patient_id, _patient, facts) in enumerate(collector.screened_patients()):
        as_of = dates[index % 3]
        assert memo.evaluate(patient_id, facts, as_of) == plain.evaluate(patient_id, facts, as_of)
