"""The worklist's query string, read as a person typed or edited it: every value is taken as
text, anything unusable is replaced by its default and said in plain words on the page (never a
validation error, never an error page)."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime

from service.state.worklist import SORTS, WorklistFilters
from service.ui.vocabulary import OPEN_STATUSES

LONGEST_VALUE = 100  # characters of a value worth reading; a longer one is not a filter
LAST_PAGE = 10**6  # a page number beyond any worklist: asked for, it is the last page
PAGE_SIZES = (10, 25, 50, 100, 200)  # rows a page may hold: bounded, so a page stays quick
DEFAULT_SIZE = 25
SHOWS = ("new", "changed", "either")
WHOSE = ("mine", "unassigned")
# Orders of earlier versions' links: newest or oldest flagged first.
OLD_SORTS = {"newest": ("flagged", "desc"), "oldest": ("flagged", "asc")}


@dataclass
class WorklistQuery:
    trial: str = ""
    status: str = "open"
    since: str = ""
    show: str = ""  # "" every row, new, changed, either (new or changed)
    whose: str = ""  # "" anyone's, mine, unassigned
    due: str = ""  # "1": a follow-up date today or before
    review: str = ""  # "1": only rows a person flagged for review
    sort: str = "flagged"
    dir: str = "desc"
    size: int = DEFAULT_SIZE
    page: int = 1
    problems: list[str] = field(default_factory=list)

    @property
    def since_day(self) -> date | None:
        return date.fromisoformat(self.since) if self.since else None

    def filters(self, person: str, today: date) -> WorklistFilters:
        statuses = (
            list(OPEN_STATUSES)
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
            show=self.show,
            assignee=person if self.whose == "mine" else "" if self.whose == "unassigned" else None,
            due_by=today if self.due == "1" else None,
            review_only=self.review == "1",
            # A patient a person flagged for review stays in the default list.
            with_review=self.status == "open",
            sort=self.sort,
            descending=self.dir == "desc",
        )

    def params(self) -> dict[str, str]:
        """The filters, order and page size as query parameters (those set), for links."""
        values = {
            "trial": self.trial,
            "status": self.status,
            "since": self.since,
            "show": self.show,
            "whose": self.whose,
            "due": self.due,
            "review": self.review,
            "sort": self.sort,
            "dir": self.dir,
            "size": str(self.size) if self.size != DEFAULT_SIZE else "",
        }
        return {key: value for key, value in values.items() if value}

    def sorted_by(self, column: str) -> dict[str, str]:
        """The parameters of a column heading's link: by that column, the other way round if it
        is the order now (first page)."""
        if column == self.sort:
            way = "asc" if self.dir == "desc" else "desc"
        else:
            # Dates and counts most recent or largest first; names and words A to Z.
            way = "desc" if column in ("flagged", "to_check", "follow_up") else "asc"
        return self.params() | {"sort": column, "dir": way}


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
            "That status is not one the worklist knows: showing the patients still open."
        )
    since = _clean(params.get("since", ""))
    if since:
        try:
            date.fromisoformat(since)
            query.since = since
        except ValueError:
            query.problems.append("“Flagged since” must be a date (YYYY-MM-DD); it was ignored.")
    show = _clean(params.get("show", ""))
    if _clean(params.get("changed", "")) == "1" and not show:
        show = "either"  # the earlier "only new or changed" box
    if show in SHOWS:
        query.show = show
    elif show:
        query.problems.append("That choice of rows is not one the worklist knows: every row.")
    whose = _clean(params.get("whose", ""))
    if whose in WHOSE:
        query.whose = whose
    elif whose:
        query.problems.append("“Assigned to” must be mine or nobody: showing anyone's.")
    query.due = "1" if _clean(params.get("due", "")) == "1" else ""
    query.review = "1" if _clean(params.get("review", "")) == "1" else ""
    sort = _clean(params.get("sort", "")) or "flagged"
    way = _clean(params.get("dir", ""))
    if sort in OLD_SORTS:
        sort, default_way = OLD_SORTS[sort]
        way = way or default_way
    if sort in SORTS:
        query.sort = sort
        way = way or ("desc" if sort in ("flagged", "to_check", "follow_up") else "asc")
    else:
        query.problems.append("That order is not one the worklist knows: newest flagged first.")
        way = "desc"
    if way in ("asc", "desc"):
        query.dir = way
    elif way:
        query.problems.append("The direction must be asc or desc: showing descending.")
    size = _clean(params.get("size", ""))
    if size and size.isascii() and size.isdigit() and int(size) in PAGE_SIZES:
        query.size = int(size)
    elif size:
        choices = ", ".join(str(s) for s in PAGE_SIZES)
        query.problems.append(f"A page holds {choices} rows: showing {DEFAULT_SIZE}.")
    page = _clean(params.get("page", "1")) or "1"
    if page.isascii() and page.isdigit():
        query.page = max(1, min(int(page), LAST_PAGE))
    else:
        query.problems.append("The page number must be a whole number: showing the first page.")
    return query
