"""Small-cell suppression of a table of counts, with complementary suppression.

A count below the threshold (default 5) is shown as ``<5``: the *primary* suppression. That
alone is not enough when the table also publishes how its counts add up: with a total and all
but one of its parts shown, the hidden part is a subtraction away. So the published relations
are part of the table (``Table.sums``: a total and its parts; ``Table.orders``: a count never
above another, as the steps of a funnel), and further counts are hidden (*complementary*
suppression, shown as ``suppressed``) until no hidden small count can be worked out exactly.

"Worked out" is judged as a reader holding the whole published table would: every shown count
exact, every relation, a ``<5`` between 0 and 4, a ``suppressed`` count at least 5 (it is
hidden only to protect another, so it is no small count), every count at least 0. A small count
is protected when a table that agrees with all of that gives it another value. Such a table is
searched for exactly, in integers: the bounds of every hidden count are narrowed by the
relations, and split in halves until each count has one value or the bounds clash.

The complementary counts are chosen as few as possible: the smallest set (of up to three) of
shown counts near the exposed one whose hiding protects it, the smaller counts first; failing
that, the nearest count, and the search goes on.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Literal

Suppression = Literal["small", "complementary"]
DEFAULT_THRESHOLD = 5
MAX_SET = 3  # complementary counts tried together for one exposed count
POOL = 10  # of the shown counts nearest to it


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

    def neighbours(self, cell: str) -> set[str]:
        """The counts that share a relation with ``cell``."""
        found = {
            c for total, parts in self.sums if cell in (total, *parts) for c in (total, *parts)
        }
        found |= {b for a, b in self.orders if a == cell} | {a for a, b in self.orders if b == cell}
        return found - {cell}


def suppress(table: Table, threshold: int = DEFAULT_THRESHOLD) -> dict[str, Suppression]:
    """The counts to hide and why: those below ``threshold`` (``small``), then others
    (``complementary``) until every small count is protected."""
    if threshold < 1:
        return {}
    if not table.holds(table.counts) or min(table.counts.values(), default=0) < 0:
        raise ValueError("the counts do not satisfy the table's own relations")
    hidden: dict[str, Suppression] = {
        name: "small" for name, count in table.counts.items() if count < threshold
    }
    while True:
        exposed = next(
            (
                name
                for name, kind in sorted(hidden.items())
                if kind == "small" and not protected(table, hidden, name, threshold)
            ),
            None,
        )
        if exposed is None:
            return hidden
        chosen = _complements(table, hidden, exposed, threshold)
        if not chosen:
            return hidden  # every count is hidden already
        hidden.update(dict.fromkeys(chosen, "complementary"))


def protected(table: Table, hidden: dict[str, Suppression], name: str, threshold: int) -> bool:
    """Whether a table consistent with everything published gives ``name`` another value."""
    true_value = table.counts[name]
    start = _bounds(table, hidden, threshold)
    # The values nearest the true one first: the likeliest to be found quickly.
    for value in sorted(range(threshold), key=lambda v: abs(v - true_value)):
        if value == true_value:
            continue
        bounds = dict(start)
        bounds[name] = (value, value)
        if _solvable(table, bounds):
            return True
    return False


Bounds = dict[str, tuple[int, int]]


def _bounds(table: Table, hidden: dict[str, Suppression], threshold: int) -> Bounds:
    """What a reader knows of each count before using the relations."""
    # No count exceeds what all of them add up to: a finite ceiling for the hidden ones that
    # tells the reader nothing (a table found below it is a real one).
    ceiling = 2 * sum(table.counts.values()) + 2 * threshold
    bounds: Bounds = {}
    for cell, count in table.counts.items():
        kind = hidden.get(cell)
        if kind is None:
            bounds[cell] = (count, count)
        elif kind == "small":
            bounds[cell] = (0, threshold - 1)
        else:
            bounds[cell] = (threshold, ceiling)
    return bounds


def _narrow(table: Table, bounds: Bounds) -> bool:
    """Tighten the bounds by the relations until they hold still; False when they clash."""
    changed = True
    while changed:
        changed = False
        for total, parts in table.sums:
            lows = sum(bounds[p][0] for p in parts)
            highs = sum(bounds[p][1] for p in parts)
            changed |= _cap(bounds, total, lows, highs)
            low_total, high_total = bounds[total]
            for part in parts:
                low, high = bounds[part]
                changed |= _cap(bounds, part, low_total - (highs - high), high_total - (lows - low))
        for a, b in table.orders:
            changed |= _cap(bounds, a, bounds[b][0], bounds[a][1])
            changed |= _cap(bounds, b, bounds[b][0], bounds[a][1])
        if any(low > high for low, high in bounds.values()):
            return False
    return True


def _cap(bounds: Bounds, cell: str, low: int, high: int) -> bool:
    old_low, old_high = bounds[cell]
    new = (max(old_low, low), min(old_high, high))
    if new == bounds[cell]:
        return False
    bounds[cell] = new
    return True


def _solvable(table: Table, bounds: Bounds) -> bool:
    """Whether integer counts within the bounds satisfy every relation."""
    if not _narrow(table, bounds):
        return False
    open_cells = [cell for cell, (low, high) in bounds.items() if low < high]
    if not open_cells:
        return table.holds({cell: low for cell, (low, _) in bounds.items()})
    cell = min(open_cells, key=lambda c: bounds[c][1] - bounds[c][0])
    low, high = bounds[cell]
    middle = (low + high) // 2
    for half in ((low, middle), (middle + 1, high)):
        trial = dict(bounds)
        trial[cell] = half
        if _solvable(table, trial):
            return True
    return False


def _complements(
    table: Table, hidden: dict[str, Suppression], name: str, threshold: int
) -> list[str]:
    """Shown counts to hide for ``name``: the smallest protecting set among the counts
    nearest to it (by the relations between counts), else the nearest one alone."""
    pool = _nearest_shown(table, hidden, name)[:POOL]
    for size in range(1, MAX_SET + 1):
        for chosen in itertools.combinations(pool, size):
            trial = {**hidden, **dict.fromkeys(chosen, "complementary")}
            if protected(table, trial, name, threshold):  # type: ignore[arg-type]
                return list(chosen)
    return pool[:1]


def _nearest_shown(table: Table, hidden: dict[str, Suppression], name: str) -> list[str]:
    """Shown counts in order of distance from ``name`` through the relations; at one
    distance the smaller counts first, and of equal counts a part before a total (a total,
    such as the patients screened, says most)."""
    totals = {total for total, _ in table.sums}
    distance = {name: 0}
    frontier = [name]
    while frontier:
        following = []
        for cell in frontier:
            for other in sorted(table.neighbours(cell)):
                if other not in distance:
                    distance[other] = distance[cell] + 1
                    following.append(other)
        frontier = following
    far = len(table.counts) + 1
    shown = [cell for cell in table.counts if cell not in hidden]
    return sorted(shown, key=lambda c: (distance.get(c, far), table.counts[c], c in totals, c))
