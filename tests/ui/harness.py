"""Real parts for the web worklist: an OpenID Connect provider, the service under uvicorn,
Debian's Chromium, and the sample hospital screened on a real FHIR server (for the screenshots
and ``make demo-ui``)."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import uvicorn
import werkzeug.serving
from oidc_provider_mock import User
from oidc_provider_mock import app as oidc_app
from sqlalchemy import create_engine

from service.fhir.client import FhirClient
from service.fhir.loader import load_resources, read_folder
from service.roles import Access
from service.settings import Settings
from service.state.store import migrate
from service.state.worklist import WorklistStore
from service.ui.passwords import hash_password
from service.web import create_app
from tests.conftest import SAMPLE_DIR
from tests.integration.servers import SekmetServer, free_port

CHROMIUM = Path("/usr/bin/chromium")
API_KEY = "ui-test-key"
SAMPLE_AS_OF = "2026-06-15"
DEMO_USER, DEMO_PASSWORD = "demo", "demo-password"


def wait_for(check: Any, seconds: float = 120.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"{what} not reached in {seconds:.0f}s")


@contextmanager
def oidc_provider(users: Sequence[User]) -> Iterator[str]:
    """oidc-provider-mock on 127.0.0.1 over plain HTTP; yields its issuer URL."""
    # authlib's provider side refuses plain HTTP unless told this is a test.
    previous = os.environ.get("AUTHLIB_INSECURE_TRANSPORT")
    os.environ["AUTHLIB_INSECURE_TRANSPORT"] = "1"
    server = werkzeug.serving.make_server(
        "127.0.0.1", free_port(), oidc_app(user_claims=users, require_nonce=True), threaded=True
    )
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1})
    thread.start()
    issuer = f"http://127.0.0.1:{server.server_port}"
    try:
        wait_for(
            lambda: httpx.get(f"{issuer}/.well-known/openid-configuration").status_code == 200,
            30,
            "the OIDC provider answering",
        )
        yield issuer
    finally:
        server.shutdown()
        thread.join(timeout=10)
        server.server_close()
        if previous is None:
            os.environ.pop("AUTHLIB_INSECURE_TRANSPORT", None)
        else:
            os.environ["AUTHLIB_INSECURE_TRANSPORT"] = previous


@contextmanager
def running_service(settings: Settings, port: int) -> Iterator[str]:
    """The whole service (API and /ui) under uvicorn in a thread; yields its base URL."""
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(settings),
            host="127.0.0.1",
            port=port,
            log_level="warning",
            access_log=False,
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        wait_for(lambda: server.started or not thread.is_alive(), 60, "the service starting")
        if not server.started:
            raise RuntimeError("the service did not start")
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=15)


def add_person(
    database_url: str,
    name: str,
    role: str,
    trials: Sequence[str] = (),
    password: str | None = None,
    identity: tuple[str, str] | None = None,
) -> None:
    """A person, as ``prescreen users add`` saves them (``role``: comma-separated roles;
    ``identity``: the identity-provider account, issuer and subject, linked to them)."""
    migrate(database_url)
    engine = create_engine(database_url)
    try:
        WorklistStore(engine).save_user(
            name,
            Access.of(role.split(","), trials),
            hash_password(password) if password else None,
            identity,
        )
    finally:
        engine.dispose()


def chromium_missing() -> str | None:
    """Why the browser tests cannot run here, or None. Playwright never downloads a browser:
    it drives Debian's Chromium (`apt-get install chromium`; .ci/run installs it)."""
    if CHROMIUM.exists() or shutil.which("chromium"):
        return None
    return "Debian's chromium is not installed (apt-get install -y chromium)"


def launch_chromium(playwright: Any) -> Any:
    path = str(CHROMIUM) if CHROMIUM.exists() else shutil.which("chromium")
    return playwright.chromium.launch(executable_path=path)


def run_api(url: str, trial: str, patients: Sequence[str] = ()) -> dict[str, Any]:
    """A population run through the API, waited for; returns its final state."""
    with httpx.Client(base_url=url, headers={"X-API-Key": API_KEY}, timeout=60) as client:
        body: dict[str, Any] = {"trial": trial, "as_of": SAMPLE_AS_OF, "write_back": True}
        if patients:
            body["patients"] = list(patients)
        started = client.post("/runs", json=body)
        started.raise_for_status()
        run_id = started.json()["id"]
        done: dict[str, Any] = wait_for(
            lambda: (
                (state := client.get(f"/runs/{run_id}").json())["status"] in ("done", "failed")
                and state
            ),
            600,
            f"the {trial} run finishing",
        )
    if done["status"] != "done":
        raise RuntimeError(f"the {trial} run failed: {done.get('error')}")
    return done


def api_keys() -> str:
    return json.dumps(
        {
            "ui-tests": {
                "key": API_KEY,
                "scopes": ["screen", "runs", "candidates", "decide", "audit"],
            }
        }
    )


@dataclass(frozen=True)
class SampleHospital:
    url: str
    fhir_url: str
    settings: Settings


@contextmanager
def sample_hospital(workdir: Path, port: int) -> Iterator[SampleHospital]:
    """The shipped sample hospital on sekmet-fhir, screened for every trial (with write-back) by
    the service in local-users mode, with the demo user signed up."""
    fhir = SekmetServer(workdir / "fhir").start()
    try:

        async def load() -> int:
            async with FhirClient(fhir.base_url, timeout=120) as client:
                return await load_resources(client, read_folder(SAMPLE_DIR), per_bundle=500)

        asyncio.run(load())
        database = f"sqlite:///{workdir / 'prescreen.db'}"
        add_person(database, DEMO_USER, "coordinator", password=DEMO_PASSWORD)
        settings = Settings(
            fhir_url=fhir.base_url,
            database_url=database,
            public_url=f"http://127.0.0.1:{port}",
            api_keys=api_keys(),
            ui_mode="local",
            port=port,
        )
        with running_service(settings, port) as url:
            for trial in ("relieve", "ssrs"):
                run_api(url, trial)
            yield SampleHospital(url, fhir.base_url, settings)
    finally:
        fhir.stop()


def main() -> None:
    """``make demo-ui``: the sample hospital in the web worklist until Ctrl-C."""
    import signal
    import tempfile

    def stop(_signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt

    # Ctrl-C and a plain `kill` both stop the FHIR server and the service on the way out.
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    port = int(os.environ.get("PRESCREEN_PORT", "8000"))
    try:
        with tempfile.TemporaryDirectory(prefix="prescreen-demo-ui-") as folder:
            print("Loading the sample hospital into a local FHIR server and screening it…")
            with sample_hospital(Path(folder), port) as hospital:
                print(
                    f"\nWeb worklist: {hospital.url}/ui/\n"
                    f"Sign in as {DEMO_USER} with the password {DEMO_PASSWORD}. "
                    "Ctrl-C stops it.",
                    flush=True,
                )
                while True:
                    time.sleep(1)
    except KeyboardInterrupt:
        print("\nStopped.")


if __name__ == "__main__":
    main()
