"""Small-cell suppression of a table of counts, with complementary suppression.

A count below the threshold (default 5) is shown as ``<5``: the *primary* suppression. That
alone is not enough when the table also publishes how its counts add up: with a total and all
but one of its parts shown, the hidden part is a subtraction away. So the published relations
are part of the table (``Table.sums``: a total and its parts; ``Table.orders``: a count that is
never above another, as the steps of a funnel), and further counts are hidden (*complementary*
suppression, shown as ``suppressed``) until no hidden small count can be worked out exactly.

"Worked out" is judged as a reader holding the whole published table would: every shown count
exact, every relation, a ``<5`` between 0 and 4, a ``suppressed`` count at least 5 (it is
hidden only to protect another, so it is no small count), every count at least 0. A small count
is protected when two tables that agree with all of that give it different values; the second
one is found by a linear program (``lp``) and then checked exactly, in integers, so a rounding in
the solver can only hide more, never less.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from service.screening.lp import Problem, minimise

Suppression = Literal["small", "complementary"]
DEFAULT_THRESHOLD = 5


@dataclass
class Table:
    """Counts by name and the relations a reader knows between them."""

    counts: dict[str, int]
    sums: list[tuple[str, tuple[str, ...]]] = field(default_factory=list)  # total = Σ parts
    orders: list[tuple[str, str]] = field(default_factory=list)  # (a, b): a ≥ b

    def holds(self, values: dict[str, int]) -> bool:
        """Whether ``values`` satisfy every relation."""
        return all(
            values[total] == sum(values[part] for part in parts) for total, parts in self.sums
        ) and all(values[a] >= values[b] for a, b in self.orders)


def suppress(table: Table, threshold: int = DEFAULT_THRESHOLD) -> dict[str, Suppression]:
    """The counts to hide and why: those below ``threshold`` (``small``), then as few others
    as it takes, smallest first (``complementary``), until every small count is protected."""
    if threshold < 1:
        return {}
    if not table.holds(table.counts):
        raise ValueError("the counts do not satisfy the table's own relations")
    hidden: dict[str, Suppression] = {
        name: "small" for name, count in table.counts.items() if count < threshold
    }
    while True:
        exposed = [
            name
            for name, kind in sorted(hidden.items())
            if kind == "small" and not protected(table, hidden, name, threshold)
        ]
        if not exposed:
            return hidden
        complement = _complement(table, hidden, exposed[0])
        if complement is None:
            return hidden  # every count that could help is hidden already
        hidden[complement] = "complementary"


def protected(table: Table, hidden: dict[str, Suppression], name: str, threshold: int) -> bool:
    """Whether another table, consistent with everything published, gives ``name`` another
    value: the lowest and the highest value a reader could find for it are looked for, and
    each is checked exactly."""
    true_value = table.counts[name]
    for sign in (1.0, -1.0):
        found = _extreme(table, hidden, name, threshold, sign)
        if (
            found is not None
            and found[name] != true_value
            and _consistent(table, hidden, found, threshold)
        ):
            return True
    return False


def _extreme(
    table: Table, hidden: dict[str, Suppression], name: str, threshold: int, sign: float
) -> dict[str, int] | None:
    """The hidden counts, with ``name`` as low (sign 1) or as high (sign -1) as the published
    table allows, rounded to integers; None when the solver finds none."""
    unknowns = sorted(hidden)
    position = {n: i for i, n in enumerate(unknowns)}
    size = len(unknowns)
    # No count exceeds what all of them add up to; a generous finite bound keeps the
    # program bounded without telling the reader anything.
    ceiling = float(10 * sum(table.counts.values()) + 10 * threshold)

    def row(terms: Sequence[tuple[str, float]]) -> tuple[list[float], float]:
        coefficients = [0.0] * size
        constant = 0.0
        for cell, factor in terms:
            if cell in position:
                coefficients[position[cell]] += factor
            else:
                constant += factor * table.counts[cell]
        return coefficients, -constant

    equal = []
    for total, parts in table.sums:
        terms = [(total, 1.0), *((part, -1.0) for part in parts)]
        if any(cell in position for cell, _ in terms):
            equal.append(row(terms))
    at_most = []
    for a, b in table.orders:
        if a in position or b in position:
            at_most.append(row([(b, 1.0), (a, -1.0)]))  # b - a ≤ 0
    low = [0.0 if hidden[n] == "small" else float(threshold) for n in unknowns]
    high = [float(threshold - 1) if hidden[n] == "small" else ceiling for n in unknowns]
    objective = [0.0] * size
    objective[position[name]] = sign
    solution = minimise(Problem(objective, equal, at_most, low, high))
    if solution is None:
        return None
    values = dict(table.counts)
    values.update({n: round(solution[position[n]]) for n in unknowns})
    return values


def _consistent(
    table: Table, hidden: dict[str, Suppression], values: dict[str, int], threshold: int
) -> bool:
    """Exactly: the published counts unchanged, every hidden one within what its mark says,
    every relation holding."""
    for cell, count in table.counts.items():
        kind = hidden.get(cell)
        if kind is None and values[cell] != count:
            return False
        if kind == "small" and not 0 <= values[cell] < threshold:
            return False
        if kind == "complementary" and values[cell] < threshold:
            return False
    return table.holds(values)


def _complement(table: Table, hidden: dict[str, Suppression], name: str) -> str | None:
    """The shown count to hide next for ``name``: the smallest one in a sum with it, else in
    a sum with any hidden count of a sum it is in, else in any sum of the table."""

    def cells_of(sums: Sequence[tuple[str, tuple[str, ...]]]) -> set[str]:
        return {cell for total, parts in sums for cell in (total, *parts)}

    own = [s for s in table.sums if name in cells_of([s])]
    near_cells = {c for c in cells_of(own) if c in hidden}
    near = [s for s in table.sums if cells_of([s]) & near_cells]
    for group in (own, near, table.sums):
        shown = [c for c in cells_of(group) if c not in hidden]
        if shown:
            return min(shown, key=lambda c: (table.counts[c], c))
    return None
