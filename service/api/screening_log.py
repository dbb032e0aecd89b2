"""The screening log: the worklist's rows as CSV for a spreadsheet (and CONSORT counts), the same
from the web worklist and the API.

One line per patient and trial: the identifiers, the verdict, the status and, when the status is
a decision recorded here, its reason, date and author; then who follows the row up and when, and
a person's flag for review of a patient the rules exclude (its reason, author and time: the
verdict beside it is still the rules'). ``outcome`` says where the patient stands
in words a screening log uses; declined and could-not-be-reached are reasons of "ineligible" and
stay so, but their outcome is their own, apart from screen failures. The file is UTF-8 with a
byte order mark (spreadsheets then read accents right), lines end in CRLF, dates and times are
ISO 8601 (UTC). A cell that a spreadsheet would take for a formula is prefixed with an apostrophe.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Mapping

from service.api.decisions import DECLINED, NOT_REACHED
from service.state.worklist import LogRow

COLUMNS = (
    "trial",
    "study",
    "patient",
    "mrn",
    "name",
    "birth_date",
    "sex",
    "verdict",
    "status",
    "outcome",
    "reason",
    "decided_at",
    "decided_by",
    "flagged_at",
    "screened_as_of",
    "assigned_to",
    "follow_up_on",
    "review_reason",
    "review_by",
    "review_at",
)
OUTCOMES = {
    "candidate": "to review",
    "potential-candidate": "to review",
    "eligible": "eligible",
    "screening": "contacted",
    "pending-on-study": "pre-registered",
    "on-study": "enrolled",
    "not-registered": "not registered",
    "withdrawn": "withdrawn",
}
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def outcome(status: str, reason: str) -> str:
    """Where a patient stands: "declined" and "not reached" apart from "screen failure"."""
    if status == "ineligible":
        if reason == DECLINED:
            return "declined"
        if reason == NOT_REACHED:
            return "not reached"
        return "screen failure"
    return OUTCOMES.get(status, status)


def _cell(value: str) -> str:
    return f"'{value}" if value.startswith(_FORMULA_STARTS) else value


def write_log(rows: Iterable[LogRow], studies: Mapping[str, str]) -> bytes:
    """The CSV file; ``studies`` gives each trial's registry id (NCT number)."""
    out = io.StringIO()
    out.write("\ufeff")
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(COLUMNS)
    for row in rows:
        writer.writerow(
            (
                row.trial,
                studies.get(row.trial, ""),
                f"Patient/{row.patient_id}",
                _cell(row.mrn),
                _cell(row.name),
                row.birth_date,
                row.sex,
                row.verdict,
                row.status,
                outcome(row.status, row.reason),
                _cell(row.reason),
                row.decided_at.isoformat(timespec="seconds") + "Z" if row.decided_at else "",
                _cell(row.decided_by),
                row.flagged_at.isoformat(timespec="seconds") + "Z",
                row.as_of,
                _cell(row.assignee),
                row.follow_up_on.isoformat() if row.follow_up_on else "",
                _cell(row.review_reason),
                _cell(row.review_by),
                row.review_at.isoformat(timespec="seconds") + "Z" if row.review_at else "",
            )
        )
    return out.getvalue().encode("utf-8")


def file_name(day: str) -> str:
    return f"screening-log-{day}.csv"
