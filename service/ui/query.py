"""The worklist's query string, read as a person typed or edited it: every value is taken as
text, anything unusable is replaced by its default and said in plain words on the page (never a
validation error, never an error page)."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime

from service.state.worklist import FLAGGED, WorklistFilters

SORTS = ("newest", "oldest")
LONGEST_VALUE = 100  # characters of a value worth reading; a longer one is not a filter
LAST_PAGE = 10**6  # a page number beyond any worklist: asked for, it is the last page


@dataclass
class WorklistQuery:
    trial: str = ""
    status: str = "open"
    since: str = ""
    changed: str = ""
    sort: str = "newest"
    page: int = 1
    problems: list[str] = field(default_factory=list)

    @property
    def since_day(self) -> date | None:
        return date.fromisoformat(self.since) if self.since else None

    def filters(self) -> WorklistFilters:
        statuses = (
            list(FLAGGED)
            if self.status == "open"
            else []
            if self.status == "any"
            else [self.status]
        )
        day = self.since_day
        return WorklistFilters(
            trials=[self.trial] if self.trial else [],
            statuses=statuses,
            since=datetime.combine(day, datetime.min.time()) if day else None,
            changed_only=self.changed == "1",
            newest_first=self.sort != "oldest",
        )

    def params(self) -> dict[str, str]:
        """The filters as query parameters (those set), for links."""
        values = {
            "trial": self.trial,
            "status": self.status,
            "since": self.since,
            "changed": self.changed,
            "sort": self.sort,
        }
        return {key: value for key, value in values.items() if value}


def _clean(value: str) -> str:
    return value.strip() if len(value) <= LONGEST_VALUE and "\x00" not in value else "\x00"


def read_worklist_query(
    params: Mapping[str, str], trials: Collection[str], statuses: Collection[str]
) -> WorklistQuery:
    """The worklist filters of a query string; what cannot be used is named in ``problems``."""
    query = WorklistQuery()
    trial = _clean(params.get("trial", ""))
    if trial and trial not in trials:
        query.problems.append("That trial is not served here: showing every trial.")
    elif trial:
        query.trial = trial
    status = _clean(params.get("status", "open")) or "open"
    if status in ("open", "any", *statuses):
        query.status = status
    else:
        query.problems.append(
            "That status is not one the worklist knows: showing candidates and potential "
            "candidates."
        )
    since = _clean(params.get("since", ""))
    if since:
        try:
            date.fromisoformat(since)
            query.since = since
        except ValueError:
            query.problems.append("“Flagged since” must be a date (YYYY-MM-DD); it was ignored.")
    query.changed = "1" if _clean(params.get("changed", "")) == "1" else ""
    sort = _clean(params.get("sort", "newest")) or "newest"
    if sort in SORTS:
        query.sort = sort
    else:
        query.problems.append("That order is not one the worklist knows: newest flagged first.")
    page = _clean(params.get("page", "1")) or "1"
    if page.isascii() and page.isdigit():
        query.page = max(1, min(int(page), LAST_PAGE))
    else:
        query.problems.append("The page number must be a whole number: showing the first page.")
    return query
