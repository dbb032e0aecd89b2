"""AuditEvents built from the access audit (IHE BALP patterns), the time zone pages show times
in, and criterion results coloured by what they mean for eligibility."""

from __future__ import annotations

import base64
import json
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from pydantic import ValidationError

from service.cli import main
from service.fhir.auditevent import Access, audit_event
from service.ruleset.loader import RuleSet
from service.settings import Settings
from service.ui.pages import result_class
from service.ui.times import shown_time

EVENT_ID = "6f1c2d3e-4a5b-4c6d-8e7f-0123456789ab"
AT = datetime(2026, 6, 15, 12, 30, 5)


def access(action: str, **extra: object) -> Access:
    fields: dict[str, object] = {
        "id": EVENT_ID,
        "action": action,
        "user": "carol",
        "via": "ui",
        "at": AT,
        "client_address": "10.1.2.3",
        "patient_id": "p-42",
        "trial": "relieve",
    }
    return Access(**(fields | extra))  # type: ignore[arg-type]


def codes(concept: dict[str, object]) -> tuple[object, object]:
    return concept["system"], concept["code"]


def test_a_page_view_is_a_balp_read_of_the_patient() -> None:
    event = audit_event(access("view"), "https://prescreen.example")
    assert event["id"] == EVENT_ID and event["action"] == "R" and event["outcome"] == "0"
    assert codes(event["type"]) == (
        "http://terminology.hl7.org/CodeSystem/audit-event-type",
        "rest",
    )
    assert [codes(s) for s in event["subtype"]] == [
        ("http://hl7.org/fhir/restful-interaction", "read")
    ]
    assert event["recorded"] == "2026-06-15T12:30:05.000Z"  # stored naive UTC, sent as UTC
    person, client, server = event["agent"]
    assert person["requestor"] is True and person["who"]["identifier"]["value"] == "carol"
    assert codes(person["type"]["coding"][0])[1] == "IRCP"
    assert codes(client["type"]["coding"][0])[1] == "110153"
    assert client["network"] == {"address": "10.1.2.3", "type": "2"}
    assert codes(server["type"]["coding"][0])[1] == "110152"
    assert server["network"] == {"address": "https://prescreen.example", "type": "5"}
    (patient,) = event["entity"]
    assert patient["what"] == {"reference": "Patient/p-42"}
    assert codes(patient["type"])[1] == "1" and codes(patient["role"])[1] == "1"
    assert patient["detail"] == [{"type": "trial", "valueString": "relieve"}]


def test_a_decision_is_an_update_and_an_export_a_query_with_its_filters() -> None:
    decision = audit_event(access("decision", detail={"status": "ineligible"}))
    assert decision["action"] == "U" and decision["subtype"][0]["code"] == "update"
    assert {"type": "status", "valueString": "ineligible"} in decision["entity"][0]["detail"]
    assert [a.get("network") for a in decision["agent"][2:]] == [None]  # no public URL known
    export = audit_event(
        access(
            "export",
            via="api",
            patient_id="",
            trial="",
            client_address="ward-pc-7",
            detail={"filters": {"trial": "relieve", "status": "open", "since": ""}, "rows": 3},
        )
    )
    assert export["action"] == "E" and export["subtype"][0]["code"] == "search"
    (query,) = export["entity"]
    assert codes(query["type"])[1] == "2" and codes(query["role"])[1] == "24"
    assert base64.b64decode(query["query"]).decode() == "status=open&trial=relieve"
    assert export["agent"][1]["network"] == {"address": "ward-pc-7", "type": "1"}
    assert export["agent"][1]["who"]["display"] == "API client"


def test_a_time_is_shown_in_the_configured_zone() -> None:
    assert shown_time(AT, ZoneInfo("UTC")) == "2026-06-15 12:30 UTC"
    assert shown_time(AT, ZoneInfo("Europe/Zurich")) == "2026-06-15 14:30 CEST"
    assert shown_time(datetime(2026, 1, 15, 12, 30), ZoneInfo("Europe/Zurich")).endswith(
        "13:30 CET"
    )
    assert shown_time(None, ZoneInfo("UTC")) == ""
    assert Settings().time_zone == "UTC"
    assert Settings(time_zone="America/New_York").zone == ZoneInfo("America/New_York")


@pytest.mark.parametrize("zone", ["Mars/Olympus", "../../etc/passwd", "", "CEST+2"])
def test_an_unknown_time_zone_is_refused_at_start(
    zone: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(ValidationError, match="is not an IANA time zone name"):
        Settings(time_zone=zone)
    monkeypatch.setenv("PRESCREEN_TIME_ZONE", zone)
    from service.settings import get_settings

    get_settings.cache_clear()
    try:
        assert main(["users", "list"]) == 2
    finally:
        get_settings.cache_clear()
    out = capsys.readouterr().err
    assert "PRESCREEN_TIME_ZONE" in out and "is not an IANA time zone name" in out


def test_results_are_coloured_by_what_they_mean_for_eligibility() -> None:
    assert result_class("inclusion", "met") == "result-favourable"
    assert result_class("exclusion", "not_met") == "result-favourable"  # a good outcome
    assert result_class("inclusion", "not_met") == "result-rules-out"
    assert result_class("exclusion", "met") == "result-rules-out"
    assert result_class("exclusion", "unknown") == "result-open"


def test_the_feasibility_page_reads_the_report_the_command_wrote(
    relieve: RuleSet, tmp_path: Path
) -> None:
    from collections import Counter
    from datetime import date

    from fastapi import HTTPException

    from service.screening.feasibility import Counts, TrialCounts, months
    from service.screening.feasibility_report import publish
    from service.screening.funnel import attrition
    from service.ui.research_page import _from_file

    periods = months(date(2026, 5, 1), date(2026, 6, 15))
    first = relieve.criteria[0]
    lines = [{"verdict": "candidate", "criteria": {}}] * 3
    lines += [{"verdict": "ineligible", "criteria": {first.id: {"result": "not_met"}}}] * 40
    funnel = attrition([(c.id, c.kind, c.text) for c in relieve.criteria], lines)
    counts = Counts(
        date(2026, 5, 1),
        date(2026, 6, 15),
        periods,
        [TrialCounts(relieve, Counter({"candidate": 3, "ineligible": 40}), funnel, [1, 2])],
        "NDJSON folder",
    )
    report = publish(counts)
    (tmp_path / "feasibility.json").write_text(json.dumps(report.as_json()))
    assert _from_file(tmp_path) == report  # the folder, or the file itself
    assert _from_file(tmp_path / "feasibility.json").trials[0].verdicts["candidate"].shown == "<5"
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(HTTPException) as refused:
        _from_file(tmp_path / "broken.json")
    assert refused.value.status_code == 503
