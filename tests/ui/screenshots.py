"""Regenerates the web worklist screenshots in docs/ from the sample hospital:

    .venv/bin/python -m tests.ui.screenshots      (or: make screenshots)

It starts sekmet-fhir with the shipped sample, screens it for every trial, signs in as the demo
coordinator in Debian's Chromium, records one decision, and photographs the overview, the
worklist and that patient's page at a laptop's width, and the worklist on a phone (390 px).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import httpx
from playwright.sync_api import Page, sync_playwright

from tests.integration.servers import free_port
from tests.ui.harness import (
    API_KEY,
    DEMO_PASSWORD,
    DEMO_USER,
    launch_chromium,
    sample_hospital,
)

DOCS = Path(__file__).resolve().parents[2] / "docs"
WIDTH, HEIGHT = 1280, 900
PHONE_WIDTH, PHONE_HEIGHT = 390, 844


def sign_in(page: Page, url: str) -> None:
    page.goto(f"{url}/ui/")
    page.get_by_label("Name").fill(DEMO_USER)
    page.get_by_label("Password").fill(DEMO_PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(f"{url}/ui/")


def best_example(url: str) -> str:
    """A RELIEVE candidate who is also flagged for SSRS, else any RELIEVE candidate."""
    with httpx.Client(base_url=url, headers={"X-API-Key": API_KEY}, timeout=60) as client:
        rows = client.get("/candidates", params={"limit": 1000}).json()["candidates"]
    flagged = {
        (r["trial"], r["patient"])
        for r in rows
        if r["verdict"] in ("candidate", "potential-candidate")
    }
    relieve = sorted(p for t, p in flagged if t == "relieve")
    both = [p for p in relieve if ("ssrs", p) in flagged]
    return (both or relieve)[0].removeprefix("Patient/")


def main() -> None:
    DOCS.mkdir(exist_ok=True)
    with (
        tempfile.TemporaryDirectory(prefix="prescreen-shots-") as folder,
        sample_hospital(Path(folder), free_port()) as hospital,
        sync_playwright() as playwright,
    ):
        browser = launch_chromium(playwright)
        page = browser.new_page(viewport={"width": WIDTH, "height": HEIGHT})
        url = hospital.url
        sign_in(page, url)
        example = best_example(url)
        # One decision recorded through the page, so the overview and the history show one.
        page.goto(f"{url}/ui/patients/{example}?trial=relieve")
        panel = page.locator("#decision-relieve")
        panel.get_by_role("radio", name="Contacted, screening").check()
        panel.get_by_label("Note (optional)").fill("Phoned, appointment on Thursday")
        panel.get_by_role("button", name="Record decision").click()
        page.locator("#notice-relieve").get_by_text("Recorded for RELIEVE").wait_for()
        page.goto(f"{url}/ui/")
        page.screenshot(path=DOCS / "ui-overview.png", full_page=True)
        page.goto(f"{url}/ui/worklist?trial=relieve")
        page.screenshot(path=DOCS / "ui-worklist.png", full_page=True)
        page.goto(f"{url}/ui/patients/{example}?trial=relieve")
        # The page down to the end of the first trial's panel: criteria, evidence, decision form
        # and history (the second trial's panel below repeats the layout).
        box = page.locator("#trial-relieve").bounding_box()
        assert box is not None
        bottom = box["y"] + box["height"] + 16
        page.screenshot(
            path=DOCS / "ui-patient.png",
            full_page=True,
            clip={"x": 0, "y": 0, "width": WIDTH, "height": bottom},
        )
        # A phone: the worklist's rows as cards (the top of the page: the search, the filters
        # and the first cards).
        page.set_viewport_size({"width": PHONE_WIDTH, "height": PHONE_HEIGHT})
        page.goto(f"{url}/ui/worklist?trial=relieve")
        page.screenshot(
            path=DOCS / "ui-phone.png",
            full_page=True,
            clip={"x": 0, "y": 0, "width": PHONE_WIDTH, "height": 2 * PHONE_HEIGHT},
        )
        browser.close()
    print(f"Wrote {DOCS}/ui-overview.png, ui-worklist.png, ui-patient.png, ui-phone.png")


if __name__ == "__main__":
    main()
