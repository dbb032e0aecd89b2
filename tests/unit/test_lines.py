"""The per-line parser every reader shares: what it counts, hands on and reports."""

from __future__ import annotations

from datetime import date

import pytest

from service.ruleset.loader import RuleSet
from service.screening.lines import LineParser, not_an_object
from service.screening.source import Collector, IssueLog
from tests.conftest import SAMPLE_DIR

CONDITIONS = (SAMPLE_DIR / "Condition.ndjson").read_bytes().splitlines()


@pytest.mark.parametrize(
    ("line", "misshapen"),
    [
        (b"", False),
        (b"  \r", False),
        (b"{}", False),
        (b'  {"a": 1}\r', False),
        (b"{", True),
        (b"}", True),
        (b"[1, 2]", True),
        (b'{"cut": "C79.51', True),
    ],
)
def test_the_shape_rule_of_a_skipped_line(line: bytes, misshapen: bool) -> None:
    assert not_an_object(line) is misshapen


def test_a_line_is_parsed_counted_handed_on_or_reported(relieve: RuleSet) -> None:
    collector = Collector(relieve.mapper, date(2026, 6, 15), IssueLog())
    parser = LineParser([collector])
    prefilter = parser.prefilters["Condition"]
    assert prefilter is not None
    condition = next(line for line in CONDITIONS if prefilter.search(line))
    parser.use("Condition")
    resource = parser.parse(condition, "Condition.ndjson", lambda: 1)
    assert isinstance(resource, dict) and resource["resourceType"] == "Condition"
    assert parser.stats.parsed == 1 and collector.stats.records == 1

    assert parser.parse(b'{"resourceType": "Cond', "Condition.ndjson", lambda: 7) is None
    parser.check_shape(b"[1, 2]\r", "Condition.ndjson", 9)
    parser.check_shape(b"{}", "Condition.ndjson", 10)
    assert parser.stats.parsed == 1
    assert [(i.file, i.line, i.kind, i.message) for i in collector.issues.first] == [
        ("Condition.ndjson", 7, "malformed-json", "line is not valid JSON"),
        ("Condition.ndjson", 9, "malformed-json", "not a JSON object"),
    ]
