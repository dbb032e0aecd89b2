"""A small linear program solver (two-phase simplex, Bland's rule), for cell suppression.

The suppression of a feasibility report asks, for each hidden count, how low and how high it
could be given everything published. The tables are tiny (tens of variables), so a dense
tableau in plain Python answers in milliseconds, and no numerical library is needed at run time.
Its answers are only proposals: ``suppression`` checks every solution it uses exactly, in
integers, before relying on it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

EPSILON = 1e-9
Row = Sequence[float]


@dataclass(frozen=True)
class Problem:
    """Minimise ``objective · x`` subject to ``equal`` rows (a·x = b), ``at_most`` rows
    (a·x ≤ b) and ``low ≤ x ≤ high`` (finite bounds: the problem is never unbounded)."""

    objective: Row
    equal: Sequence[tuple[Row, float]]
    at_most: Sequence[tuple[Row, float]]
    low: Row
    high: Row


def minimise(problem: Problem) -> list[float] | None:
    """An optimal solution, or None when no solution exists."""
    n = len(problem.objective)
    low = list(problem.low)
    rows: list[tuple[list[float], float, int]] = []  # (coefficients of y, rhs, slack sign)
    for coefficients, bound in problem.equal:
        rows.append((list(coefficients), bound - _dot(coefficients, low), 0))
    for coefficients, bound in problem.at_most:
        rows.append((list(coefficients), bound - _dot(coefficients, low), 1))
    for index in range(n):
        unit = [0.0] * n
        unit[index] = 1.0
        rows.append((unit, problem.high[index] - low[index], 1))
    if any(high < lo - EPSILON for lo, high in zip(low, problem.high, strict=True)):
        return None
    slack_rows = [i for i, (_, _, sign) in enumerate(rows) if sign]
    slack_of = {row: n + k for k, row in enumerate(slack_rows)}
    width = n + len(slack_rows)
    tableau: list[list[float]] = []
    basis: list[int] = []
    artificial_rows: list[int] = []
    for i, (coefficients, rhs, sign) in enumerate(rows):
        line = [*coefficients, *([0.0] * len(slack_rows))]
        if sign:
            line[slack_of[i]] = 1.0
        if rhs < 0:
            line = [-v for v in line]
            rhs = -rhs
        tableau.append([*line, rhs])
        if sign and line[slack_of[i]] > 0:
            basis.append(slack_of[i])
        else:
            basis.append(-1)
            artificial_rows.append(i)
    # Artificial variables, one per row without a usable slack, after the others.
    total = width + len(artificial_rows)
    for line in tableau:
        rhs = line.pop()
        line.extend([0.0] * len(artificial_rows))
        line.append(rhs)
    for k, i in enumerate(artificial_rows):
        tableau[i][width + k] = 1.0
        basis[i] = width + k
    if artificial_rows:
        phase_one = [0.0] * width + [1.0] * len(artificial_rows)
        _simplex(tableau, basis, phase_one, total)
        if _value(tableau, basis, phase_one) > 1e-7:
            return None
        _drive_out(tableau, basis, width)
    cost = [*problem.objective, *([0.0] * (total - n))]
    _simplex(tableau, basis, cost, width)
    y = [0.0] * total
    for i, variable in enumerate(basis):
        y[variable] = tableau[i][-1]
    return [low[i] + y[i] for i in range(n)]


def _dot(a: Row, b: Row) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True))


def _value(tableau: list[list[float]], basis: list[int], cost: Row) -> float:
    return sum(cost[variable] * tableau[i][-1] for i, variable in enumerate(basis))


def _simplex(tableau: list[list[float]], basis: list[int], cost: Row, usable: int) -> None:
    """Pivot until optimal, entering only the first ``usable`` columns (phase two leaves the
    artificial ones out). Bland's rule: the lowest index enters and leaves, so it never
    cycles."""
    while True:
        entering = -1
        for column in range(usable):
            if column in basis:
                continue
            reduced = cost[column] - sum(
                cost[variable] * tableau[i][column] for i, variable in enumerate(basis)
            )
            if reduced < -EPSILON:
                entering = column
                break
        if entering < 0:
            return
        leaving = -1
        best = 0.0
        for i, line in enumerate(tableau):
            if line[entering] > EPSILON:
                ratio = line[-1] / line[entering]
                if (
                    leaving < 0
                    or ratio < best - EPSILON
                    or (abs(ratio - best) <= EPSILON and basis[i] < basis[leaving])
                ):
                    leaving, best = i, ratio
        if leaving < 0:
            return  # unbounded: cannot happen with finite bounds
        _pivot(tableau, basis, leaving, entering)


def _pivot(tableau: list[list[float]], basis: list[int], row: int, column: int) -> None:
    pivot = tableau[row][column]
    tableau[row] = [v / pivot for v in tableau[row]]
    source = tableau[row]
    for i, line in enumerate(tableau):
        if i != row and abs(line[column]) > EPSILON:
            factor = line[column]
            tableau[i] = [v - factor * s for v, s in zip(line, source, strict=True)]
    basis[row] = column


def _drive_out(tableau: list[list[float]], basis: list[int], width: int) -> None:
    """Artificial variables left in the basis at zero after phase one: pivot each out on any
    other column of its row (a row with none is redundant and stays, at zero)."""
    for i, variable in enumerate(basis):
        if variable < width:
            continue
        for column in range(width):
            if column not in basis and abs(tableau[i][column]) > EPSILON:
                _pivot(tableau, basis, i, column)
                break
