"""The web worklist end to end, as a coordinator uses it: Debian's Chromium driven by Playwright,
sign-in through a real OpenID Connect provider, the service and sekmet-fhir over real HTTP."""

from __future__ import annotations

import logging
import re
import subprocess
import sys
from typing import Any

import pytest
from playwright.sync_api import Page, expect

from tests.integration.conftest import search_all
from tests.ui.conftest import AXE, Site

pytestmark = pytest.mark.integration


def sign_in(browser: Any, site: Site, who: str, start: str = "/ui/") -> Page:
    """A fresh browser context signed in as ``who`` at the identity provider."""
    page: Page = browser.new_context().new_page()
    page.goto(f"{site.url}{start}")
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    page.get_by_role("link", name="Sign in with the hospital account").click()
    page.wait_for_url(f"{site.issuer}/**")  # the identity provider's own page
    page.get_by_role("button", name=f"{who}-sub").click()
    page.wait_for_url(f"{site.url}/ui/**")
    return page


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
    row.get_by_role("link", name=f"Patient/{patient}").click()

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
    expect(panel.get_by_role("alert")).to_contain_text("Choose why the patient is ineligible")
    assert subject_status(site, patient) == "candidate"
    panel = page.locator("#trial-relieve")
    panel.get_by_role("radio", name="Ineligible").check()
    panel.get_by_label("Reason (required for ineligible)").select_option("Declined to take part")
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
    ineligible = page.get_by_role("link", name=f"Patient/{site.patient('deceased-flag')}")
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
        url, form={"trial": "relieve", "status": "eligible", "csrf_token": "forged"}
    )
    assert (missing.status, wrong.status) == (403, 403)
    assert "security token" in missing.text()
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
    carol.get_by_role("button", name="Record decision").click()
    expect(first.locator("#trial-relieve").get_by_role("alert")).to_contain_text("“Enrolled”")
    assert subject_status(site, patient) == "on-study"
    for page in (first, second):
        page.context.close()


def _serious_violations(page: Page) -> list[str]:
    page.evaluate(AXE.read_text())
    found = page.evaluate(
        "async () => (await axe.run(document, {resultTypes: ['violations']})).violations"
        ".filter(v => v.impact === 'serious' || v.impact === 'critical')"
        ".map(v => v.id + ': ' + v.nodes.map(n => n.target.join(' ')).join(', '))"
    )
    return list(found)


def test_every_page_passes_axe_and_fits_a_tablet(browser: Any, site: Site) -> None:
    patient = site.patient("candidate")
    anonymous = browser.new_context().new_page()
    # The check itself can fail: an image without alternative text is a critical violation.
    anonymous.set_content("<!doctype html><html lang='en'><title>t</title><img src='x.png'>")
    assert [v.split(":")[0] for v in _serious_violations(anonymous)] == ["image-alt"]
    anonymous.goto(f"{site.url}/ui/login")
    assert _serious_violations(anonymous) == [], "login"
    anonymous.context.close()
    page = sign_in(browser, site, "dora")
    pages = {
        "overview": "/ui/",
        "worklist": "/ui/worklist?status=any",
        "patient": f"/ui/patients/{patient}?trial=relieve",
    }
    for viewport in ({"width": 1280, "height": 800}, {"width": 768, "height": 1024}):
        page.set_viewport_size(viewport)
        for name, path in pages.items():
            response = page.goto(f"{site.url}{path}")
            assert response is not None and response.status == 200
            assert response.headers["cache-control"] == "no-store", name
            assert _serious_violations(page) == [], f"{name} at {viewport['width']}px"
            overflow = page.evaluate(
                "document.documentElement.scrollWidth - document.documentElement.clientWidth"
            )
            assert overflow <= 0, f"{name} scrolls sideways at {viewport['width']}px"
    # The first Tab reaches the skip link, which moves the keyboard to the content.
    page.keyboard.press("Tab")
    expect(page.get_by_role("link", name="Skip to main content")).to_be_focused()
    (cookie,) = [c for c in page.context.cookies() if c["name"] == "prescreen_ui"]
    assert cookie["httpOnly"] and cookie["sameSite"] == "Lax" and cookie["path"] == "/ui"
    page.get_by_role("button", name="Sign out").click()
    assert _serious_violations(page) == [], "signed out"
    page.context.close()
