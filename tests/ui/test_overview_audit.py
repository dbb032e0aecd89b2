"""The overview's funnel opens the patients each step ruled out; the access audit records a
page view that an administrator reads and a coordinator cannot; the feasibility page shows
counts with the small ones hidden and no patient. Debian's Chromium, sign-in through a real
OpenID Connect provider, sekmet-fhir over real HTTP; axe-core at three widths on these pages."""

from __future__ import annotations

import re
from typing import Any

import pytest
from playwright.sync_api import expect

from tests.ui.conftest import Site
from tests.ui.test_browser import _check_widths, patient_url, sign_in

pytestmark = pytest.mark.integration


def test_a_funnel_step_opens_the_patients_it_ruled_out(browser: Any, site: Site) -> None:
    page = sign_in(browser, site, "dora")
    funnel = page.locator("#funnel-relieve")
    # Criteria by their titles, never by rule id; the counts say what they count.
    expect(funnel).to_contain_text("Spinal metastasis")
    expect(funnel.locator("th[scope=row] .step-title")).not_to_contain_text(["spinal-metastasis"])
    expect(page.get_by_text(re.compile(r"screened, as \d+ patient-trial pairs"))).to_be_visible()
    relieve = page.locator("section.trial").filter(has=page.locator("#funnel-relieve"))
    expect(relieve).to_contain_text(re.compile(r"Last screened: \d{4}-\d\d-\d\d \d\d:\d\d UTC"))
    page.get_by_role("link", name=re.compile(r"ruled out by Alive$")).click()
    expect(page.get_by_role("heading", level=1)).to_have_text("RELIEVE: Ruled out by “Alive”")
    dead = site.name("deceased-flag")
    expect(page.get_by_role("row").filter(has_text=dead)).to_contain_text("recorded as deceased")
    expect(page.get_by_role("link", name=site.name("candidate"))).to_have_count(0)
    _check_widths(page, "patients a step ruled out")
    page.get_by_role("link", name=dead).click()
    expect(page.get_by_role("heading", level=1)).to_have_text(dead)
    page.context.close()


def test_a_page_view_is_in_the_audit_for_an_administrator_only(browser: Any, site: Site) -> None:
    patient = site.patient("two-lesions-in-one-region")
    coordinator = sign_in(browser, site, "carol")
    coordinator.goto(patient_url(site, patient))
    expect(coordinator.get_by_role("heading", level=1)).to_have_text(
        site.name("two-lesions-in-one-region")
    )
    refused = coordinator.goto(f"{site.url}/ui/audit")
    assert refused is not None and refused.status == 403
    expect(coordinator.get_by_role("link", name="Access audit")).to_have_count(0)
    coordinator.context.close()

    admin = sign_in(browser, site, "ada")
    admin.get_by_role("link", name="Access audit").click()
    admin.get_by_label("Patient id").fill(patient)
    admin.get_by_label("Action").select_option("Viewed the patient page")
    admin.get_by_role("button", name="Apply").click()
    (row,) = admin.locator("table.audit tbody tr").all()
    for text in ("carol", "Viewed the patient page", patient, "relieve", "127.0.0.1", "web"):
        expect(row).to_contain_text(text)
    expect(row).to_contain_text(re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d UTC"))
    _check_widths(admin, "access audit")
    # An administrator sees no patient page (the audit names the patient, nothing more).
    barred = admin.goto(patient_url(site, patient))
    assert barred is not None and barred.status == 403
    admin.context.close()
    with site.api() as api:
        found = api.get("/audit", params={"patient": patient, "action": "view"}).json()
    assert found["total"] == 1 and found["entries"][0]["user"] == "carol"
    assert found["entries"][0]["client_address"] == "127.0.0.1"


def test_the_research_page_shows_counts_with_small_ones_hidden_and_no_patient(
    browser: Any, site: Site
) -> None:
    page = sign_in(browser, site, "rita")
    page.get_by_role("link", name="Feasibility").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Feasibility")
    section = page.locator("section").filter(has_text="RELIEVE")
    expect(section).to_contain_text("<5")  # eight patients screened: the small counts hidden
    expect(section.get_by_text("Spinal metastasis")).to_be_visible()
    content = page.content()
    for patient in (site.patient(t) for t in ("candidate", "deceased-flag")):
        assert patient not in content
    for test_id in ("candidate", "deceased-flag"):
        assert site.name(test_id) not in content
    _check_widths(page, "feasibility")
    csv = page.request.get(f"{site.url}/ui/feasibility.csv")
    assert csv.ok and csv.text().startswith("trial,section,item,as_of,count,shown,hidden")
    assert "<5" in csv.text()
    report = page.request.get(f"{site.url}/ui/feasibility/MeasureReport.json").json()
    assert report["resourceType"] == "MeasureReport"
    page.context.close()
