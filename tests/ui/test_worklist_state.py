"""The worklist's state on a real database (SQLite, and PostgreSQL when the suite has one): the
verdict history kept by triggers, what changed since a person looked, filters and paging, who the
patients are and how they are found, the screening log, kept decisions and exports."""

from __future__ import annotations

import csv
import io
import os
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from service.api.decisions import DECLINED, NOT_REACHED
from service.api.screening_log import write_log
from service.mapping.display import PatientDetails
from service.roles import Access, RoleError
from service.state.models import Candidate, DecisionDraft
from service.state.signin import SignInLimits, SignInPolicy, address_key, name_key
from service.state.store import Store, migrate
from service.state.worklist import IdentityTakenError, WorklistFilters, WorklistStore


def _databases() -> list[str]:
    return ["sqlite"] + (["postgresql"] if os.environ.get("PRESCREEN_TEST_POSTGRES_URL") else [])


@pytest.fixture(params=_databases())
def stores(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Store, WorklistStore]]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'state.db'}"
    else:
        server = os.environ["PRESCREEN_TEST_POSTGRES_URL"]
        name = f"t_{uuid.uuid4().hex[:12]}"
        admin = sa.create_engine(server, isolation_level="AUTOCOMMIT")
        with admin.connect() as connection:
            connection.execute(sa.text(f'CREATE DATABASE "{name}"'))
        admin.dispose()
        url = server.rsplit("/", 1)[0] + f"/{name}"
    migrate(url)
    store = Store(url)
    yield store, WorklistStore(store.engine)
    store.close()


def verdict(patient: str, outcome: str, **results: str) -> dict[str, Any]:
    return {
        "patient": f"Patient/{patient}",
        "trial": "relieve",
        "as_of": "2026-06-15",
        "verdict": outcome,
        "criteria": {
            cid.replace("_", "-"): {"kind": "inclusion", "result": r, "evidence": [], "reason": cid}
            for cid, r in results.items()
        },
    }


def row(store: Store, patient: str) -> Candidate:
    (found,) = [
        c for c in store.candidates("relieve", None, None, 0, 100) if c.patient_id == patient
    ]
    return found


def test_history_records_each_change_of_verdict_or_result_and_nothing_else(
    stores: tuple[Store, WorklistStore],
) -> None:
    store, worklist = stores
    store.upsert_candidate(
        "relieve", verdict("p1", "potential-candidate", age="met", pain="unknown"), "2026-06-15"
    )
    # Re-screened the next day: other reason texts and date, same results: not history.
    again = verdict("p1", "potential-candidate", age="met", pain="unknown")
    again["as_of"], again["criteria"]["age"]["reason"] = "2026-06-16", "other words"
    store.upsert_candidate("relieve", again, "2026-06-16")
    store.upsert_candidate(
        "relieve", verdict("p1", "candidate", age="met", pain="met"), "2026-06-16"
    )
    store.upsert_candidate(
        "relieve", verdict("p1", "candidate", age="unknown", pain="met"), "2026-06-16"
    )
    history = worklist.history(row(store, "p1").id)
    assert [(h.kind, h.what) for h in history] == [
        ("verdict", "candidate"),
        ("verdict", "candidate"),
        ("verdict", "potential-candidate"),
    ]
    assert history[0].changes == (("age", "met", "unknown"),)
    assert history[1].changes == (("pain", "unknown", "met"),)


def test_new_and_changed_since_a_person_looked(stores: tuple[Store, WorklistStore]) -> None:
    store, worklist = stores
    for patient, outcome in (("a", "potential-candidate"), ("b", "candidate"), ("c", "ineligible")):
        store.upsert_candidate("relieve", verdict(patient, outcome, age="met"), "2026-06-15")

    def page(**options: Any) -> Any:
        settings: dict[str, Any] = {
            "trials": ["relieve"],
            "statuses": ["candidate", "potential-candidate"],
            "since": None,
            "changed_only": False,
            "newest_first": True,
            "offset": 0,
            "limit": 25,
        } | options
        return worklist.worklist("ann", **settings)

    first = page()
    assert (first.total, first.new, first.changed) == (2, 2, 0)
    assert [r.candidate.patient_id for r in first.rows] == ["b", "a"]  # newest flagged first
    assert [r.candidate.patient_id for r in page(newest_first=False).rows] == ["a", "b"]
    worklist.mark_seen("ann", [row(store, "a"), row(store, "b")])
    assert (page().new, page().changed) == (0, 0)
    # a's result changes; b is decided by someone else; ann's own decisions do not count.
    store.upsert_candidate("relieve", verdict("a", "candidate", age="unknown"), "2026-06-16")
    worklist.record_decision(row(store, "b"), "candidate", "candidate", "bob", "", "", "2")
    changed = page()
    assert (changed.new, changed.changed) == (0, 2)
    assert {r.candidate.patient_id: r.change for r in changed.rows} == {
        "a": "changed",
        "b": "changed",
    }
    assert changed.rows[0].seen is not None
    worklist.mark_seen("ann", [row(store, "a"), row(store, "b")])
    worklist.record_decision(row(store, "b"), "candidate", "candidate", "ann", "", "", "3")
    assert page(changed_only=True).total == 0
    # "New" is opened by nobody: for another person, only c (nobody opened it) is new; b,
    # which ann decided, is changed for them (someone else acted on it); a, only re-screened
    # since ann opened it, is neither. Filters and paging count the whole selection.
    other = worklist.worklist(
        "bob",
        trials=[],
        statuses=[],
        since=None,
        changed_only=True,
        newest_first=True,
        offset=0,
        limit=1,
    )
    assert (other.total, other.new, other.changed, len(other.rows)) == (2, 1, 1, 1)
    tomorrow = datetime.now() + timedelta(days=1)
    assert page(since=tomorrow).total == 0
    assert page(trials=["ssrs"]).total == 0


def test_flagged_is_when_the_patient_first_became_a_candidate(
    stores: tuple[Store, WorklistStore],
) -> None:
    store, worklist = stores
    store.upsert_candidate("relieve", verdict("late", "ineligible", age="not_met"), "2026-06-15")
    store.upsert_candidate("relieve", verdict("early", "candidate", age="met"), "2026-06-15")
    store.upsert_candidate("relieve", verdict("late", "candidate", age="met"), "2026-06-16")
    rows = worklist.worklist(
        "ann",
        trials=[],
        statuses=[],
        since=None,
        changed_only=False,
        newest_first=True,
        offset=0,
        limit=10,
    ).rows
    assert [r.candidate.patient_id for r in rows] == ["late", "early"]
    assert rows[0].flagged_at > rows[1].flagged_at


def test_sessions_end_at_sign_out_expiry_and_when_the_person_changes(
    stores: tuple[Store, WorklistStore],
) -> None:
    _store, worklist = stores
    coordinator = Access.of(["coordinator"], ["relieve"])
    worklist.save_user("ann", coordinator, None)
    first = worklist.open_session("ann", coordinator, hours=1)
    second = worklist.open_session("ann", coordinator, hours=1)
    expired = worklist.open_session("ann", coordinator, hours=-1)
    assert worklist.find_session(first) is not None and worklist.find_session(expired) is None
    worklist.close_session(first)
    assert worklist.find_session(first) is None and worklist.find_session(second) is not None
    worklist.save_user("ann", Access.of(["viewer"]), None)  # a new role: sign in again
    assert worklist.find_session(second) is None
    with pytest.raises(RoleError):
        worklist.save_user("ann", Access.of(["superuser"]), None)
    with pytest.raises(ValueError):
        worklist.save_user("ann", Access.of([]), None)
    assert worklist.remove_user("ann") and not worklist.remove_user("ann")


def test_patients_are_found_by_name_words_mrn_or_id(stores: tuple[Store, WorklistStore]) -> None:
    store, worklist = stores
    people = {
        "p1": PatientDetails("García Núñez, Lucía", "00042", "1950-01-02", "female"),
        "p2": PatientDetails("Garcia, Luis", "000421", "1961", "male"),
        "p_3": PatientDetails("O'Brien, Niall", "A_1", "", ""),
    }
    for patient, details in people.items():
        store.upsert_candidate("relieve", verdict(patient, "candidate", age="met"), "d", details)
    store.upsert_candidate("relieve", verdict("p4", "candidate", age="met"), "2026-06-15")
    assert worklist.find_patients("garcia", 10) == ["p1", "p2"]
    assert worklist.find_patients("LUCIA  garcía", 10) == ["p1"]
    assert worklist.find_patients(" 00042 ", 10) == ["p1"]  # a whole MRN, not its start
    assert worklist.find_patients("obrien", 10) == worklist.find_patients("a_1", 10) == ["p_3"]
    assert worklist.find_patients("p4", 10) == ["p4"]  # screened before details were kept
    # LIKE's own characters are letters like any other.
    assert worklist.find_patients("_", 10) == worklist.find_patients("%", 10) == []
    assert worklist.find_patients("garcia", 1) == ["p1"]
    # The next screening brings the record up to date.
    moved = PatientDetails("García Núñez, Lucía", "00043", "1950-01-02", "female")
    store.upsert_candidate("ssrs", verdict("p1", "candidate", age="met"), "2026-06-16", moved)
    assert worklist.find_patients("00042", 10) == []
    assert worklist.find_patients("00043", 10) == ["p1"]
    page = worklist.worklist(
        "ann",
        trials=[],
        statuses=[],
        since=None,
        changed_only=False,
        newest_first=True,
        offset=0,
        limit=10,
        patient_ids=["p1", "p4"],
    )
    assert sorted((r.candidate.trial, r.candidate.patient_id) for r in page.rows) == [
        ("relieve", "p1"),
        ("relieve", "p4"),
        ("ssrs", "p1"),
    ]
    named = {r.candidate.patient_id: r.patient for r in page.rows}
    assert named["p1"] is not None and named["p1"].mrn == "00043" and named["p4"] is None


def test_the_screening_log_is_the_filtered_worklist_with_the_decisions_behind_it(
    stores: tuple[Store, WorklistStore],
) -> None:
    store, worklist = stores
    for patient, outcome in (
        ("a", "candidate"),
        ("b", "potential-candidate"),
        ("c", "ineligible"),
        ("d", "candidate"),
        ("e", "candidate"),
    ):
        store.upsert_candidate("relieve", verdict(patient, outcome, age="met"), "2026-06-15")

    def decide(patient: str, status: str, who: str, reason: str = "") -> None:
        candidate = row(store, patient)
        worklist.record_decision(candidate, status, candidate.status, who, reason, "", "2")
        store.set_candidate_status(candidate.id, status)

    decide("b", "ineligible", "ann", DECLINED)
    decide("d", "ineligible", "bob", NOT_REACHED)
    decide("e", "screening", "ann")
    store.set_candidate_status(row(store, "e").id, "on-study")  # changed on the FHIR server
    everything = WorklistFilters(trials=[], statuses=[])
    log = worklist.screening_log("ann", everything)
    page = worklist.worklist(
        "ann",
        trials=[],
        statuses=[],
        since=None,
        changed_only=False,
        newest_first=True,
        offset=0,
        limit=100,
    )
    assert [r.patient_id for r in log] == [r.candidate.patient_id for r in page.rows]
    body = write_log(log, {"relieve": "NCT06746103"})
    lines = {r["patient"]: r for r in csv.DictReader(io.StringIO(body.decode("utf-8-sig")))}
    assert {p: r["outcome"] for p, r in lines.items()} == {
        "Patient/a": "to review",
        "Patient/b": "declined",
        "Patient/c": "screen failure",
        "Patient/d": "not reached",
        "Patient/e": "enrolled",
    }
    assert (lines["Patient/d"]["reason"], lines["Patient/d"]["decided_by"]) == (NOT_REACHED, "bob")
    assert lines["Patient/e"]["decided_by"] == ""  # the status is not the decision recorded here
    ineligible = WorklistFilters(trials=["relieve"], statuses=["ineligible"], newest_first=False)
    assert [r.patient_id for r in worklist.screening_log("ann", ineligible)] == ["b", "c", "d"]
    assert worklist.ineligible_reasons() == {"relieve": {DECLINED: 1, NOT_REACHED: 1}}


def test_kept_decisions_and_exports(stores: tuple[Store, WorklistStore]) -> None:
    _store, worklist = stores
    values = {"status": "eligible", "reason": "", "note": "phoned", "expected_version": "3"}
    worklist.save_draft("k1", "ann", "p1", "relieve", values)
    kept = worklist.draft("k1")
    assert kept is not None and (kept.author, kept.note, kept.expected_version) == (
        "ann",
        "phoned",
        "3",
    )
    worklist.save_draft("k1", "ann", "p1", "relieve", values | {"note": "phoned twice"})
    assert (worklist.draft("k1") or kept).note == "phoned twice"
    worklist.drop_draft("k1")
    assert worklist.draft("k1") is None
    worklist.save_draft("old", "ann", "p1", "relieve", values)
    with worklist.session() as session:
        session.execute(
            sa.update(DecisionDraft).values(created_at=datetime.now() - timedelta(days=2))
        )
    assert worklist.draft("old") is None  # a day old: gone
    worklist.save_draft("new", "ann", "p2", "relieve", values)
    with worklist.session() as session:
        assert session.scalar(sa.select(sa.func.count()).select_from(DecisionDraft)) == 1
    worklist.record_export("ann", "ui", {"status": "any"}, 12)
    (export,) = worklist.exports()
    assert (export.exported_by, export.via, export.filters, export.rows) == (
        "ann",
        "ui",
        {"status": "any"},
        12,
    )


def test_failed_sign_ins_make_each_next_try_wait_longer_up_to_a_minute(
    stores: tuple[Store, WorklistStore],
) -> None:
    """N3, counted in the database: ten failures of a name in 15 minutes, then each further
    one waits 1, 2, 4... seconds, never more than 60; the window's end forgives."""
    store, _worklist = stores
    limits = SignInLimits(store.engine, SignInPolicy())
    other_replica = SignInLimits(store.engine, SignInPolicy())  # the same database
    keys = [name_key("ann"), address_key("10.0.0.7")]
    start = datetime(2026, 6, 15, 8, 0, 0)
    for failure in range(10):
        assert limits.wait_seconds(keys, at=start) == 0
        (limits if failure % 2 else other_replica).record_failure(keys, at=start)
    assert limits.wait_seconds(keys, at=start) == 1.0
    assert other_replica.wait_seconds([name_key("ANN ")], at=start) == 1.0  # one count per name
    waits = []
    at = start
    for _ in range(10):  # each try made once the wait is over, and failing again
        at += timedelta(seconds=limits.wait_seconds(keys, at=at))
        limits.record_failure(keys, at=at)
        waits.append(limits.wait_seconds(keys, at=at))
    assert waits == [2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0, 60.0, 60.0, 60.0]
    # Another name from another address is not held up.
    assert limits.wait_seconds([name_key("bob"), address_key("10.0.0.8")], at=at) == 0
    # The address alone holds another name up.
    assert limits.wait_seconds([name_key("bob"), address_key("10.0.0.7")], at=at) == 60.0
    # Once the window (15 minutes from its first failure) is over, a failure starts a new one.
    later = start + timedelta(minutes=16)
    limits.record_failure(keys, at=later)
    assert limits.wait_seconds(keys, at=later) == 0
    # Signing in forgives the name, not the address.
    for _ in range(9):  # ten in this window
        limits.record_failure(keys, at=later)
    limits.record_success(keys[0])
    assert limits.wait_seconds([keys[0]], at=later) == 0
    assert limits.wait_seconds([keys[1]], at=later) == 1.0


def test_names_and_identities_of_people(stores: tuple[Store, WorklistStore]) -> None:
    _store, worklist = stores
    issuer = "https://idp.example/"
    worklist.save_user("carol", Access.of(["coordinator"]), None, (issuer, "carol-sub"))
    linked = worklist.user_by_identity("https://idp.example", "carol-sub")
    assert linked is not None and linked.name == "carol"
    assert worklist.user_by_identity(issuer, "mallory-sub") is None
    # Replaced without an identity: keeps the account it was linked to.
    worklist.save_user("carol", Access.of(["viewer"]), None)
    assert worklist.user_by_identity(issuer, "carol-sub") is not None
    worklist.save_user("old", Access.of(["viewer"]), None)
    with pytest.raises(IdentityTakenError):
        worklist.link_user("old", issuer, "carol-sub")
    assert worklist.link_user("old", issuer, "old-sub")
    assert not worklist.link_user("nobody", issuer, "x")


def test_sorting_filters_and_follow_up(stores: tuple[Store, WorklistStore]) -> None:
    """Every column sorts both ways with a stable order; mine, due, new/changed (with who and
    what), notes and flags for review are kept and filter the list; the screening log holds
    them. On SQLite and PostgreSQL (the left-to-check count is SQL of each)."""
    from datetime import date

    from service.state.worklist import SORTS

    store, worklist = stores
    store.upsert_candidate("relieve", verdict("a", "candidate", x="unknown", y="unknown"), "d")
    store.upsert_candidate("relieve", verdict("b", "potential-candidate", x="unknown"), "d")
    store.upsert_candidate("relieve", verdict("c", "ineligible", x="not_met"), "d")
    store.upsert_candidate("relieve", verdict("e", "candidate", x="met"), "d")
    ids = {p: row(store, p).id for p in "abce"}
    everything = WorklistFilters(trials=[], statuses=[])

    def order(**options: Any) -> list[str]:
        filters = WorklistFilters(**({"trials": [], "statuses": []} | options))
        return [r.candidate.patient_id for r in worklist.page("ann", filters, 0, 10).rows]

    assert order(sort="patient", descending=False) == ["a", "b", "c", "e"]
    for sort in SORTS:
        up, down = order(sort=sort, descending=False), order(sort=sort, descending=True)
        assert sorted(up) == sorted(down) == ["a", "b", "c", "e"], sort
        assert up == order(sort=sort, descending=False), sort  # the same order every time
    assert order(sort="to_check", descending=True)[:2] == ["a", "b"]  # 2 unknown, then 1
    assert order(sort="to_check", descending=False)[-2:] == ["b", "a"]
    assert order(sort="verdict", descending=False)[-1] == "c"

    # Follow-up: assigned to ann and due, or to bob later; notes; a flag for review.
    assert worklist.set_follow_up(ids["a"], "bob", "ann", date(2026, 1, 1)) == [
        "assigned to ann",
        "follow up on 2026-01-01",
    ]
    assert worklist.set_follow_up(ids["a"], "bob", "ann", date(2026, 1, 1)) == []
    worklist.set_follow_up(ids["b"], "ann", "bob", date(2999, 1, 1))
    assert order(assignee="ann") == ["a"]
    assert sorted(order(assignee="")) == ["c", "e"]
    assert order(due_by=date(2026, 6, 1)) == ["a"]
    assert order(sort="assignee", descending=False)[:2] == ["a", "b"]  # nobody's last
    assert order(sort="follow_up", descending=True)[:2] == ["b", "a"]
    worklist.flag_for_review(ids["c"], "bob", "Clinician judgement", "seen in clinic")
    assert order(review_only=True) == ["c"]
    kept = WorklistFilters(trials=[], statuses=["candidate"], with_review=True)
    assert sorted(r.candidate.patient_id for r in worklist.page("ann", kept, 0, 9).rows) == [
        "a",
        "c",
        "e",
    ]
    assert row(store, "c").verdict == "ineligible"  # the flag changes no verdict

    # New is opened by nobody; changed says who did what since ann looked.
    assert order(show="new") == order()  # nobody opened anything yet
    worklist.mark_seen("ann", [row(store, "a"), row(store, "b")])
    worklist.mark_seen("bob", [row(store, "e")])
    assert sorted(order(show="new")) == ["c"]
    worklist.add_note(ids["a"], "bob", "phoned, call back Monday")
    worklist.add_note(ids["b"], "ann", "my own note")
    worklist.record_decision(row(store, "e"), "screening", "candidate", "bob", "", "", "2")
    page = worklist.page("ann", WorklistFilters(trials=[], statuses=[], show="changed"), 0, 9)
    assert sorted(r.candidate.patient_id for r in page.rows) == ["a", "e"]
    changes = worklist.changes_since_seen("ann", page.rows)
    by_patient = {r.candidate.patient_id: changes[r.candidate.id] for r in page.rows}
    assert [(c.who, c.kind) for c in by_patient["a"]] == [("bob", "note")]
    assert [(c.who, c.kind, c.before, c.what) for c in by_patient["e"]] == [
        ("bob", "decision", "candidate", "screening")
    ]
    kinds = [h.kind for h in worklist.history(ids["a"])]
    assert "note" in kinds and "assign" in kinds and "follow-up" in kinds

    lines = {r.patient_id: r for r in worklist.screening_log("ann", everything)}
    assert (lines["c"].review_reason, lines["c"].review_by) == ("Clinician judgement", "bob")
    assert lines["c"].verdict == "ineligible"
    assert (lines["a"].assignee, lines["a"].follow_up_on) == ("ann", date(2026, 1, 1))
    text = write_log(lines.values(), {"relieve": "NCT06746103"}).decode("utf-8-sig")
    flagged = {r["patient"]: r for r in csv.DictReader(io.StringIO(text))}["Patient/c"]
    assert flagged["review_reason"] == "Clinician judgement" and flagged["verdict"] == "ineligible"
    worklist.flag_for_review(ids["c"], "bob", "", "", clear=True)
    assert order(review_only=True) == []


def test_migration_0008_counts_the_unknown_criteria_of_rows_already_screened(
    stores: tuple[Store, WorklistStore],
) -> None:
    """Rows screened before 0008 get their count of unknown criteria (in SQL, per database);
    down to 0007 and up again leaves the schema whole (the verdict-history triggers too)."""
    from alembic import command
    from alembic.config import Config

    from service.state.store import MIGRATIONS

    store, worklist = stores
    store.upsert_candidate("relieve", verdict("a", "candidate", x="unknown", y="unknown"), "d")
    store.upsert_candidate("relieve", verdict("b", "candidate", x="met"), "d")
    assert row(store, "a").unknown_count == 2
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("sqlalchemy.url", store.engine.url.render_as_string(False))
    store.engine.dispose()
    command.downgrade(config, "0007")
    command.upgrade(config, "head")
    assert (row(store, "a").unknown_count, row(store, "b").unknown_count) == (2, 0)
    everything = WorklistFilters(trials=[], statuses=[], sort="to_check")
    assert [r.candidate.patient_id for r in worklist.page("ann", everything, 0, 9).rows] == [
        "a",
        "b",
    ]
    # The verdict history is still written by its triggers (migration 0004): a batch copy of
    # the table on SQLite would have dropped them.
    from service.state.models import VerdictEvent

    store.upsert_candidate("relieve", verdict("c", "candidate"), "d")
    with store.session() as session:
        assert session.scalar(sa.select(sa.func.count()).select_from(VerdictEvent)) == 3
