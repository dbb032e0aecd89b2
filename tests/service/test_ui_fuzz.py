"""Every route of the web worklist (/ui), its query and form values generated (Hypothesis):
text of any kind (NUL characters, other scripts, very long), numbers far past any integer
column, files where text was expected. Whatever is sent, signed in or not, no answer is a 5xx.
On SQLite and on PostgreSQL (which refuses NUL characters in text: 500s before, issue F10),
against a real FHIR server so that no 5xx is the server's doing.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service.roles import Access
from service.state.store import Store, migrate
from service.state.worklist import WorklistStore
from service.ui.passwords import hash_password
from tests.integration.servers import SekmetServer, free_port
from tests.service.conftest import Helpers, running_service, service_settings

PASSWORD = "fuzz-password-1"
EXAMPLES = 40  # per route: enough to reach odd corners, small enough for CI
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=True,
    database=None,
)

# Text a browser (or anyone) can send: any character but lone surrogates (not encodable).
anything = st.text(st.characters(exclude_categories=("Cs",)), max_size=300)
numbers = st.integers(min_value=-(10**25), max_value=10**25).map(str)
values = st.one_of(
    anything,
    numbers,
    st.sampled_from(["", "\x00", "a\x00b", "%00", "relieve", "ssrs", "open", "any", "1"]),
    st.sampled_from(["9223372036854775807", "1e999", "-1", "NaN", "2026-02-30", "0001-01-01"]),
)


def query(*names: str) -> st.SearchStrategy[dict[str, str]]:
    return st.fixed_dictionaries({}, optional={name: values for name in names})


@dataclass
class Site:
    url: str
    signed_in: httpx.Client
    token: str


def csrf(page: httpx.Response) -> str:
    found = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
    assert found is not None
    return found.group(1)


@pytest.fixture
def site(sekmet: SekmetServer, helpers: Helpers, database_url: str) -> Iterator[Site]:
    migrate(database_url)
    store = Store(database_url)
    try:
        WorklistStore(store.engine).save_user(
            "fuzz", Access.of(["coordinator", "admin"]), hash_password(PASSWORD)
        )
        for number, verdict in enumerate(("candidate", "potential-candidate", "ineligible")):
            line = {
                "patient": f"Patient/p{number}",
                "trial": "relieve",
                "as_of": "2026-06-15",
                "verdict": verdict,
                "criteria": {},
            }
            store.upsert_candidate("relieve", line, "2026-06-15")
    finally:
        store.close()
    port = free_port()
    settings_ = service_settings(sekmet, helpers, database_url, port).model_copy(
        # The fuzzed sign-ins must not hold up the signed-in client's address for long.
        update={"ui_mode": "local", "sign_in_longest_wait_seconds": 1.0}
    )
    with running_service(settings_, port) as running:
        client = httpx.Client(base_url=running.url, timeout=120)
        try:
            signed = client.post(
                "/ui/login",
                data={
                    "username": "fuzz",
                    "password": PASSWORD,
                    "csrf_token": csrf(client.get("/ui/login")),
                },
            )
            assert signed.status_code == 303, signed.text
            yield Site(running.url, client, csrf(client.get("/ui/")))
        finally:
            client.close()


def no_5xx(answer: httpx.Response) -> None:
    assert answer.status_code < 500, (answer.request.method, answer.request.url, answer.text[:300])


def test_every_ui_route_with_generated_queries_and_forms_answers_no_5xx(site: Site) -> None:
    client = site.signed_in

    @FUZZ
    @given(
        params=query(
            "trial",
            "status",
            "since",
            "changed",
            "sort",
            "page",
            "dir",
            "size",
            "show",
            "whose",
            "due",
            "review",
        )
    )
    def worklist(params: dict[str, str]) -> None:
        no_5xx(client.get("/ui/worklist", params=params))

    @FUZZ
    @given(
        patient=st.one_of(anything.filter(bool), st.sampled_from(["p0", "p1"])),
        params=query("trial"),
    )
    def patient_page(patient: str, params: dict[str, str]) -> None:
        no_5xx(client.get(f"/ui/patients/{quote(patient, safe='')}", params=params))

    @FUZZ
    @given(
        patient=st.sampled_from(["p0", "p1", "nobody"]),
        form=st.fixed_dictionaries(
            {},
            optional={
                "trial": st.one_of(st.just("relieve"), values),
                "status": st.one_of(st.sampled_from(["eligible", "ineligible"]), values),
                "reason": values,
                "note": values,
                "expected_version": values,
            },
        ),
        as_file=st.booleans(),
    )
    def decision(patient: str, form: dict[str, str], as_file: bool) -> None:
        data = {"csrf_token": site.token, **form}
        if as_file and form:
            name = next(iter(form))
            data.pop(name)
            answer = client.post(
                f"/ui/patients/{patient}/decision",
                data=data,
                files={name: ("x.txt", b"\x00\xff not text")},
            )
        else:
            answer = client.post(f"/ui/patients/{patient}/decision", data=data)
        no_5xx(answer)

    @FUZZ
    @given(
        params=query("next", "code", "state", "error"),
        path=st.sampled_from(
            [
                "/ui/",
                "/ui/login",
                "/ui/login/oidc",
                "/ui/auth/callback",
                "/ui/signed-out",
                "/ui/feasibility",
                "/ui/feasibility.csv",
                "/ui/feasibility/MeasureReport.json",
            ]
        ),
    )
    def pages(params: dict[str, str], path: str) -> None:
        no_5xx(client.get(path, params=params))

    @FUZZ
    @given(params=query("user", "patient", "action", "page"))
    def audit(params: dict[str, str]) -> None:
        no_5xx(client.get("/ui/audit", params=params))

    @FUZZ
    @given(
        trial=st.one_of(st.just("relieve"), anything.filter(bool)),
        step=st.one_of(st.sampled_from(["alive", "candidates"]), anything.filter(bool)),
        params=query("page"),
    )
    def excluded(trial: str, step: str, params: dict[str, str]) -> None:
        path = f"/ui/overview/{quote(trial, safe='')}/excluded/{quote(step, safe='')}"
        no_5xx(client.get(path, params=params))

    @FUZZ
    @given(
        path=st.sampled_from(["note", "follow-up", "review"]),
        patient=st.sampled_from(["p0", "p1", "nobody"]),
        form=st.fixed_dictionaries(
            {},
            optional={
                "trial": st.one_of(st.just("relieve"), values),
                "note": values,
                "assignee": st.one_of(st.just("fuzzer"), values),
                "follow_up_on": values,
                "reason": st.one_of(st.just("Clinician judgement"), values),
                "withdraw": values,
            },
        ),
    )
    def follow_up(path: str, patient: str, form: dict[str, str]) -> None:
        data = {"csrf_token": site.token, **form}
        no_5xx(client.post(f"/ui/patients/{patient}/{path}", data=data))

    @FUZZ
    @given(
        rows=st.lists(st.one_of(st.sampled_from(["1:candidate", "2:on-study"]), values)),
        form=st.fixed_dictionaries(
            {},
            optional={
                "status": st.one_of(st.sampled_from(["eligible", "not-registered"]), values),
                "reason-not-registered": values,
                "note": values,
                "shown_at": st.one_of(st.just("2026-01-01T00:00:00+05:00"), values),
                "query": values,
            },
        ),
    )
    def bulk(rows: list[str], form: dict[str, str]) -> None:
        data: dict[str, Any] = {"csrf_token": site.token, **form, "row": rows}
        no_5xx(client.post("/ui/worklist/bulk", data=data))

    worklist()
    patient_page()
    decision()
    follow_up()
    bulk()
    pages()
    audit()
    excluded()


def test_anonymous_sign_in_and_out_with_generated_forms_answer_no_5xx(site: Site) -> None:
    with httpx.Client(base_url=site.url, timeout=120) as anonymous:
        token = csrf(anonymous.get("/ui/login"))

        @FUZZ
        @given(
            form=st.fixed_dictionaries(
                {}, optional={"username": values, "password": values, "csrf_token": values}
            ),
            with_token=st.booleans(),
            path=st.sampled_from(["/ui/login", "/ui/logout"]),
        )
        def post(form: dict[str, Any], with_token: bool, path: str) -> None:
            data = {**form, "csrf_token": token} if with_token else form
            no_5xx(anonymous.post(path, data=data))

        post()
