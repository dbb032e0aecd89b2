"""The local-users mode (no identity provider), over real HTTP: `prescreen users add`, signing
in with a password, the cookie's flags behind TLS, CSRF, caching, roles, and ending sessions."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

from service.settings import Settings
from service.state.store import Store, migrate
from tests.integration.servers import free_port
from tests.ui.harness import running_service

pytestmark = pytest.mark.integration
PASSWORD = "ann-password-1"


def prescreen(database: str, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "service", *args],
        input=stdin,
        capture_output=True,
        text=True,
        env={"PRESCREEN_DATABASE_URL": database, "PATH": "/usr/bin:/bin"},
        check=False,
        timeout=120,
    )


@dataclass
class Browser:
    """A client that keeps the session cookie itself: the cookie is Secure (the public URL is
    https), and a cookie jar would rightly not send it over the test's plain HTTP."""

    url: str
    cookie: str = ""
    http: httpx.Client = field(init=False)

    def __post_init__(self) -> None:
        self.http = httpx.Client(base_url=self.url, follow_redirects=False, timeout=30)

    def _keep(self, response: httpx.Response) -> httpx.Response:
        for header in response.headers.get_list("set-cookie"):
            if header.startswith("prescreen_ui="):
                self.cookie = header.split(";")[0]
        return response

    def get(self, path: str) -> httpx.Response:
        return self._keep(self.http.get(path, headers={"Cookie": self.cookie}))

    def post(self, path: str, data: dict[str, str]) -> httpx.Response:
        return self._keep(self.http.post(path, data=data, headers={"Cookie": self.cookie}))

    def token(self, path: str = "/ui/login") -> str:
        found = re.search(r'name="csrf_token" value="([^"]+)"', self.get(path).text)
        assert found is not None
        return found.group(1)

    def sign_in(self, name: str, password: str) -> httpx.Response:
        return self.post(
            "/ui/login", {"username": name, "password": password, "csrf_token": self.token()}
        )


@dataclass
class LocalSite:
    url: str
    database: str


@pytest.fixture(scope="module")
def local_site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalSite]:
    folder = tmp_path_factory.mktemp("ui-local")
    database = f"sqlite:///{folder / 'state.db'}"
    migrate(database)
    store = Store(database)
    store.upsert_candidate(
        "relieve",
        {
            "patient": "Patient/p1",
            "trial": "relieve",
            "as_of": "2026-06-15",
            "verdict": "potential-candidate",
            "criteria": {
                "survival": {
                    "kind": "exclusion",
                    "result": "unknown",
                    "evidence": ["Observation/s1"],
                    "reason": "no survival estimate",
                }
            },
        },
        "2026-06-15",
    )
    store.close()
    port = free_port()
    settings = Settings(
        database_url=database,
        fhir_url=f"http://127.0.0.1:{free_port()}/fhir",  # nothing listens: the server is down
        fhir_retries=1,
        fhir_timeout=2,
        public_url="https://prescreen.hospital.example",
        ui_mode="local",
    )
    with running_service(settings, port) as url:
        yield LocalSite(url, database)


def test_users_are_added_from_the_command_line(local_site: LocalSite) -> None:
    added = prescreen(
        local_site.database,
        "users",
        "add",
        "ann",
        "--role",
        "coordinator",
        "--trials",
        "relieve",
        stdin=f"{PASSWORD}\n",
    )
    assert added.returncode == 0, added.stderr
    assert "Saved ann: coordinator for relieve" in added.stdout
    viewer = prescreen(
        local_site.database, "users", "add", "vic", "--role", "viewer", stdin=f"{PASSWORD}\n"
    )
    assert viewer.returncode == 0, viewer.stderr
    listed = prescreen(local_site.database, "users", "list")
    assert re.search(r"ann\s.*coordinator\s.*relieve\s.*password", listed.stdout)
    wrong_trial = prescreen(
        local_site.database,
        "users",
        "add",
        "x",
        "--role",
        "coordinator",
        "--trials",
        "nope",
        stdin=f"{PASSWORD}\n",
    )
    short = prescreen(local_site.database, "users", "add", "x", "--role", "viewer", stdin="short\n")
    assert (wrong_trial.returncode, short.returncode) == (2, 2)
    assert "unknown trial" in wrong_trial.stderr and "at least" in short.stderr
    assert PASSWORD not in added.stdout + added.stderr + listed.stdout


def test_signing_in_with_a_password(local_site: LocalSite) -> None:
    browser = Browser(local_site.url)
    first = browser.get("/ui/worklist?trial=relieve")
    assert first.status_code == 303 and first.headers["location"] == "/ui/login"
    login = browser.get("/ui/login")
    assert login.headers["cache-control"] == "no-store"
    assert "default-src 'self'" in login.headers["content-security-policy"]
    # The login form is a form too: no token, no sign-in.
    refused = browser.post("/ui/login", {"username": "ann", "password": PASSWORD})
    assert refused.status_code == 403
    wrong = browser.sign_in("ann", "not-the-password")
    unknown = browser.sign_in("nobody", PASSWORD)
    assert wrong.status_code == unknown.status_code == 401
    assert "Unknown name or wrong password." in wrong.text and "Unknown name" in unknown.text
    signed_in = browser.sign_in("ann", PASSWORD)
    assert signed_in.status_code == 303
    assert signed_in.headers["location"] == "/ui/worklist?trial=relieve"  # where it started
    cookie = signed_in.headers["set-cookie"].lower()
    for flag in ("httponly", "secure", "samesite=lax", "path=/ui"):
        assert flag in cookie, flag
    page = browser.get("/ui/worklist?trial=relieve")
    assert page.status_code == 200 and "Patient/p1" in page.text
    assert page.headers["cache-control"] == "no-store"
    static = browser.get("/ui/static/htmx.min.js")
    assert static.status_code == 200 and static.headers.get("cache-control") != "no-store"


def test_results_show_while_the_fhir_server_is_down(local_site: LocalSite) -> None:
    browser = Browser(local_site.url)
    assert browser.sign_in("ann", PASSWORD).status_code == 303
    page = browser.get("/ui/patients/p1?trial=relieve")
    assert page.status_code == 200
    assert "no survival estimate" in page.text and "Observation/s1" in page.text
    assert "the FHIR server could not be reached" in page.text
    assert "Record decision" not in page.text  # no ResearchSubject to write to, nothing to offer
    assert browser.get("/ui/patients/unknown-patient").status_code == 404


def test_a_viewer_is_refused_a_decision(local_site: LocalSite) -> None:
    browser = Browser(local_site.url)
    assert browser.sign_in("vic", PASSWORD).status_code == 303
    token = browser.token("/ui/")
    answer = browser.post(
        "/ui/patients/p1/decision", {"trial": "relieve", "status": "eligible", "csrf_token": token}
    )
    assert answer.status_code == 403 and "Your role does not allow" in answer.text


def test_removing_a_person_ends_their_sessions(local_site: LocalSite) -> None:
    browser = Browser(local_site.url)
    assert browser.sign_in("ann", PASSWORD).status_code == 303
    assert browser.get("/ui/").status_code == 200
    removed = prescreen(local_site.database, "users", "remove", "ann")
    assert removed.returncode == 0, removed.stderr
    assert browser.get("/ui/").status_code == 303
    assert browser.sign_in("ann", PASSWORD).status_code == 401


def test_signing_out(local_site: LocalSite, tmp_path: Path) -> None:
    browser = Browser(local_site.url)
    assert browser.sign_in("vic", PASSWORD).status_code == 303
    kept = browser.cookie
    out = browser.post("/ui/logout", {"csrf_token": browser.token("/ui/")})
    assert out.status_code == 303 and out.headers["location"] == "/ui/signed-out"
    browser.cookie = kept  # the cookie from before signing out opens nothing any more
    assert browser.get("/ui/").status_code == 303


def test_an_anonymous_decision_gets_back_only_what_it_sent(local_site: LocalSite) -> None:
    """No session: nothing about the patient is shown, and without this browser's sign-in and
    token nothing is kept; what was sent comes back, to be copied."""
    browser = Browser(local_site.url)
    answer = browser.post(
        "/ui/patients/p1/decision",
        {"trial": "relieve", "status": "eligible", "note": "<b>typed</b>", "csrf_token": "x"},
    )
    assert answer.status_code == 401
    assert "your session had ended" in answer.text and "copy the note" in answer.text
    assert "&lt;b&gt;typed&lt;/b&gt;" in answer.text  # the note, escaped
    assert "no survival estimate" not in answer.text and "Observation/s1" not in answer.text
    engine = sa.create_engine(local_site.database)
    try:
        with engine.connect() as connection:
            kept = connection.execute(sa.text("SELECT count(*) FROM decision_drafts")).scalar()
    finally:
        engine.dispose()
    assert kept == 0
    # A part of a page asked by htmx without a session: the whole page goes to the sign-in.
    part = browser.http.get("/ui/worklist", headers={"HX-Request": "true"})
    assert part.status_code == 204 and part.headers["hx-redirect"] == "/ui/login"


def test_a_decision_sent_after_the_sign_in_expired_is_kept_for_its_author(
    local_site: LocalSite,
) -> None:
    added = prescreen(
        local_site.database, "users", "add", "eve", "--role", "coordinator", stdin=f"{PASSWORD}\n"
    )
    assert added.returncode == 0, added.stderr
    browser = Browser(local_site.url)
    assert browser.sign_in("eve", PASSWORD).status_code == 303
    token = browser.token("/ui/worklist")
    engine = sa.create_engine(local_site.database)
    try:
        with engine.begin() as connection:  # the sign-in expires
            connection.execute(
                sa.text("UPDATE web_sessions SET expires_at = :past WHERE user_name = 'eve'"),
                {"past": "2000-01-01 00:00:00"},
            )
        sent = {"trial": "relieve", "status": "eligible", "note": "seen in clinic"}
        answer = browser.post("/ui/patients/p1/decision", sent | {"csrf_token": token})
        assert answer.status_code == 401
        assert "What you chose and typed is kept" in answer.text and "seen in clinic" in answer.text
        with engine.connect() as connection:
            kept = connection.execute(sa.text("SELECT author, note FROM decision_drafts")).all()
        assert [tuple(row) for row in kept] == [("eve", "seen in clinic")]
    finally:
        engine.dispose()
    # Signed in again, the patient page offers it back (the FHIR server is down here: the
    # decision cannot be sent now, but it is not lost).
    assert browser.sign_in("eve", PASSWORD).status_code == 303
    page = browser.get("/ui/patients/p1?trial=relieve")
    assert "Not saved yet" in page.text and "seen in clinic" in page.text
