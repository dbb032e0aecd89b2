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
    address: str | None = None  # the loopback address it connects from (127.0.0.x)
    http: httpx.Client = field(init=False)

    def __post_init__(self) -> None:
        transport = httpx.HTTPTransport(local_address=self.address) if self.address else None
        self.http = httpx.Client(
            base_url=self.url, follow_redirects=False, timeout=30, transport=transport
        )

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


def test_password_guessing_is_answered_429_per_name(local_site: LocalSite) -> None:
    """N3: 60 wrong passwords got 60 x 401, then the right one worked. Now the 11th try of a
    name within 15 minutes waits (429 with Retry-After, answered after a pause), each further
    failure makes the next wait longer, and the right password is refused while it lasts."""
    added = prescreen(
        local_site.database, "users", "add", "lou", "--role", "viewer", stdin=PASSWORD
    )
    assert added.returncode == 0, added.stderr
    guesser = Browser(local_site.url, address="127.0.0.2")
    answers = [guesser.sign_in("lou", f"guess-{n}") for n in range(20)]
    codes = [answer.status_code for answer in answers]
    assert codes[:10] == [401] * 10
    assert codes[10] == 429 and set(codes[10:]) <= {401, 429}
    refused = answers[10]
    assert 1 <= int(refused.headers["retry-after"]) <= 60
    assert "Too many failed sign-ins" in refused.text
    # After 20 tries the wait has grown: the right password, from another address and
    # however capitalised, is refused too.
    owner = Browser(local_site.url, address="127.0.0.3")
    assert owner.sign_in("LOU", PASSWORD).status_code == 429


def test_password_guessing_is_answered_429_per_address(local_site: LocalSite) -> None:
    sprayer = Browser(local_site.url, address="127.0.0.4")
    codes = [sprayer.sign_in(f"name-{n}", "password-1").status_code for n in range(10)]
    assert codes == [401] * 10
    refused = sprayer.sign_in("name-10", "password-1")
    assert refused.status_code == 429 and "retry-after" in refused.headers
    # Another address is not held up by this one.
    other = Browser(local_site.url, address="127.0.0.5").sign_in("name-10", "password-1")
    assert other.status_code == 401


def test_people_are_linked_to_identity_provider_accounts_from_the_command_line(
    local_site: LocalSite,
) -> None:
    issuer = "https://idp.hospital.example"
    linked = prescreen(
        local_site.database,
        "users",
        "add",
        "rae",
        "--role",
        "coordinator",
        "--role",
        "admin",
        "--oidc-issuer",
        issuer,
        "--oidc-subject",
        "rae-sub",
    )
    assert linked.returncode == 0, linked.stderr  # no password asked: the provider signs in
    assert "Saved rae: coordinator, admin (linked" in linked.stdout
    unlinked = prescreen(
        local_site.database, "users", "add", "old", "--role", "viewer", "--no-password"
    )
    assert unlinked.returncode == 0, unlinked.stderr
    listed = prescreen(local_site.database, "users", "list").stdout
    assert re.search(r"rae\s.*coordinator,admin\s.*identity provider: rae-sub", listed)
    assert re.search(r"old\s.*viewer\s.*not linked", listed)
    link = ["users", "link", "old", "--oidc-issuer", issuer, "--oidc-subject"]
    done = prescreen(local_site.database, *link, "old-sub")
    assert done.returncode == 0 and "Linked old" in done.stdout
    # One account, one person: rae's account cannot be linked to old as well.
    taken = prescreen(local_site.database, *link, "rae-sub")
    assert taken.returncode == 2 and "rae's" in taken.stderr
    nobody = prescreen(
        local_site.database,
        "users",
        "link",
        "nobody",
        "--oidc-issuer",
        issuer,
        "--oidc-subject",
        "x",
    )
    assert nobody.returncode == 2 and "no user named" in nobody.stderr
    half = prescreen(
        local_site.database, "users", "add", "x", "--role", "viewer", "--oidc-issuer", issuer
    )
    assert half.returncode == 2 and "together" in half.stderr


def test_the_research_role_sees_counts_not_patients(local_site: LocalSite) -> None:
    added = prescreen(
        local_site.database, "users", "add", "res", "--role", "research", stdin=PASSWORD
    )
    assert added.returncode == 0, added.stderr
    browser = Browser(local_site.url, address="127.0.0.6")
    assert browser.sign_in("res", PASSWORD).status_code == 303
    overview = browser.get("/ui/")
    assert overview.status_code == 200 and "res · research" in overview.text
    assert 'href="/ui/worklist' not in overview.text  # no link to lists of patients
    for path in ("/ui/worklist", "/ui/patients/p1?trial=relieve"):
        refused = browser.get(path)
        assert refused.status_code == 403 and "counts only" in refused.text
        assert "Patient/p1" not in refused.text
