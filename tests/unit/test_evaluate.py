from service.ruleset.evaluate import CriterionResult, decide, format_value, render_reason


def result(kind: str, value: str, manual: bool = False) -> CriterionResult:
    return CriterionResult("x", kind, value, (), "", manual=manual)  # type: ignore[arg-type]


def test_verdict_logic() -> None:
    assert decide((result("inclusion", "met"), result("exclusion", "not_met"))) == "candidate"
    assert decide((result("inclusion", "unknown", manual=True),)) == "candidate"
    assert decide((result("inclusion", "unknown"),)) == "potential-candidate"
    assert decide((result("inclusion", "unknown"), result("exclusion", "met"))) == "ineligible"
    assert decide((result("inclusion", "not_met"),)) == "ineligible"


def test_reasons_read_like_text() -> None:
    assert (
        format_value(7.0) == "7" and format_value(1.8399) == "1.84" and format_value([]) == "none"
    )
    assert (
        format_value([["axial-triggered", 7.0], ["unspecified", 5.5]])
        == "axial-triggered 7, unspecified 5.5"
    )
    assert render_reason("aged {age} (min {min})", {"age": 66.0, "min": 18.0}) == "aged 66 (min 18)"
