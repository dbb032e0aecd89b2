"""The coordinator's day with hundreds of rows: triage (sorting, page size, new apart from
changed with who), follow-up (assignment and "mine", a due date, notes, reasons per closing
status, a confirmation to leave Enrolled, a flag for review of an excluded patient) and a bulk
change with a conflicting row. Debian's Chromium, the real identity provider, service and
sekmet-fhir (this module's own, so its decisions do not meet those of test_browser)."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from playwright.sync_api import Page, expect

from tests.integration.conftest import search_all
from tests.ui.conftest import SAMPLE_AS_OF, SCREENED, Site
from tests.ui.test_browser import WIDTHS, _check_widths, patient_url, sign_in, subject_status

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def both_trials(site: Site) -> Site:
    """The same patients screened for SSRS too: twice the rows, enough for a second page."""
    with site.api() as api:
        patients = [site.patient(test) for test in SCREENED]
        screened = api.post(
            "/screenings", json={"trial": "ssrs", "patients": patients, "as_of": SAMPLE_AS_OF}
        )
        screened.raise_for_status()
    return site


def _axe(page: Page, name: str) -> None:
    """axe-core at laptop, tablet and phone widths, then back to the laptop."""
    _check_widths(page, name)
    page.set_viewport_size(WIDTHS[0])


def _names(page: Page) -> list[str]:
    return page.locator("table.worklist tbody th a").all_inner_texts()


def _row(page: Page, site: Site, test_id: str) -> Any:
    return page.locator("table.worklist tbody tr").filter(
        has=page.get_by_role("link", name=site.name(test_id), exact=True)
    )


def test_sorting_page_size_and_new_apart_from_changed_with_who(
    browser: Any, both_trials: Site
) -> None:
    site = both_trials
    carol = sign_in(browser, site, "carol", start="/ui/worklist?trial=relieve&status=any")
    # Sorted by a column heading, then the other way round; ties keep one order.
    carol.get_by_role("link", name=re.compile(r"^Patient")).click()
    expect(carol).to_have_url(re.compile(r"sort=patient&dir=asc"))
    heading = carol.locator("th[aria-sort]")
    expect(heading).to_have_attribute("aria-sort", "ascending")
    expect(heading).to_contain_text("Patient")
    ascending = _names(carol)
    assert len(ascending) == len(SCREENED)
    assert ascending[0] == site.name("candidate")  # Ångström: accents folded, not byte order
    carol.get_by_role("link", name=re.compile(r"^Patient")).click()
    expect(carol.locator("th[aria-sort]")).to_have_attribute("aria-sort", "descending")
    assert _names(carol) == ascending[::-1]
    carol.goto(f"{site.url}/ui/worklist?trial=relieve&status=any&sort=to_check&dir=desc")
    counts = [
        int(t.split()[0]) for t in carol.locator("table.worklist tbody td.num").all_inner_texts()
    ]
    assert counts == sorted(counts, reverse=True) and counts[0] > 0
    # "Left to check" says which part waits for clinician review, as the patient page does.
    first = carol.locator("table.worklist tbody td.num").first.inner_text()
    carol.locator("table.worklist tbody th a").first.click()
    expect(carol.locator("#trial-relieve .left-to-check h3")).to_contain_text(
        first.replace(" ", " ").split(" (")[0]
    )
    if "clinician review" in first:
        expect(carol.locator("#trial-relieve .left-to-check")).to_contain_text("clinician review")

    # Page size: a choice list, kept in the address; 10 a page gives two pages of 16 rows.
    carol.goto(f"{site.url}/ui/worklist?status=any")
    carol.get_by_label("Rows a page").select_option("10")
    expect(carol).to_have_url(re.compile(r"size=10"))
    expect(carol.get_by_role("navigation", name="Pages")).to_contain_text("Page 1 of 2")
    expect(carol.locator("table.worklist tbody tr")).to_have_count(10)
    carol.get_by_role("link", name="Next page").click()
    expect(carol.locator("table.worklist tbody tr")).to_have_count(2 * len(SCREENED) - 10)
    carol.goto(f"{site.url}/ui/worklist?status=any&size=100000")
    expect(carol.get_by_role("alert")).to_contain_text("A page holds 10, 25, 50, 100, 200 rows")
    _axe(carol, "worklist sorted, with a page size")

    # New is opened by nobody; changed says who did what since carol looked.
    noted, decided = "decompression-in-progress", "two-lesions-in-one-region"
    carol.goto(patient_url(site, site.patient(decided)))
    dora = sign_in(browser, site, "dora")
    dora.goto(patient_url(site, site.patient(noted)))
    dora.locator("#follow-relieve").get_by_label("Note (the status stays as it is)").fill(
        "asked the GP for the last MRI"
    )
    dora.locator("#follow-relieve").get_by_role("button", name="Add note").click()
    expect(dora.locator("#follow-notice-relieve")).to_contain_text("Note added")
    dora.goto(patient_url(site, site.patient(decided)))
    block = dora.locator("#decision-relieve")
    block.get_by_role("radio", name="Contacted, screening").check()
    block.get_by_role("button", name="Record decision").click()
    expect(dora.locator("#notice-relieve")).to_contain_text("Recorded for RELIEVE")
    dora.context.close()
    carol.goto(f"{site.url}/ui/worklist?trial=relieve&status=any&show=changed")
    expect(carol.locator("table.worklist tbody tr")).to_have_count(2)
    expect(_row(carol, site, noted)).to_contain_text("dora: added a note")
    expect(_row(carol, site, decided)).to_contain_text(
        "dora: status Candidate → Contacted, screening"
    )
    carol.goto(f"{site.url}/ui/worklist?trial=relieve&status=any&show=new")
    new = _names(carol)
    assert site.name(noted) not in new and site.name(decided) not in new  # opened by someone
    assert site.name("candidate") in new
    _axe(carol, "worklist, changed since you looked")
    carol.context.close()


def test_follow_up_mine_due_note_reasons_enrolled_and_a_flag_for_review(
    browser: Any, both_trials: Site
) -> None:
    site = both_trials
    dora = sign_in(browser, site, "dora")
    assigned = site.patient("candidate")
    dora.goto(patient_url(site, assigned))
    follow = dora.locator("#follow-relieve")
    follow.get_by_label("Assigned to").select_option("carol")
    yesterday = (datetime.now(UTC).date() - timedelta(days=1)).isoformat()
    follow.get_by_label("Follow up on").fill(yesterday)
    follow.get_by_role("button", name="Save assignment and date").click()
    notice = dora.locator("#follow-notice-relieve")
    expect(notice).to_contain_text(f"assigned to carol; follow up on {yesterday}")
    expect(notice).to_be_focused()
    # A note alone: the status stays.
    follow = dora.locator("#follow-relieve")
    follow.get_by_label("Note (the status stays as it is)").fill("left a voicemail")
    follow.get_by_role("button", name="Add note").click()
    expect(dora.locator("#history-relieve")).to_contain_text("dora noted “left a voicemail”")
    expect(dora.locator("#status-relieve")).to_contain_text("worklist status: Candidate")
    assert subject_status(site, assigned) == "candidate"
    _axe(dora, "patient page after a follow-up")

    carol = sign_in(browser, site, "carol", start="/ui/worklist?whose=mine")
    expect(carol.locator("table.worklist tbody tr")).to_have_count(1)
    expect(_row(carol, site, "candidate")).to_contain_text("carol")
    carol.goto(f"{site.url}/ui/worklist?status=any&due=1")
    expect(carol.locator("table.worklist tbody tr")).to_have_count(1)
    expect(_row(carol, site, "candidate")).to_contain_text("due")
    carol.context.close()

    # Enrolled, then withdrawn: a reason from Withdrawn's own list, and a confirmation first.
    enrolled = site.patient("potential-candidate-without-survival")
    dora.goto(patient_url(site, enrolled))
    block = dora.locator("#decision-relieve")
    block.get_by_role("radio", name="Enrolled").check()
    block.get_by_role("button", name="Record decision").click()
    expect(dora.locator("#notice-relieve")).to_contain_text("Recorded for RELIEVE: Enrolled.")
    block = dora.locator("#decision-relieve")
    block.get_by_role("radio", name="Withdrawn").check()
    block.get_by_role("button", name="Record decision").click()
    expect(dora.locator("#notice-relieve")).to_contain_text("choose why (Withdrawn)")
    block = dora.locator("#decision-relieve")
    block.get_by_label("Reason for Withdrawn (required for it)").select_option("Withdrew consent")
    block.get_by_role("button", name="Record decision").click()
    expect(dora.locator("#notice-relieve")).to_contain_text("this patient is Enrolled in RELIEVE")
    expect(dora.locator("#notice-relieve")).to_be_focused()
    assert subject_status(site, enrolled) == "on-study"
    _axe(dora, "confirmation to leave Enrolled")
    block = dora.locator("#decision-relieve")
    expect(block.get_by_role("radio", name="Withdrawn")).to_be_checked()
    block.get_by_label("Yes, change Enrolled to Withdrawn").check()
    block.get_by_role("button", name="Record decision").click()
    expect(dora.locator("#notice-relieve")).to_contain_text("Recorded for RELIEVE: Withdrawn.")
    expect(dora.locator("#history-relieve")).to_contain_text("decided Withdrawn: Withdrew consent")
    assert subject_status(site, enrolled) == "withdrawn"

    # A person flags a patient the rules exclude: recorded beside the verdict, in the log.
    excluded = site.patient("deceased-flag")
    key = f"urn:prescreen:key|NCT06746103/Patient/{excluded}"
    subjects_before = search_all(site.fhir_url, "ResearchSubject", {"_tag": key})
    dora.goto(patient_url(site, excluded))
    follow = dora.locator("#follow-relieve")
    follow.get_by_label("Why review").select_option("A code or value was read wrongly")
    follow.get_by_label("What you know (optional)").fill("alive at clinic last week")
    follow.get_by_role("button", name="Flag for review").click()
    expect(dora.locator("#follow-notice-relieve")).to_contain_text("verdict stays as it is")
    flag = dora.locator("#review-relieve")
    expect(flag).to_contain_text("Rules' verdict: Ineligible")
    expect(flag).to_contain_text("Flagged for review by dora")
    expect(dora.locator("#trial-relieve-heading")).to_contain_text("Ineligible")
    _axe(dora, "patient flagged for review")
    assert search_all(site.fhir_url, "ResearchSubject", {"_tag": key}) == subjects_before
    # In the default list (a person asked for a look), and in the screening log.
    dora.goto(f"{site.url}/ui/worklist?trial=relieve")
    expect(_row(dora, site, "deceased-flag")).to_contain_text("Flagged for review")
    answer = dora.request.get(f"{site.url}/ui/worklist.csv?trial=relieve&review=1")
    text = answer.body().decode("utf-8-sig")
    assert f"Patient/{excluded}" in text and "A code or value was read wrongly" in text
    assert ",ineligible," in text
    dora.context.close()


def test_a_bulk_change_reports_the_row_someone_changed_first(
    browser: Any, both_trials: Site
) -> None:
    site = both_trials
    changed, taken = "stabilization-completed-within-window", "proposed-radiosurgery-plan"
    dora = sign_in(browser, site, "dora", start="/ui/worklist?trial=relieve")
    for test_id in (changed, taken):
        dora.get_by_role("checkbox", name=f"Tick {site.name(test_id)} (RELIEVE)").check()
    # Meanwhile someone else decides one of them through the API.
    with site.api() as api:
        rows = api.get("/candidates", params={"trial": "relieve"}).json()["candidates"]
        other = next(r for r in rows if r["patient"] == f"Patient/{site.patient(taken)}")
        assert api.post(f"/candidates/{other['id']}/decision", json={"status": "eligible"})
    dora.get_by_label("New status").select_option("not-registered")
    dora.get_by_label("Reason for Not registered (required for it)").select_option(
        "Could not be reached"
    )
    dora.get_by_role("button", name="Change the ticked rows").click()
    feedback = dora.locator("#bulk-feedback")
    expect(feedback).to_contain_text("1 row changed to “Not registered”; 1 not changed")
    expect(feedback).to_contain_text(f"{site.name(taken)} (RELIEVE): not changed, ui-tests")
    expect(feedback).to_be_focused()
    assert subject_status(site, site.patient(changed)) == "not-registered"
    assert subject_status(site, site.patient(taken)) == "eligible"  # theirs stands
    _axe(dora, "after a bulk change with a conflict")
    dora.goto(patient_url(site, site.patient(changed)))
    expect(dora.locator("#history-relieve")).to_contain_text(
        "dora decided Not registered: Could not be reached"
    )
    dora.context.close()
