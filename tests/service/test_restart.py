"""A population run killed midway (SIGKILL) finishes after a restart: same results, no
duplicate writes on the FHIR server."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.integration.conftest import LoadedPatients, search_all
from tests.integration.servers import SekmetServer, free_port
from tests.integration.test_live import offline
from tests.service.conftest import API_KEY, wait_for

pytestmark = pytest.mark.integration


def start_service(env: dict[str, str], port: int, log: Path) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(
        [sys.executable, "-m", "service", "serve"],
        env={**os.environ, **env},
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return process
        except httpx.HTTPError:
            time.sleep(0.1)
    process.kill()
    raise RuntimeError(log.read_text()[-2000:])


def test_killed_run_resumes_without_duplicates(
    sekmet: SekmetServer, database_url: str, tmp_path: Path
) -> None:
    loaded = LoadedPatients(sekmet.base_url, f"k{os.getpid() % 1000}{int(time.time()) % 10000}x")
    expected = offline(loaded.write_ndjson(tmp_path / "ndjson"), tmp_path / "offline")
    port = free_port()
    env = {
        "PRESCREEN_FHIR_URL": sekmet.base_url,
        "PRESCREEN_DATABASE_URL": database_url,
        "PRESCREEN_PORT": str(port),
        "PRESCREEN_API_KEYS": json.dumps({"engine": {"key": API_KEY, "scopes": ["runs"]}}),
        "PRESCREEN_FHIR_PATIENTS_PER_REQUEST": "1",  # many small steps: room to be killed in
        # The killed process's claim on the run must expire before the restart takes it over.
        "PRESCREEN_LEASE_SECONDS": "6",
    }
    log = tmp_path / "service.log"
    process = start_service(env, port, log)
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", headers={"X-API-Key": API_KEY})
    run = client.post(
        "/runs",
        json={
            "trial": "relieve",
            "source": "fhir",
            "patients": loaded.patient_ids,
            "as_of": "2026-06-15",
        },
    ).json()

    def progressed() -> bool:
        state = client.get(f"/runs/{run['id']}").json()
        return 3 <= state["progress"]["done"] < state["progress"]["total"]

    wait_for(progressed, 180)
    process.send_signal(signal.SIGKILL)
    process.wait()
    interrupted = None

    process = start_service(env, port, log)
    try:
        interrupted = client.get(f"/runs/{run['id']}").json()
        final = wait_for(
            lambda: (lambda s: s if s["status"] == "done" else None)(
                client.get(f"/runs/{run['id']}").json()
            ),
            180,
        )
        results = client.get(f"/runs/{run['id']}/results", params={"limit": 1000}).json()[
            "verdicts"
        ]
    finally:
        process.terminate()
        process.wait(timeout=10)
    assert interrupted is not None and interrupted["progress"]["done"] < len(loaded.patient_ids)
    assert final["progress"] == {"done": len(loaded.patient_ids), "total": len(loaded.patient_ids)}
    assert {v["patient"]: v for v in results} == expected
    subjects = [
        s
        for s in search_all(
            sekmet.base_url,
            "ResearchSubject",
            {"_tag": "urn:prescreen:study|NCT06746103", "_count": "200"},
        )
        if s["individual"]["reference"].removeprefix("Patient/") in loaded.tests
    ]
    owners = [s["individual"]["reference"] for s in subjects]
    assert (
        len(owners)
        == len(set(owners))
        == sum(v["verdict"] != "ineligible" for v in expected.values())
    )
    provenance = search_all(sekmet.base_url, "Provenance", {"_count": "200"})
    ids = {s["id"] for s in subjects}
    written = [t for p in provenance for t in p["target"] if t["reference"].split("/")[-1] in ids]
    assert len(written) == len(subjects)  # each subject written once, with one Provenance
