"""Facts that may be missing records, and what that does to a criterion.

A patient's fact may be incomplete for two reasons: the run could not read a resource type that
feeds it (the server refused it, a Bulk export lost its files: a *lost source*), or a resource
that may belong to it could not be read (a filter met an element in the wrong JSON type, a
reference it must follow is not in the source). The collector that groups a patient's records
knows both and passes them with the facts, under the key ``GAPS``: ``{fact: [why, ...]}``.

The evaluator then judges every criterion that reads such a fact (through derived values too)
by what the present records can decide, never by their absence. Pre-screening must not miss an
eligible patient, so when in doubt the answer is ``unknown``:

- an unfavourable result (inclusion ``not_met``, exclusion ``met``) becomes ``unknown``: the
  missing records might have said otherwise;
- a favourable result without evidence (``no ... recorded``) becomes ``unknown``: it rests on
  the absence of records;
- a favourable result with evidence stays: present records decided it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

# The key of a patient's facts holding its gaps. Not a CEL identifier, so never a fact's name.
GAPS = "?gaps"

Gaps = Mapping[str, Sequence[str]]  # fact -> why it may be missing records (sorted phrases)


def lost_phrase(resource_types: Iterable[str]) -> str:
    """Why a fact fed by these lost types may be missing records, for a coordinator."""
    names = sorted(set(resource_types))
    listed = names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"
    return f"{listed} records are not available from the server"


def unreadable_phrase(resource_type: str) -> str:
    return f"a {resource_type} record could not be read (see the input issues)"


def why(reads: Iterable[str], gaps: Gaps) -> list[str]:
    """The reasons a criterion reading these facts may be missing records, sorted."""
    return sorted({phrase for fact in reads for phrase in gaps.get(fact, ())})


def undecided_reason(reasons: Sequence[str], original: str) -> str:
    """The reason of a result turned ``unknown`` by missing records."""
    return f"could not be decided: {'; '.join(reasons)} (from the records available: {original})"


def noted_reason(reasons: Sequence[str], original: str) -> str:
    """The reason of a result that stands, or was unknown anyway, with the missing records."""
    return f"{original} (note: {'; '.join(reasons)})"
