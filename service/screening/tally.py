"""What a screening summary counts of one verdict, as plain criterion ids.

Kept apart from the summary so a worker process can count where it evaluates and hand the
parent a few ids instead of the verdict's objects (see workers.py).
"""

from __future__ import annotations

from service.ruleset.evaluate import PatientVerdict

# (criteria that could not be evaluated, criteria left unknown that keep a potential candidate
# from being a candidate, criteria that exclude the patient), each in the rule set's order.
Counted = tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]


def counted(verdict: PatientVerdict) -> Counted:
    errors: list[str] = []
    unknown: list[str] = []
    blocking: list[str] = []
    for c in verdict.criteria:
        if c.error:
            errors.append(c.id)
        elif c.result == "unknown" and not c.manual and verdict.verdict == "potential-candidate":
            # What keeps potential candidates from being candidates: data to go and find.
            unknown.append(c.id)
        if (c.kind == "inclusion" and c.result == "not_met") or (
            c.kind == "exclusion" and c.result == "met"
        ):
            blocking.append(c.id)
    return tuple(errors), tuple(unknown), tuple(blocking)
