"""The web worklist end to end, as a coordinator uses it: Debian's Chromium driven by Playwright,
sign-in through a real OpenID Connect provider, the service and sekmet-fhir over real HTTP."""

from __future__ import annotations

import csv
import io
import logging
import re
import subprocess
import sys
from typing import Any

import pytest
from playwright.sync_api import Page, expect
from sqlalchemy import create_engine

from service.state.worklist import WorklistStore
from tests.integration.conftest import search_all
from tests.ui.conftest import AXE, IDENTITIES, Site

pytestmark = pytest.mark.integration


WIDTHS = (
    {"width": 1280, "height": 800},  # a laptop
    {"width": 768, "height": 1024},  # a tablet
    {"width": 390, "height": 844},  # a phone
)


def sign_in(browser: Any, site: Site, who: str, start: str = "/ui/", **context: Any) -> Page:
    """A fresh browser context signed in as ``who`` at the identity provider."""
    page: Page = browser.new_context(**context).new_page()
    page.goto(f"{site.url}{start}")
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    page.get_by_role("link", name="Sign in with the hospital account").click()
    at_provider(page, site, who)
    return page


def at_provider(page: Page, site: Site, who: str) -> None:
    """Choose ``who`` on the identity provider's page, then wait to be back at the worklist."""
    page.wait_for_url(f"{site.issuer}/**")  # the identity provider's own page
    page.get_by_role("button", name=f"{who}-sub").click()
    page.wait_for_url(f"{site.url}/ui/**")


def sign_in_again(page: Page, site: Site, who: str) -> None:
    """From an ended session's notice, through the sign-in page and the identity provider."""
    page.locator("#decision-relieve").get_by_role("link", name="Sign in again").click()
    page.get_by_role("link", name="Sign in with the hospital account").click()
    at_provider(page, site, who)


def sign_out_elsewhere(page: Page, site: Site) -> None:
    """Sign out in another tab of the same browser."""
    other = page.context.new_page()
    other.goto(f"{site.url}/ui/")
    other.get_by_role("button", name="Sign out").click()
    expect(other.get_by_role("heading", name="You are signed out")).to_be_visible()
    other.close()


def subject_status(site: Site, patient_id: str) -> str:
    key = f"urn:prescreen:key|NCT06746103/Patient/{patient_id}"
    (subject,) = search_all(site.fhir_url, "ResearchSubject", {"_tag": key})
    return str(subject["status"])


def patient_url(site: Site, patient_id: str) -> str:
    return f"{site.url}/ui/patients/{patient_id}?trial=relieve"


def test_coordinator_reads_the_evidence_decides_and_signs_out(browser: Any, site: Site) -> None:
    patient = site.patient("candidate")
    page = sign_in(browser, site, "carol", start="/ui/worklist?trial=relieve")
    # Back where the sign-in started, signed in as the person the identity provider named.
    expect(page).to_have_url(re.compile(r"/ui/worklist\?trial=relieve$"))
    expect(page.get_by_text("carol · coordinator")).to_be_visible()
    row = page.get_by_role("row").filter(has_text=f"Patient/{patient}")
    expect(row).to_contain_text("Candidate")
    expect(row).to_contain_text("New")
    # Who the patient is: name, MRN (the hospital's, not the partner's nor the old one), age, sex.
    expect(row).to_contain_text("MRN MRN-1001")
    expect(row).not_to_contain_text("P-77")
    row.get_by_role("link", name=site.name("candidate")).click()
    expect(page.get_by_role("heading", level=1)).to_have_text(site.name("candidate"))
    expect(page.locator("dl.patient-facts")).to_contain_text("MRN-1001")

    # The evidence, as the values that decided, with their FHIR references.
    nrs = page.locator("#trial-relieve tr").filter(has_text="pain-nrs")
    expect(nrs).to_contain_text("met")
    expect(nrs).to_contain_text("value7")
    expect(nrs).to_contain_text("2026-06-10T09:00:00+02:00")
    expect(nrs).to_contain_text(f"Observation/{patient.removesuffix('p')}nrs-1")
    site_row = page.locator("#trial-relieve tr").filter(has_text="spinal-metastasis")
    expect(site_row).to_contain_text("Lumbar spine structure (122496007)")
    expect(site_row).to_contain_text(f"Condition/{patient.removesuffix('p')}spine-lumbar")
    left = page.locator("#trial-relieve ul.to-check")
    expect(left).to_contain_text("index-site")
    expect(left).to_contain_text("consent")
    expect(page.locator("#trial-relieve .history")).to_contain_text("prescreen verdict Candidate")

    # Ineligible needs a reason from the list; then it is written and shown with its author.
    panel = page.locator("#trial-relieve")
    panel.get_by_role("radio", name="Ineligible").check()
    panel.get_by_role("button", name="Record decision").click()
    expect(panel.get_by_role("alert")).to_contain_text("choose why (Ineligible)")
    assert subject_status(site, patient) == "candidate"
    panel = page.locator("#trial-relieve")
    panel.get_by_role("radio", name="Ineligible").check()
    panel.get_by_label("Reason for Ineligible (required for it)").select_option(
        "Declined to take part"
    )
    panel.get_by_label("Note (optional)").fill("prefers to wait")
    panel.get_by_role("button", name="Record decision").click()
    expect(page.locator("#trial-relieve")).to_contain_text("Recorded for RELIEVE: Ineligible.")
    history = page.locator("#trial-relieve .history")
    expect(history).to_contain_text("carol decided Ineligible: Declined to take part")
    expect(history).to_contain_text("prefers to wait")
    assert subject_status(site, patient) == "ineligible"

    # Signing out ends the session on the server: the old cookie no longer opens anything.
    cookies = page.context.cookies()
    page.get_by_role("button", name="Sign out").click()
    expect(page.get_by_role("heading", name="You are signed out")).to_be_visible()
    page.goto(patient_url(site, patient))
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    replay = browser.new_context()
    replay.add_cookies(cookies)
    replayed = replay.new_page()
    replayed.goto(patient_url(site, patient))
    expect(replayed.get_by_role("heading", name="Sign in")).to_be_visible()
    replay.close()
    page.context.close()


def test_viewer_reads_but_cannot_decide(browser: Any, site: Site) -> None:
    patient = site.patient("potential-candidate-without-survival")
    page = sign_in(browser, site, "victor")
    expect(page.get_by_text("victor · viewer")).to_be_visible()
    # The worklist's filters apply as they change (htmx), and the address follows them.
    page.goto(f"{site.url}/ui/worklist")
    ineligible = page.get_by_role("link", name=site.name("deceased-flag"))
    expect(ineligible).to_have_count(0)
    page.get_by_label("Status").select_option("any")
    expect(ineligible).to_be_visible()
    expect(page).to_have_url(re.compile(r"status=any"))
    page.goto(patient_url(site, patient))
    panel = page.locator("#trial-relieve")
    expect(panel).to_contain_text("can read this page but not record decisions")
    expect(panel.get_by_role("button", name="Record decision")).to_have_count(0)
    # Even a well-formed request, with the session's CSRF token, is refused for a viewer.
    token = page.evaluate("document.body.getAttribute('hx-headers')")
    answer = page.request.post(
        f"{site.url}/ui/patients/{patient}/decision",
        form={"trial": "relieve", "status": "eligible"},
        headers={"X-CSRF-Token": re.search(r'"X-CSRF-Token": "([^"]+)"', token).group(1)},  # type: ignore[union-attr]
    )
    assert answer.status == 403
    assert subject_status(site, patient) == "potential-candidate"
    page.context.close()


def test_someone_without_access_is_not_signed_in(browser: Any, site: Site) -> None:
    page = sign_in(browser, site, "nora")
    expect(page.get_by_role("alert")).to_contain_text("no access to prescreen")
    page.goto(f"{site.url}/ui/worklist")
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    page.context.close()


def test_an_account_claiming_a_coordinators_name_gets_nothing(
    browser: Any, site: Site, caplog: pytest.LogCaptureFixture
) -> None:
    """N5: an account whose preferred_username is carol signed in as carol, a coordinator.
    The name claim identifies nobody: the account is not carol's (issuer and subject)."""
    with caplog.at_level(logging.WARNING, logger="service.ui.pages"):
        page = sign_in(browser, site, "mallory")
    expect(page.get_by_role("alert")).to_contain_text("no access to prescreen")
    expect(page.get_by_text("carol · coordinator")).to_have_count(0)
    page.goto(f"{site.url}/ui/worklist")
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    assert any("linked to another account" in r.getMessage() for r in caplog.records)
    page.context.close()


def test_a_person_added_before_accounts_were_linked_is_told_how_to_link_once(
    browser: Any, site: Site, caplog: pytest.LogCaptureFixture
) -> None:
    command = f"prescreen users link olga --oidc-issuer {site.issuer} --oidc-subject olga-sub"
    with caplog.at_level(logging.WARNING, logger="service.ui.pages"):
        page = sign_in(browser, site, "olga")
    expect(page.get_by_role("alert")).to_contain_text("no access to prescreen")
    # The page names the command (without naming who exists here); the log names it whole.
    expect(page.locator("pre")).to_contain_text(
        f"prescreen users link NAME --oidc-issuer {site.issuer} --oidc-subject olga-sub"
    )
    assert any(command in r.getMessage() for r in caplog.records)
    page.context.close()
    linked = subprocess.run(
        [sys.executable, "-m", "service", *command.split()[1:]],
        env={"PRESCREEN_DATABASE_URL": site.settings.database_url, "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert linked.returncode == 0, linked.stderr
    page = sign_in(browser, site, "olga")
    expect(page.get_by_text("olga · coordinator")).to_be_visible()
    page.context.close()


def test_research_sees_the_counts_but_no_patient(browser: Any, site: Site) -> None:
    page = sign_in(browser, site, "rita")
    expect(page.get_by_text("rita · research")).to_be_visible()
    expect(page.get_by_role("heading", name="Portfolio overview")).to_be_visible()
    expect(page.get_by_role("link", name="Worklist")).to_have_count(0)
    page.goto(f"{site.url}/ui/worklist?trial=relieve")
    expect(page.get_by_text("Your role shows counts only, not patients.")).to_be_visible()
    expect(page.get_by_text("Patient/")).to_have_count(0)
    page.context.close()


def test_a_request_without_the_csrf_token_is_refused(browser: Any, site: Site) -> None:
    patient = site.patient("potential-candidate-without-survival")
    page = sign_in(browser, site, "dora")
    url = f"{site.url}/ui/patients/{patient}/decision"
    missing = page.request.post(url, form={"trial": "relieve", "status": "eligible"})
    wrong = page.request.post(
        url, form={"trial": "relieve", "status": "eligible", "csrf_token": "forged", "note": "n1"}
    )
    assert (missing.status, wrong.status) == (403, 403)
    assert "security token" in missing.text()
    # What was sent comes back in a form with the current token, to be sent again.
    assert ">n1</textarea>" in wrong.text() and 'value="eligible" required checked' in wrong.text()
    assert subject_status(site, patient) == "potential-candidate"
    # Signing out is a form too: without the token the session stays.
    assert page.request.post(f"{site.url}/ui/logout").status == 403
    page.goto(f"{site.url}/ui/")
    expect(page.get_by_role("heading", name="Portfolio overview")).to_be_visible()
    page.context.close()


def test_a_stale_decision_shows_the_other_decision(browser: Any, site: Site) -> None:
    patient = site.patient("deceased-false")
    first, second = sign_in(browser, site, "carol"), sign_in(browser, site, "dora")
    for page in (first, second):
        page.goto(patient_url(site, patient))
    # dora decides first; carol's page still shows the subject as it was.
    dora = second.locator("#trial-relieve")
    dora.get_by_role("radio", name="Eligible", exact=True).check()
    dora.get_by_role("button", name="Record decision").click()
    expect(second.locator("#trial-relieve")).to_contain_text("Recorded for RELIEVE: Eligible.")
    carol = first.locator("#trial-relieve")
    carol.get_by_role("radio", name="Contacted, screening").check()
    carol.get_by_role("button", name="Record decision").click()
    alert = first.locator("#trial-relieve").get_by_role("alert")
    expect(alert).to_contain_text("Not saved: dora recorded “Eligible”")
    expect(first.locator("#trial-relieve")).to_contain_text(
        "ResearchSubject status on the FHIR server: Eligible"
    )
    assert subject_status(site, patient) == "eligible"

    # A decision through the API between loading and submitting is a conflict too.
    first.goto(patient_url(site, patient))
    with site.api() as api:
        rows = api.get("/candidates", params={"trial": "relieve"}).json()["candidates"]
        row = next(r for r in rows if r["patient"] == f"Patient/{patient}")
        decided = api.post(f"/candidates/{row['id']}/decision", json={"status": "on-study"})
        assert decided.status_code == 200
    carol = first.locator("#trial-relieve")
    carol.get_by_role("radio", name="Withdrawn").check()
    carol.get_by_label("Reason for Withdrawn (required for it)").select_option("Withdrew consent")
    carol.get_by_role("button", name="Record decision").click()
    expect(first.locator("#trial-relieve").get_by_role("alert")).to_contain_text("“Enrolled”")
    assert subject_status(site, patient) == "on-study"
    for page in (first, second):
        page.context.close()


def _decide(page: Page, status: str, reason: str = "", note: str = "") -> None:
    block = page.locator("#decision-relieve")
    block.get_by_role("radio", name=status, exact=True).check()
    if reason:
        block.get_by_label(f"Reason for {status} (required for it)").select_option(reason)
    if note:
        block.get_by_label("Note (optional)").fill(note)
    block.get_by_role("button", name="Record decision").click()


@pytest.mark.parametrize("javascript", [True, False], ids=["htmx", "no-javascript"])
def test_an_ended_session_keeps_the_decision_until_it_is_sent_after_signing_in(
    browser: Any, site: Site, javascript: bool
) -> None:
    test_id = "stabilization-completed-within-window" if javascript else "decompression-in-progress"
    patient = site.patient(test_id)
    before = subject_status(site, patient)
    page = sign_in(browser, site, "carol", java_script_enabled=javascript)
    page.goto(patient_url(site, patient))
    note = "three calls, no answer"
    sign_out_elsewhere(page, site)
    _decide(page, "Ineligible", "Could not be reached", note)

    # Said in place, beside the form, with the focus; the choice and the note are still there.
    block = page.locator("#decision-relieve")
    notice = page.locator("#notice-relieve")
    expect(notice).to_contain_text("your session had ended")
    expect(notice).to_be_focused()
    expect(block.get_by_role("radio", name="Ineligible")).to_be_checked()
    expect(block.get_by_label("Reason for Ineligible (required for it)")).to_have_value(
        "Could not be reached"
    )
    expect(block.get_by_label("Note (optional)")).to_have_value(note)
    expect(page.locator("#who")).to_contain_text("Not signed in")
    assert subject_status(site, patient) == before

    # Signed in again, the decision is back, filled in, and goes as it was.
    sign_in_again(page, site, "carol")
    expect(page).to_have_url(re.compile(rf"/ui/patients/{patient}\?trial=relieve"))
    block = page.locator("#decision-relieve")
    expect(page.locator("#notice-relieve")).to_contain_text("Not saved yet")
    expect(block.get_by_role("radio", name="Ineligible")).to_be_checked()
    expect(block.get_by_label("Note (optional)")).to_have_value(note)
    block.get_by_role("button", name="Record decision").click()
    expect(page.locator("#notice-relieve")).to_contain_text("Recorded for RELIEVE: Ineligible.")
    expect(page.locator("#history-relieve")).to_contain_text(
        f"carol decided Ineligible: Could not be reached “{note}”"
    )
    assert subject_status(site, patient) == "ineligible"
    # Sent once: the kept decision is gone.
    page.goto(patient_url(site, patient))
    expect(page.locator("#decision-relieve").get_by_label("Note (optional)")).to_have_value("")
    page.context.close()


def test_a_kept_decision_is_offered_to_its_author_only(browser: Any, site: Site) -> None:
    patient = site.patient("two-lesions-in-one-region")
    page = sign_in(browser, site, "carol")
    page.goto(patient_url(site, patient))
    sign_out_elsewhere(page, site)
    _decide(page, "Contacted, screening", note="carol's note")
    expect(page.locator("#notice-relieve")).to_contain_text("What you chose and typed is kept")
    # dora signs in on the same browser: carol's words are not hers to send.
    sign_in_again(page, site, "dora")
    expect(page.locator("#decision-relieve").get_by_label("Note (optional)")).to_have_value("")
    expect(page.locator("#notice-relieve")).to_have_count(0)
    page.context.close()


@pytest.mark.parametrize("width", [1280, 390])
def test_feedback_takes_the_focus_beside_the_form_and_keeps_the_choice(
    browser: Any, site: Site, width: int
) -> None:
    patient = site.patient("two-lesions-in-one-region")
    page = sign_in(browser, site, "dora", viewport={"width": width, "height": 800})
    page.goto(patient_url(site, patient))
    _decide(page, "Ineligible", note="asked twice")
    notice = page.locator("#notice-relieve")
    expect(notice).to_contain_text("choose why (Ineligible)")
    expect(notice).to_be_focused()
    expect(notice).to_be_in_viewport()
    form = page.locator("#decision-relieve form")
    expect(form.get_by_role("radio", name="Ineligible")).to_be_checked()
    expect(form.get_by_label("Note (optional)")).to_have_value("asked twice")

    def beside() -> None:
        above, below = notice.bounding_box(), form.bounding_box()
        assert above is not None and below is not None
        assert 0 <= below["y"] - (above["y"] + above["height"]) <= 24  # right above the form

    beside()
    block = page.locator("#decision-relieve")
    block.get_by_label("Reason for Ineligible (required for it)").select_option(
        "Clinician judgement"
    )
    block.get_by_role("button", name="Record decision").click()
    expect(notice).to_contain_text("Recorded for RELIEVE: Ineligible.")
    expect(notice).to_be_focused()
    expect(notice).to_be_in_viewport()
    beside()
    expect(page.locator("#status-relieve")).to_contain_text("worklist status: Ineligible")
    # Set back for the other width.
    _decide(page, "Contacted, screening")
    expect(notice).to_contain_text("Recorded for RELIEVE: Contacted, screening.")
    page.context.close()


def test_search_by_mrn_finds_exactly_that_patient_and_keeps_it_out_of_the_address(
    browser: Any, site: Site
) -> None:
    page = sign_in(browser, site, "dora")
    page.goto(f"{site.url}/ui/worklist?status=any")
    searched: list[Any] = []
    page.on("request", lambda r: searched.append(r) if "/ui/search" in r.url else None)
    page.get_by_label("Find a patient").fill(" mrn-1003 ")
    page.get_by_role("button", name="Search").click()
    expect(page.get_by_role("heading", name="Find a patient")).to_be_visible()
    links = page.locator("table.worklist tbody").get_by_role("link")
    expect(links).to_have_count(1)  # one trial screened: one row
    expect(links).to_have_text([site.name("deceased-false")])
    expect(page.get_by_role("status")).to_contain_text("1 patient found")
    assert [r.method for r in searched] == ["POST"]
    assert "1003" not in page.url and "1003" not in searched[0].url
    # A name in part finds both who bear it; an old number is not searched; an id is.
    for query, expected in (
        ("lindq", ["deceased-false", "deceased-flag"]),
        ("ANGSTROM lena", ["candidate"]),
        ("obrien", ["proposed-radiosurgery-plan"]),
        (site.patient("decompression-in-progress"), ["decompression-in-progress"]),
    ):
        page.get_by_label("Find a patient").fill(query)
        page.get_by_role("button", name="Search").click()
        expect(page.locator("table.worklist tbody").get_by_role("link")).to_have_text(
            sorted(site.name(t) for t in expected)
        )
    page.get_by_label("Find a patient").fill("MRN-1002x")
    page.get_by_role("button", name="Search").click()
    expect(page.get_by_role("status")).to_contain_text("No patient matches this search")
    history = page.evaluate("window.history.length")
    assert history >= 1 and "MRN" not in page.url
    page.context.close()


def _table_patients(page: Page) -> list[str]:
    hrefs = page.locator("table.worklist tbody th a").evaluate_all(
        "links => links.map(a => a.getAttribute('href'))"
    )
    return [re.search(r"/patients/([^?]+)", h).group(1) for h in hrefs]  # type: ignore[union-attr]


def _csv_rows(body: bytes) -> list[dict[str, str]]:
    assert body.startswith(b"\xef\xbb\xbf")  # UTF-8 with a byte order mark
    assert b"\r\n" in body
    return list(csv.DictReader(io.StringIO(body.decode("utf-8-sig"))))


def test_the_screening_log_holds_the_rows_of_the_filtered_worklist(
    browser: Any, site: Site
) -> None:
    page = sign_in(browser, site, "dora")
    page.goto(patient_url(site, site.patient("proposed-radiosurgery-plan")))
    _decide(page, "Ineligible", "Declined to take part", note="=not a formula")
    expect(page.locator("#notice-relieve")).to_contain_text("Recorded for RELIEVE")
    for query in (
        "trial=relieve&status=any",
        "status=ineligible&sort=flagged&dir=asc",
        "status=open",
    ):
        page.goto(f"{site.url}/ui/worklist?{query}")
        shown = _table_patients(page)
        href = page.get_by_role("link", name=re.compile("as a screening log")).get_attribute("href")
        assert href is not None and href.startswith("/ui/worklist.csv?")
        assert set(query.split("&")) <= set(href.split("?")[1].split("&"))  # the same filters
        answer = page.request.get(f"{site.url}{href}")
        assert answer.status == 200
        assert answer.headers["content-type"] == "text/csv; charset=utf-8"
        assert "attachment" in answer.headers["content-disposition"]
        rows = _csv_rows(answer.body())
        assert [r["patient"] for r in rows] == [f"Patient/{p}" for p in shown], query
    everything = page.request.get(f"{site.url}/ui/worklist.csv?trial=relieve&status=any")
    rows = _csv_rows(everything.body())
    by_patient = {r["patient"]: r for r in rows}
    declined_row = by_patient[f"Patient/{site.patient('proposed-radiosurgery-plan')}"]
    assert declined_row["status"] == "ineligible" and declined_row["outcome"] == "declined"
    assert declined_row["reason"] == "Declined to take part"
    assert declined_row["decided_by"] == "dora" and declined_row["decided_at"].endswith("Z")
    assert declined_row["mrn"] == "MRN-1008" and declined_row["name"] == "O'Brien, Niall"
    assert declined_row["study"] == "NCT06746103"
    flagged = by_patient[f"Patient/{site.patient('deceased-flag')}"]
    assert flagged["outcome"] == "screen failure" and flagged["decided_by"] == ""
    # The API gives the same log; each download is recorded with who asked and the filters.
    with site.api() as api:
        answer = api.get("/candidates.csv", params={"trial": "relieve", "status": "any"})
        assert answer.status_code == 200
        assert [r["patient"] for r in _csv_rows(answer.content)] == [r["patient"] for r in rows]
        assert api.get("/candidates.csv", params={"status": "nope"}).status_code == 422
    engine = create_engine(site.settings.database_url)
    try:
        exports = WorklistStore(engine).exports()
    finally:
        engine.dispose()
    assert (exports[-2].exported_by, exports[-2].via) == ("dora", "ui")
    assert exports[-2].filters == {
        "trial": "relieve",
        "status": "any",
        "sort": "flagged",
        "dir": "desc",
    }
    assert (exports[-1].exported_by, exports[-1].via, exports[-1].rows) == (
        "ui-tests",
        "api",
        len(rows),
    )
    page.context.close()


def test_a_phone_gets_cards_and_each_decision_before_its_criteria(browser: Any, site: Site) -> None:
    page = sign_in(browser, site, "dora", viewport={"width": 390, "height": 844})
    page.goto(f"{site.url}/ui/worklist?status=any")
    expect(page.locator("table.worklist")).to_be_hidden()
    cards = page.locator("ol.cards > li")
    expect(cards).to_have_count(len(IDENTITIES))
    card = cards.filter(has_text=site.name("candidate"))
    for text in ("MRN MRN-1001", "RELIEVE", "Verdict", "Status", "Left to check"):
        expect(card).to_contain_text(text)
    overflow = page.evaluate(
        "document.documentElement.scrollWidth - document.documentElement.clientWidth"
    )
    assert overflow <= 0
    card.get_by_role("link", name=site.name("candidate")).click()
    decision = page.locator("#decision-relieve").bounding_box()
    criteria = page.locator("table.criteria").bounding_box()
    assert decision is not None and criteria is not None
    assert decision["y"] < criteria["y"]
    page.context.close()


def test_bad_query_values_show_the_worklist_with_a_plain_message(browser: Any, site: Site) -> None:
    page = sign_in(browser, site, "dora")
    for query, message in (
        ("page=abc", "The page number must be a whole number"),
        ("page=999&status=any", "Page 999 is past the end (1 page): showing the last page."),
        ("page=9223372036854775807", "is past the end"),
        ("trial=nope", "That trial is not served here"),
        ("status=x&sort=y", "That status is not one the worklist knows"),
        ("since=tomorrow", "must be a date"),
    ):
        answer = page.goto(f"{site.url}/ui/worklist?{query}")
        assert answer is not None and answer.status == 200, query
        expect(page.get_by_role("alert").first).to_be_visible()
        expect(page.locator("#results")).to_contain_text(message)
    # A NUL character is refused before any page (the request guard): a plain sentence, no 500.
    answer = page.goto(f"{site.url}/ui/worklist?trial=%00")
    assert answer is not None and answer.status == 400
    expect(page.locator("body")).to_contain_text("holds a NUL character")
    page.goto(f"{site.url}/ui/worklist?page=999&status=any")
    expect(page.get_by_role("navigation", name="Pages")).to_contain_text("Page 1 of 1")
    expect(page.locator("table.worklist tbody tr")).to_have_count(len(IDENTITIES))
    page.context.close()


def _violations(page: Page) -> list[str]:
    page.evaluate(AXE.read_text())
    found = page.evaluate(
        "async () => (await axe.run(document, {resultTypes: ['violations']})).violations"
        ".map(v => v.id + ' (' + v.impact + '): '"
        " + v.nodes.map(n => n.target.join(' ')).join(', '))"
    )
    return list(found)


def _check_widths(page: Page, name: str) -> None:
    """axe at every width (no violation of any impact), and nothing scrolls sideways."""
    for viewport in WIDTHS:
        page.set_viewport_size(viewport)
        assert _violations(page) == [], f"{name} at {viewport['width']}px"
        overflow = page.evaluate(
            "document.documentElement.scrollWidth - document.documentElement.clientWidth"
        )
        assert overflow <= 0, f"{name} scrolls sideways at {viewport['width']}px"


def test_every_page_and_state_passes_axe_at_laptop_tablet_and_phone_widths(
    browser: Any, site: Site
) -> None:
    patient = site.patient("candidate")
    anonymous = browser.new_context().new_page()
    # The check itself can fail: an image without alternative text is a violation.
    anonymous.set_content(
        "<!doctype html><html lang='en'><title>t</title><main><h1>t</h1><img src='x.png'></main>"
    )
    assert [v.split(" ")[0] for v in _violations(anonymous)] == ["image-alt"]
    anonymous.goto(f"{site.url}/ui/login")
    _check_widths(anonymous, "sign-in")
    anonymous.context.close()
    page = sign_in(browser, site, "dora")
    pages = {
        "overview": "/ui/",
        "worklist": "/ui/worklist?status=any",
        "patient page": f"/ui/patients/{patient}?trial=relieve",
    }
    for name, path in pages.items():
        response = page.goto(f"{site.url}{path}")
        assert response is not None and response.status == 200
        assert response.headers["cache-control"] == "no-store", name
        _check_widths(page, name)
    page.set_viewport_size(WIDTHS[0])
    page.goto(f"{site.url}/ui/worklist")
    page.get_by_label("Find a patient").fill("Lindqvist")
    page.get_by_role("button", name="Search").click()
    expect(page.get_by_role("status")).to_contain_text("2 patients found")
    _check_widths(page, "search results")
    page.get_by_label("Find a patient").fill("nobody of that name")
    page.get_by_role("button", name="Search").click()
    expect(page.get_by_role("status")).to_contain_text("No patient matches")
    _check_widths(page, "empty result")

    # After a decision, and after a conflict (a decision through the API meanwhile).
    decided = site.patient("decompression-in-progress")
    page.goto(patient_url(site, decided))
    _decide(page, "Contacted, screening", note="after a decision")
    expect(page.locator("#notice-relieve")).to_contain_text("Recorded for RELIEVE")
    _check_widths(page, "after a decision")
    page.set_viewport_size(WIDTHS[0])
    page.goto(patient_url(site, decided))
    with site.api() as api:
        rows = api.get("/candidates", params={"trial": "relieve"}).json()["candidates"]
        row = next(r for r in rows if r["patient"] == f"Patient/{decided}")
        assert api.post(f"/candidates/{row['id']}/decision", json={"status": "eligible"}).is_success
    _decide(page, "Withdrawn", "Withdrew consent", note="after a conflict")
    expect(page.locator("#notice-relieve")).to_contain_text("Not saved: ui-tests recorded")
    expect(page.locator("#decision-relieve").get_by_role("radio", name="Withdrawn")).to_be_checked()
    expect(page.locator("#decision-relieve").get_by_label("Note (optional)")).to_have_value(
        "after a conflict"
    )
    _check_widths(page, "after a conflict")

    # The first Tab reaches the skip link, which moves the keyboard to the content.
    page.goto(f"{site.url}/ui/")
    page.keyboard.press("Tab")
    expect(page.get_by_role("link", name="Skip to main content")).to_be_focused()
    (cookie,) = [c for c in page.context.cookies() if c["name"] == "prescreen_ui"]
    assert cookie["httpOnly"] and cookie["sameSite"] == "Lax" and cookie["path"] == "/ui"

    # An ended session, as the page shows it (in place) and as a page of its own (no script).
    page.set_viewport_size(WIDTHS[0])
    page.goto(patient_url(site, patient))
    sign_out_elsewhere(page, site)
    _decide(page, "Eligible", note="ended session")
    expect(page.locator("#notice-relieve")).to_contain_text("your session had ended")
    _check_widths(page, "ended session")
    page.context.close()
    # The same without htmx: the form sent by the browser itself (submit() fires no event).
    plain = sign_in(browser, site, "dora")
    plain.goto(patient_url(site, patient))
    sign_out_elsewhere(plain, site)
    plain.locator("#decision-relieve").get_by_label("Note (optional)").fill("ended session")
    plain.locator("#decision-relieve").get_by_role("radio", name="Eligible", exact=True).check()
    with plain.expect_navigation():
        plain.evaluate("document.querySelector('#decision-relieve form').submit()")
    expect(plain.get_by_role("heading", name="Your session has ended")).to_be_visible()
    expect(plain.locator("#notice-relieve")).to_be_focused()
    _check_widths(plain, "ended session page")
    plain.context.close()
    page = sign_in(browser, site, "dora")
    page.get_by_role("button", name="Sign out").click()
    _check_widths(page, "signed out")
    page.context.close()
