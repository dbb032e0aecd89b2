"""A trial's verdicts.ndjson lines and what its summary counts of each verdict.

Most patients of a hospital share a handful of verdicts: a memoised pattern whose criteria cite
no resource of the patient (``PatientVerdict.shared``). Such a verdict's line differs from one
patient to the next only in the patient reference, so the rest of it, and its counts, are made
once. The lines are byte for byte those of ``orjson.dumps(verdict.as_contract(...))``.
"""

from __future__ import annotations

from datetime import date

import orjson

from service.ruleset.evaluate import CriterionResult, PatientVerdict
from service.ruleset.loader import RuleSet
from service.screening.tally import Counted, counted

# The contract's first key (see PatientVerdict.as_contract): what a shared line starts with.
_HEAD = b'{"patient":'
# Shared verdicts kept: the memo of one evaluator holds no more patterns than this.
MAX_SHARED = 4_096


class VerdictLines:
    def __init__(self, ruleset: RuleSet, as_of: date) -> None:
        self.ruleset = ruleset
        self.as_of = as_of
        # id of a shared criteria tuple -> (that tuple, the line after the patient, counts);
        # the tuple is held, so its id cannot be reused while it is here.
        self._shared: dict[int, tuple[tuple[CriterionResult, ...], bytes, Counted]] = {}

    def line(self, verdict: PatientVerdict) -> tuple[bytes, Counted]:
        """The verdict's line (JSON, no newline) and ``tally.counted`` of it."""
        if verdict.shared:
            known = self._shared.get(id(verdict.criteria))
            if known is not None and known[0] is verdict.criteria:
                patient = orjson.dumps(f"Patient/{verdict.patient_id}")
                return _HEAD + patient + known[1], known[2]
        contract = verdict.as_contract(self.ruleset, self.as_of)
        line, ids = orjson.dumps(contract), counted(verdict)
        if verdict.shared and len(self._shared) < MAX_SHARED:
            head = _HEAD + orjson.dumps(contract["patient"])
            if line.startswith(head):
                self._shared[id(verdict.criteria)] = (verdict.criteria, line[len(head) :], ids)
        return line, ids
