"""Small-cell suppression: counts below the threshold are hidden, and further counts until
none of those can be worked out from the totals and the neighbours.

The check is an attack: a search over every table consistent with what is published (the
shown counts, the relations, ``<5`` for 0-4, ``suppressed`` for 5 or more) must find at least
two values for each hidden small count. It shares no code with the suppression itself.
"""

from __future__ import annotations

from collections import Counter
from datetime import date

from hypothesis import given, settings
from hypothesis import strategies as st

from service.ruleset.loader import RuleSet, load_ruleset
from service.screening.feasibility import Counts, Month, TrialCounts
from service.screening.feasibility_files import measure_report, report_csv, report_html
from service.screening.feasibility_report import publish, trial_table
from service.screening.funnel import Step
from service.screening.suppression import Suppression, Table, suppress
from tests.conftest import MAPPINGS_DIR, RULES_DIR

K = 5

# --- the attack --------------------------------------------------------------------------------

Bounds = dict[str, list[int]]  # [lowest, highest] a reader allows each count


def _narrow(table: Table, bounds: Bounds) -> bool:
    """Tighten the bounds by the relations until nothing changes; False when they clash."""
    changed = True
    while changed:
        changed = False

        def cap(cell: str, low: int, high: int) -> None:
            nonlocal changed
            old = bounds[cell]
            new = [max(old[0], low), min(old[1], high)]
            if new != old:
                bounds[cell] = new
                changed = True

        for total, parts in table.sums:
            lows = sum(bounds[p][0] for p in parts)
            highs = sum(bounds[p][1] for p in parts)
            cap(total, lows, highs)
            for part in parts:
                others_low = lows - bounds[part][0]
                others_high = highs - bounds[part][1]
                cap(part, bounds[total][0] - others_high, bounds[total][1] - others_low)
        for a, b in table.orders:
            cap(a, bounds[b][0], bounds[a][1])
            cap(b, bounds[b][0], bounds[a][1])
        if any(low > high for low, high in bounds.values()):
            return False
    return True


def _solvable(table: Table, bounds: Bounds) -> bool:
    """Whether integer counts within the bounds satisfy every relation (split and narrow)."""
    if not _narrow(table, bounds):
        return False
    open_cells = [c for c, (low, high) in bounds.items() if low < high]
    if not open_cells:
        return table.holds({c: low for c, (low, _) in bounds.items()})
    cell = min(open_cells, key=lambda c: bounds[c][1] - bounds[c][0])
    low, high = bounds[cell]
    middle = (low + high) // 2
    for part in ((low, middle), (middle + 1, high)):
        trial = {c: list(b) for c, b in bounds.items()}
        trial[cell] = list(part)
        if _solvable(table, trial):
            return True
    return False


def worked_out(table: Table, hidden: dict[str, Suppression]) -> list[str]:
    """The hidden small counts a reader can work out exactly: those for which only one value
    leaves the published table solvable (complementary counts looked for up to a generous
    ceiling: a second value found is a real one)."""
    ceiling = 4 * max(table.counts.values(), default=0) + 4 * K
    start: Bounds = {}
    for cell, count in table.counts.items():
        kind = hidden.get(cell)
        start[cell] = (
            [count, count] if kind is None else [0, K - 1] if kind == "small" else [K, ceiling]
        )
    exposed = []
    for cell, kind in sorted(hidden.items()):
        if kind != "small":
            continue
        possible = 0
        for value in range(K):
            bounds = {c: list(b) for c, b in start.items()}
            bounds[cell] = [value, value]
            possible += _solvable(table, bounds)
            if possible > 1:
                break
        if possible < 2:
            exposed.append(cell)
    return exposed


# --- suppression -------------------------------------------------------------------------------


def test_a_part_and_its_total_give_the_other_part_away_so_another_is_hidden() -> None:
    table = Table({"T": 100, "a": 3, "b": 40, "c": 57}, sums=[("T", ("a", "b", "c"))])
    hidden = suppress(table, K)
    assert hidden == {"a": "small", "b": "complementary"}  # the smallest that helps
    assert worked_out(table, hidden) == []
    assert worked_out(table, {"a": "small"}) == ["a"]  # primary suppression alone: 100-40-57


def test_two_small_parts_with_a_known_sum_of_zero_are_protected_by_a_third() -> None:
    table = Table({"T": 100, "a": 0, "b": 0, "c": 100}, sums=[("T", ("a", "b", "c"))])
    hidden = suppress(table, K)
    assert hidden["a"] == hidden["b"] == "small"
    assert hidden.get("c") == "complementary"  # a part before the total, at an equal count
    assert worked_out(table, hidden) == []


def test_a_complement_can_be_pinned_by_its_own_lower_bound() -> None:
    # N = 6 = m1 + m2 with m1 = 1: hiding m2 (>= 5) leaves m1 in {0, 1}: protected.
    table = Table({"N": 6, "m1": 1, "m2": 5}, sums=[("N", ("m1", "m2"))])
    hidden = suppress(table, K)
    assert worked_out(table, hidden) == []
    # N = 5 = m1 + m2 with m1 = 0: hiding m2 (>= 5) would force m1 = 0; hiding N does not.
    tight = Table({"N": 5, "m1": 0, "m2": 5}, sums=[("N", ("m1", "m2"))])
    assert worked_out(tight, {"m1": "small", "m2": "complementary"}) == ["m1"]
    hidden = suppress(tight, K)
    assert hidden == {"m1": "small", "N": "complementary"}
    assert worked_out(tight, hidden) == []


def test_a_chain_of_equal_steps_is_opened_at_its_top() -> None:
    """Ineligible = screened - after the last step; with the steps pinned from above by a
    shown step equal to screened, the fewest counts to hide are screened and the steps up to
    the first below it, not the long run of equal steps below."""
    table = Table(
        {"T": 23, "s1": 23, "s2": 23, "s3": 19, "s4": 19, "s5": 19, "c": 16, "p": 3, "i": 4},
        sums=[("T", ("c", "p", "i")), ("s5", ("c", "p"))],
        orders=[("T", "s1"), ("s1", "s2"), ("s2", "s3"), ("s3", "s4"), ("s4", "s5"), ("s5", "c")],
    )
    hidden = suppress(table, K)
    assert worked_out(table, hidden) == []
    assert {n for n, kind in hidden.items() if kind == "complementary"} == {"T", "s1", "s2", "c"}


def test_the_funnel_and_the_verdicts_together_give_nothing_away(relieve: RuleSet) -> None:
    # After the last criterion: candidates + potential candidates. Screened = all three.
    counts = trial_counts(relieve, 300, 21, 2, [295, 264, 59, 54, 54, 49, 48, 23], [0, 3, 18])
    table = trial_table(counts, ["2026-04", "2026-05", "2026-06"])
    hidden = suppress(table, K)
    assert hidden["potential-candidate"] == "small"
    assert len(hidden) > sum(1 for v in table.counts.values() if v < K)
    assert worked_out(table, hidden) == []
    assert worked_out(table, {n: k for n, k in hidden.items() if k == "small"}) != []


RELIEVE = load_ruleset(RULES_DIR / "relieve.yaml", MAPPINGS_DIR, ("cel",))


@settings(max_examples=80, deadline=None, derandomize=True)
@given(st.data())
def test_no_hidden_small_count_of_a_trial_can_be_worked_out(data: st.DataObject) -> None:
    relieve = RELIEVE
    screened = data.draw(st.integers(0, 30), label="screened")
    candidate = data.draw(st.integers(0, screened), label="candidate")
    potential = data.draw(st.integers(0, screened - candidate), label="potential")
    drops = ruling_out_steps(relieve)
    still = screened
    steps = []
    for index in range(len(drops)):
        left = still - (candidate + potential)
        drop = left if index == len(drops) - 1 else data.draw(st.integers(0, left))
        still -= drop
        steps.append(still)
    months: list[int] = []
    left = screened  # new candidates are distinct patients, the last month's candidates now
    for index in range(data.draw(st.integers(1, 3), label="months")):
        top = min(left, 8) if index else min(left, 8, candidate)
        months.insert(0, data.draw(st.integers(0, top)))
        left -= months[0]
    counts = trial_counts(relieve, screened, candidate, potential, steps, months)
    table = trial_table(counts, [f"m{i}" for i in range(len(months))])
    assert table.holds(table.counts)
    hidden = suppress(table, K)
    assert all(table.counts[n] < K for n, kind in hidden.items() if kind == "small")
    assert all(table.counts[n] >= K for n, kind in hidden.items() if kind == "complementary")
    assert all(n in hidden for n, v in table.counts.items() if v < K)
    assert worked_out(table, hidden) == []


def test_the_report_holds_no_hidden_count(relieve: RuleSet) -> None:
    counts = trial_counts(relieve, 300, 21, 3, [295, 264, 59, 54, 54, 49, 48, 24], [0, 3, 18])
    periods = [Month("2026-04", date(2026, 4, 30)), Month("2026-05", date(2026, 5, 31))]
    periods.append(Month("2026-06", date(2026, 6, 15)))
    report = publish(Counts(date(2026, 4, 1), date(2026, 6, 15), periods, [counts], "test"), K)
    (trial,) = report.trials
    hidden_cells = [
        cell
        for cell in (
            *trial.verdicts.values(),
            *(s.cell for s in trial.funnel),
            *(m.new_candidates for m in trial.months),
            trial.new_candidates,
        )
        if cell.hidden
    ]
    assert {cell.shown for cell in hidden_cells} == {"<5", "suppressed"}
    assert all(cell.count is None for cell in hidden_cells)
    assert trial.verdicts["potential-candidate"].shown == "<5"
    csv_text = report_csv(report)
    assert "potential-candidate,2026-06-15,,<5,small" in csv_text
    html = report_html(report)
    assert "&lt;5" in html
    fhir = measure_report(report)
    masked = [
        p
        for p in fhir["group"][0]["population"]
        if p.get("_count", {}).get("extension", [{}])[0].get("valueCode") == "masked"
    ]
    assert masked and all("count" not in p for p in masked)
    assert type(report).from_json(report.as_json()) == report


# --- building trial counts ---------------------------------------------------------------------


def ruling_out_steps(ruleset: RuleSet) -> list[str]:
    """The criteria that can rule a patient out, in order."""
    return [
        c.id
        for c in ruleset.criteria
        if ("not_met" if c.kind == "inclusion" else "met") in c.possible_results
    ]


def trial_counts(
    ruleset: RuleSet,
    screened: int,
    candidate: int,
    potential: int,
    still_in: list[int],
    months: list[int],
) -> TrialCounts:
    """Counts of a trial whose ruling-out criteria leave ``still_in`` patients in turn (the
    others leave the count as it was); the last must be candidate + potential."""
    ruling = ruling_out_steps(ruleset)
    assert len(still_in) == len(ruling) and still_in[-1] == candidate + potential
    steps = [Step("screened", "patients screened", screened)]
    count = screened
    for criterion in ruleset.criteria:
        if criterion.id in ruling:
            count = still_in[ruling.index(criterion.id)]
        steps.append(Step(criterion.id, criterion.text, count))
    steps.append(Step("candidates", "candidates", candidate))
    verdicts = Counter(
        {
            "candidate": candidate,
            "potential-candidate": potential,
            "ineligible": screened - candidate - potential,
        }
    )
    return TrialCounts(ruleset, verdicts, steps, months)
