"""Resources in memory read as lines of a file: those holding none of the codes their mapping
looks for are not mapped, and every verdict stays what mapping them all gives."""

from __future__ import annotations

from datetime import date

import orjson

from service.ruleset.evaluate import Evaluator
from service.ruleset.loader import load_ruleset
from service.screening.inmemory import evaluate_resources
from service.screening.source import IssueLog
from tests.conftest import MAPPINGS_DIR, RULES_DIR, SAMPLE_DIR


def test_skipping_what_no_rule_reads_changes_no_verdict() -> None:
    resources = [
        orjson.loads(line)
        for path in sorted(SAMPLE_DIR.glob("*.ndjson"))
        for line in path.read_bytes().splitlines()
        if line.strip()
    ]
    as_of = date(2026, 6, 15)
    for trial in ("relieve", "ssrs"):
        ruleset = load_ruleset(RULES_DIR / f"{trial}.yaml", MAPPINGS_DIR)
        evaluator = Evaluator(ruleset)
        every = evaluate_resources(evaluator, resources, as_of, issues=IssueLog())
        skipped_log = IssueLog()
        as_lines = evaluate_resources(
            evaluator, resources, as_of, issues=skipped_log, as_lines=True
        )
        assert [v.as_contract(ruleset, as_of) for v in as_lines] == [
            v.as_contract(ruleset, as_of) for v in every
        ]
        assert len(every) == 300


def test_what_no_rule_reads_is_not_mapped() -> None:
    from service.screening.source import Collector

    ruleset = load_ruleset(RULES_DIR / "relieve.yaml", MAPPINGS_DIR)
    resources = [
        orjson.loads(line) for line in (SAMPLE_DIR / "Observation.ndjson").read_bytes().splitlines()
    ]
    collector = Collector(ruleset.mapper, date(2026, 6, 15), IssueLog())
    collector.read_resources(resources, as_lines=True)
    # The sample's Observations are mostly routine ones (vital signs, laboratory values).
    assert collector.stats.skipped_prefilter > len(resources) // 2
