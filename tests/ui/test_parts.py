"""The web worklist's parts that need no server: the funnel, evidence summaries, links, roles,
passwords, the ineligibility reasons, the query string, the screening log file and how a
patient is named."""

from __future__ import annotations

import asyncio
import csv
import io
import threading
import time
from datetime import date, datetime
from pathlib import Path
from typing import Any

import pytest

from service.api.decisions import DECLINED, GENERAL_REASONS, NOT_REACHED
from service.api.screening_log import COLUMNS, outcome, write_log
from service.cli import main
from service.errors import ConfigError
from service.links import patient_page_url
from service.roles import Access, RoleError
from service.ruleset.loader import RuleSet
from service.settings import Settings
from service.state.models import PatientRecord, WebUser
from service.state.worklist import LogRow
from service.ui import passwords
from service.ui.auth import (
    Identity,
    Person,
    Refusal,
    access_from_claims,
    identity_of,
    link_command,
    oidc_person,
    safe_next,
)
from service.ui.evidence import Displays, summarise
from service.ui.funnel import attrition, funnel_rows
from service.ui.passwords import PasswordChecker, hash_password, verify_password
from service.ui.people import who
from service.ui.query import LAST_PAGE, read_worklist_query
from service.ui.vocabulary import DecisionReasons
from tests.conftest import MAPPINGS_DIR

CRITERIA = [
    ("alive", "inclusion", "Alive"),
    ("age", "inclusion", "Adult"),
    ("other-pain", "exclusion", "No other pain"),
]


def line(verdict: str, **results: str) -> dict[str, Any]:
    return {
        "verdict": verdict,
        "criteria": {cid.replace("_", "-"): {"result": r} for cid, r in results.items()},
    }


def test_funnel_keeps_unknowns_in_and_drops_each_patient_at_the_first_criterion_ruling_out() -> (
    None
):
    results = [
        line("candidate", alive="met", age="met", other_pain="not_met"),
        line("potential-candidate", alive="met", age="unknown", other_pain="not_met"),
        line("ineligible", alive="not_met", age="not_met", other_pain="met"),  # out at alive
        line("ineligible", alive="met", age="not_met", other_pain="not_met"),  # out at age
        line("ineligible", alive="met", age="met", other_pain="met"),  # out at the exclusion
    ]
    steps = attrition(CRITERIA, results)
    assert [(s.label, s.count) for s in steps] == [
        ("screened", 5),
        ("alive", 4),
        ("age", 3),
        ("other-pain", 2),
        ("candidates", 1),
    ]
    assert steps[3].text == "not excluded: No other pain"


def test_funnel_rows_start_at_the_source_name_criteria_by_title_and_link_what_they_ruled_out(
    relieve: RuleSet,
) -> None:
    first, second = relieve.criteria[0], relieve.criteria[1]
    criteria = [(c.id, c.kind, c.text) for c in relieve.criteria[:2]]
    results = [
        {"verdict": "candidate", "criteria": {first.id: {"result": "met"}}},
        {"verdict": "ineligible", "criteria": {first.id: {"result": "not_met"}}},
        {"verdict": "ineligible", "criteria": {second.id: {"result": "not_met"}}},
        {"verdict": "potential-candidate", "criteria": {second.id: {"result": "unknown"}}},
    ]
    steps = attrition(criteria, results)
    rows = funnel_rows(
        list(relieve.criteria[:2]), steps, (10, "patients in the NDJSON folder"), "/x/{}".format
    )
    assert [(r.key, r.title, r.count, r.ruled_out) for r in rows] == [
        ("source", "In the source", 10, None),
        ("screened", "Screened", 4, None),
        (first.id, first.title, 3, 1),
        (second.id, second.title, 2, 1),
        ("candidates", "Candidates", 1, 1),
    ]
    assert first.title != first.id and rows[0].width == 100.0 and rows[1].width == 40.0
    assert [r.link for r in rows] == ["", "", f"/x/{first.id}", f"/x/{second.id}", "/x/candidates"]
    # Counts only: no links for a role that sees no patients; no source before a run.
    counts_only = funnel_rows(list(relieve.criteria[:2]), steps, None, None)
    assert counts_only[0].key == "screened" and not any(r.link for r in counts_only)


def test_funnel_of_a_trial_nobody_was_screened_for() -> None:
    steps = attrition(CRITERIA, [])
    assert all(s.count == 0 for s in steps)
    rows = funnel_rows([], steps, None, "/x/{}".format)
    assert [r.width for r in rows] == [0.0] * len(rows) and not any(r.link for r in rows)


@pytest.fixture(scope="module")
def displays() -> Displays:
    return Displays.load(MAPPINGS_DIR)


def test_evidence_shows_the_score_its_date_and_the_pain_type(displays: Displays) -> None:
    nrs = {
        "resourceType": "Observation",
        "id": "nrs-1",
        "code": {"coding": [{"system": "http://loinc.org", "code": "72514-3"}]},
        "effectiveDateTime": "2026-06-10T09:00:00+02:00",
        "valueInteger": 7,
        "component": [
            {
                "code": {"coding": [{"system": "urn:prescreen:relieve", "code": "pain-type"}]},
                "valueCodeableConcept": {
                    "coding": [{"system": "urn:prescreen:relieve", "code": "axial-triggered"}]
                },
            }
        ],
    }
    shown = summarise("Observation/nrs-1", nrs, displays)
    facts = dict(shown.facts)
    assert shown.reference == "Observation/nrs-1"
    assert facts["value"] == "7" and facts["date"] == "2026-06-10T09:00:00+02:00"
    assert facts["Pain type (pain-type)"].startswith("Axial triggered")  # the CodeSystem's words


def test_evidence_shows_the_condition_code_and_body_site(displays: Displays) -> None:
    condition = {
        "resourceType": "Condition",
        "code": {
            "coding": [
                {
                    "system": "http://hl7.org/fhir/sid/icd-10-cm",
                    "code": "C79.51",
                    "display": "Bone metastasis",
                }
            ]
        },
        "bodySite": [
            {"coding": [{"system": "http://snomed.info/sct", "code": "122496007"}]},
            {"coding": [{"system": "urn:unknown", "code": "x1"}]},
        ],
        "clinicalStatus": {"coding": [{"code": "active"}]},
        "onsetDateTime": "2026-04-16",
    }
    shown = summarise("Condition/c1", condition, displays)
    facts = dict(shown.facts)
    assert shown.title == "Bone metastasis (C79.51)"
    assert facts["body site"] == "Lumbar spine structure (122496007); urn:unknown|x1"
    assert facts["date"] == "2026-04-16" and facts["status"] == "active"


def test_evidence_shows_a_procedure_or_order_and_its_date(displays: Displays) -> None:
    procedure = {
        "resourceType": "Procedure",
        "status": "completed",
        "code": {"text": "Spinal fixation"},
        "performedPeriod": {"start": "2026-06-01", "end": "2026-06-02"},
    }
    facts = dict(summarise("Procedure/p1", procedure, displays).facts)
    assert facts == {"status": "completed", "date": "2026-06-01 to 2026-06-02"}
    order = {
        "resourceType": "ServiceRequest",
        "status": "active",
        "intent": "order",
        "code": {"text": "Radiotherapy"},
        "authoredOn": "2026-06-08",
    }
    assert dict(summarise("ServiceRequest/s1", order, displays).facts) == {
        "status": "active",
        "intent": "order",
        "date": "2026-06-08",
    }
    patient = {
        "resourceType": "Patient",
        "name": [{"given": ["Ada"], "family": "Quinn"}],
        "birthDate": "1960-03-10",
        "gender": "female",
    }
    assert dict(summarise("Patient/p", patient, displays).facts) == {
        "name": "Ada Quinn",
        "born": "1960-03-10",
        "gender": "female",
    }


def test_patient_page_link_carries_only_the_fhir_id_and_the_trial() -> None:
    assert (
        patient_page_url("https://prescreen.example/", "relieve", "p 1/x")
        == "https://prescreen.example/ui/patients/p%201%2Fx?trial=relieve"
    )
    assert patient_page_url(None, "relieve", "p1") is None
    assert patient_page_url("", "relieve", "p1") is None


def test_roles_from_the_identity_provider() -> None:
    settings = Settings(oidc_roles_claim="roles")
    assert access_from_claims({"roles": ["viewer"]}, settings) == Access.of(["viewer"])
    assert access_from_claims({"roles": "coordinator"}, settings) == Access.of(["coordinator"])
    assert access_from_claims(
        {"roles": ["viewer", "coordinator:relieve", "coordinator:ssrs"]}, settings
    ) == Access.of(["viewer", "coordinator"], ["relieve", "ssrs"])
    assert access_from_claims({"roles": "research admin"}, settings) == Access.of(
        ["research", "admin"]
    )
    for nothing in (["superuser"], ["viewer:relieve"], [3, None], {"viewer": 1}, 7):
        assert access_from_claims({"roles": nothing}, settings) is None
    assert access_from_claims({"roles": ["viewer"]}, Settings()) is None  # no claim configured


ISSUER = "https://idp.example"


def user(name: str, role: str, subject: str | None = None) -> WebUser:
    return WebUser(
        name=name,
        role=role,
        trials="",
        oidc_issuer=ISSUER if subject else None,
        oidc_subject=subject,
    )


def test_an_identity_provider_account_is_known_by_issuer_and_subject_never_by_name() -> None:
    """N5: an account whose username claim is a local coordinator's name gets nothing."""
    settings = Settings(oidc_roles_claim="roles")
    claims = {"iss": ISSUER, "sub": "mallory-sub", "preferred_username": "carol"}
    identity = identity_of(claims, settings)
    assert identity == Identity(ISSUER, "mallory-sub", "carol")
    carol = user("carol", "coordinator", subject="carol-sub")
    # Carol's own account signs in as carol, with her roles.
    assert oidc_person(identity, claims, carol, None, settings) == (
        "carol",
        Access.of(["coordinator"]),
    )
    # Another account claiming the name carol: no role, with or without a roles claim.
    refused = oidc_person(identity, claims, None, carol, settings)
    assert isinstance(refused, Refusal) and refused.unlinked_user is None
    viewer = {**claims, "roles": ["viewer"]}
    assert isinstance(oidc_person(identity, viewer, None, carol, settings), Refusal)
    # A person added before accounts were linked: refused until linked, and told how.
    old = user("carol", "coordinator")
    refused = oidc_person(identity, claims, None, old, settings)
    assert isinstance(refused, Refusal) and refused.unlinked_user == "carol"
    assert link_command(identity, "carol") == (
        "prescreen users link carol --oidc-issuer https://idp.example --oidc-subject mallory-sub"
    )
    # Someone no local user is named like: the roles claim decides.
    assert oidc_person(identity, viewer, None, None, settings) == ("carol", Access.of(["viewer"]))
    assert isinstance(oidc_person(identity, claims, None, None, settings), Refusal)
    assert identity_of({"sub": "s1"}, settings) is None  # no issuer: nobody
    assert identity_of({"iss": ISSUER, "sub": 5}, settings) is None


def test_the_role_model_answers_each_question() -> None:
    viewer, research, admin = Access.of(["viewer"]), Access.of(["research"]), Access.of(["admin"])
    coordinator = Access.of(["coordinator"], ["relieve"])
    assert [a.may_see_patients() for a in (viewer, coordinator, research, admin)] == [
        True,
        True,
        False,
        False,
    ]
    assert all(a.may_see_counts() for a in (viewer, coordinator, research, admin))
    assert [a.may_administer() for a in (viewer, coordinator, research, admin)] == [
        False,
        False,
        False,
        True,
    ]
    both = Access.of(["admin", "coordinator"])
    assert both.may_administer() and both.may_decide("ssrs") and both.may_see_patients()
    assert both.roles_text == "coordinator,admin"
    assert Access.stored(both.roles_text, "") == both
    assert coordinator.label == "coordinator (relieve)"
    with pytest.raises(RoleError):
        Access.of(["owner"])


def test_a_coordinator_decides_only_for_their_trials() -> None:
    assert Person("a", Access.of(["coordinator"])).may_decide("ssrs")
    assert Person("a", Access.of(["coordinator"], ["relieve"])).may_decide("relieve")
    assert not Person("a", Access.of(["coordinator"], ["relieve"])).may_decide("ssrs")
    assert not Person("v", Access.of(["viewer"])).may_decide("relieve")
    assert not Person("r", Access.of(["research"])).may_decide("relieve")


def test_after_signing_in_only_paths_of_the_worklist() -> None:
    assert safe_next("/ui/patients/p1?trial=relieve", "/ui") == "/ui/patients/p1?trial=relieve"
    for target in ("https://evil.example/ui/", "//evil.example/ui/", "/candidates", None, 3):
        assert safe_next(target, "/ui") == "/ui/"


def test_passwords_are_argon2_hashes() -> None:
    stored = hash_password("correct horse")
    assert stored.startswith("$argon2id$") and "correct horse" not in stored
    assert verify_password(stored, "correct horse")
    assert not verify_password(stored, "correct hors")
    assert not verify_password(None, "correct horse")
    assert not verify_password("not a hash", "correct horse")
    with pytest.raises(ValueError, match="at least"):
        hash_password("short")


def test_reasons_are_data_for_each_closing_status(relieve: RuleSet, tmp_path: Path) -> None:
    shipped = DecisionReasons.load(Settings().decision_reasons)
    reasons = shipped.for_status("ineligible", relieve)
    assert reasons[0] == f"Does not meet: {relieve.criteria[0].text}"
    survival = next(c for c in relieve.criteria if c.id == "survival")
    assert f"Meets exclusion: {survival.text}" in reasons
    assert reasons[-len(GENERAL_REASONS) :] == list(GENERAL_REASONS)
    # Every closing status has its own list; the others take no reason.
    assert shipped.for_status("withdrawn", relieve) == shipped.general("withdrawn")
    assert "Withdrew consent" in shipped.general("withdrawn")
    assert shipped.closes("not-registered") and not shipped.closes("eligible")
    assert shipped.for_status("screening", relieve) == [] and shipped.review
    # A bad file fails at start-up, naming the file and what is wrong.
    bad = tmp_path / "reasons.yaml"
    bad.write_text("closing:\n  maybe: {reasons: [x]}\nreview: [y]\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"reasons\.yaml.*maybe"):
        DecisionReasons.load(bad)


def test_the_demo_says_how_to_open_the_web_worklist(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["demo", "--out", str(tmp_path), "--no-progress"]) == 0
    told = " ".join(capsys.readouterr().err.split())
    assert "make demo-ui" in told and "http://127.0.0.1:8000/ui/" in told
    assert "demo-password" in told


def test_worklist_query_values_that_cannot_be_used_are_named_and_replaced() -> None:
    trials, statuses = ["relieve", "ssrs"], ["candidate", "ineligible"]
    good = read_worklist_query(
        {"trial": "ssrs", "status": "ineligible", "since": "2026-06-01", "page": "3"},
        trials,
        statuses,
    )
    assert (good.trial, good.status, good.since, good.page, good.problems) == (
        "ssrs",
        "ineligible",
        "2026-06-01",
        3,
        [],
    )
    today = date(2026, 6, 15)
    filters = good.filters("ann", today)
    assert filters.statuses == ["ineligible"] and filters.trials == ["ssrs"]
    sorted_query = read_worklist_query(
        {"sort": "patient", "size": "100", "whose": "mine", "due": "1", "show": "changed"},
        trials,
        statuses,
    )
    assert (sorted_query.sort, sorted_query.dir, sorted_query.size) == ("patient", "asc", 100)
    mine = sorted_query.filters("ann", today)
    assert (mine.assignee, mine.due_by, mine.show, mine.sort) == (
        "ann",
        today,
        "changed",
        "patient",
    )
    assert sorted_query.sorted_by("patient")["dir"] == "desc"  # the other way round
    assert sorted_query.sorted_by("flagged")["dir"] == "desc"  # newest first
    # Links of earlier versions still work: newest or oldest flagged first, new or changed.
    old = read_worklist_query({"sort": "oldest", "changed": "1"}, trials, statuses)
    assert (old.sort, old.dir, old.show, old.problems) == ("flagged", "asc", "either", [])
    bad = read_worklist_query(
        {
            "trial": "x\x00",
            "status": "open\x00",
            "since": "yesterday",
            "sort": "random",
            "page": "-2",
            "changed": "yes",
            "size": "100000",
            "dir": "sideways",
        },
        trials,
        statuses,
    )
    assert (bad.trial, bad.status, bad.since, bad.sort, bad.page, bad.show, bad.size) == (
        "",
        "open",
        "",
        "flagged",
        1,
        "",
        25,
    )
    assert len(bad.problems) == 6
    assert all("\x00" not in problem for problem in bad.problems)
    huge = read_worklist_query({"page": "9" * 90}, trials, statuses)
    assert huge.page == LAST_PAGE and huge.problems == []  # the worklist then shows its last page
    assert read_worklist_query({"page": "٣"}, trials, statuses).page == 1  # digits, but not 0-9
    assert read_worklist_query({"trial": "s" * 500}, trials, statuses).problems


def test_the_screening_log_file_opens_in_a_spreadsheet_as_written() -> None:
    row = LogRow(
        trial="relieve",
        patient_id="p1",
        name='=HYPERLINK("http://x")',
        mrn="-42",
        birth_date="1950",
        sex="female",
        verdict="candidate",
        status="ineligible",
        as_of="2026-06-15",
        flagged_at=datetime(2026, 6, 15, 9, 30),
        decided_at=datetime(2026, 6, 16, 10, 0, 5),
        decided_by="@ann",
        reason="Clinician judgement",
    )
    body = write_log([row], {"relieve": "NCT06746103"})
    assert body.startswith("\ufeff".encode()) and body.endswith(b"\r\n")
    (line,) = list(csv.DictReader(io.StringIO(body.decode("utf-8-sig"))))
    assert line["name"] == '\'=HYPERLINK("http://x")' and line["mrn"] == "'-42"
    assert line["decided_by"] == "'@ann" and line["outcome"] == "screen failure"
    assert (line["decided_at"], line["flagged_at"]) == (
        "2026-06-16T10:00:05Z",
        "2026-06-15T09:30:00Z",
    )
    assert list(line) == list(COLUMNS)
    assert outcome("ineligible", DECLINED) == "declined"
    assert outcome("ineligible", NOT_REACHED) == "not reached"
    assert outcome("on-study", "") == "enrolled"


def test_a_row_names_the_patient_by_name_mrn_age_and_sex() -> None:
    record = PatientRecord(
        patient_id="p1", name="Kim, Mei", mrn="0042", birth_date="1960-06", sex="female"
    )
    shown = who("p1", record, date(2026, 6, 15))
    assert (shown.label, shown.summary) == ("Kim, Mei", "MRN 0042 · 65–66 years · female")
    assert who("p1", None, date(2026, 6, 15)).label == "Patient/p1"


def test_password_checks_run_a_few_at_a_time_on_threads_of_their_own(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """N4: 16 anonymous sign-ins hashed at once on the threads the database calls use."""
    lock = threading.Lock()
    seen: dict[str, Any] = {"running": 0, "peak": 0, "threads": set()}

    def counted_verify(_stored: str | None, _password: str) -> bool:
        with lock:
            seen["running"] += 1
            seen["peak"] = max(seen["peak"], seen["running"])
            seen["threads"].add(threading.current_thread().name)
        time.sleep(0.05)  # holds its slot a moment: unbounded, the others would pile in
        with lock:
            seen["running"] -= 1
        return False

    monkeypatch.setattr(passwords, "verify_password", counted_verify)
    checker = PasswordChecker(2)

    async def flood() -> list[bool]:
        return list(await asyncio.gather(*(checker.verify(None, "x") for _ in range(16))))

    try:
        assert asyncio.run(flood()) == [False] * 16
    finally:
        checker.close()
    assert seen["peak"] <= 2
    assert seen["threads"] and all(name.startswith("password") for name in seen["threads"])
