"""CDS Hooks patient-view under load: ``python -m benchmarks.cds_hooks [--calls 240] [--runs 3]``.

What a clinician waits for when a chart opens. Started here, on 127.0.0.1: sekmet-fhir holding
the sample hospital (300 patients, 7.8k resources), a host serving the EHR's JWKS, and
``prescreen serve`` (a whole process, SQLite state unless ``--database-url``, both trials).
Each call carries a fresh RS384 JWT (its own jti, signed before the timed section so that the
client's signing does not compete with the service for the two cores).

Four configurations, 1 and 8 concurrent clients, each with the full prefetch (every template
run against the FHIR server beforehand, as an EHR does) and without (``fhirServer`` only: the
service fetches). The runs of the configurations are interleaved (run 1 of each, then run 2 of
each…), so a busy moment of the shared machine does not fall on one configuration only. A row
gives the median over the runs of each percentile, with its range, the calls per second, the
service's CPU per call, and the load average before and after each run.

``--serve-from DIR`` runs the service from another checkout (before/after comparisons).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import jwt
import orjson
from cryptography.hazmat.primitives.asymmetric import rsa

from benchmarks.common import ROOT, write_outputs

SAMPLE = ROOT / "samples" / "hospital"
SERVICE = "prescreen-patient-view"
ISSUER = "https://ehr.example"
PATIENTS = 30
CLIENTS = (1, 8)
WARM_UP_CALLS = 16
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass
class Config:
    clients: int
    prefetch: bool

    @property
    def label(self) -> str:
        return f"{self.clients} client{'s' if self.clients > 1 else ''}, " + (
            "prefetch" if self.prefetch else "no prefetch"
        )


# --- the EHR's side: keys, JWKS host, tokens, bodies -----------------------------------------


class Ehr:
    def __init__(self) -> None:
        self.private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        public = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(self.private.public_key()))
        self.jwks = {"keys": [{**public, "kid": "bench", "alg": "RS384", "use": "sig"}]}

    def tokens(self, audience: str, count: int) -> list[str]:
        """Fresh JWTs, one per call (CDS Hooks: iss, aud, exp, iat, jti; RS384)."""
        now = int(time.time())
        return [
            jwt.encode(
                {
                    "iss": ISSUER,
                    "aud": audience,
                    "iat": now,
                    "exp": now + 240,
                    "jti": str(uuid.uuid4()),
                },
                self.private,
                algorithm="RS384",
                headers={"kid": "bench", "typ": "JWT"},
            )
            for _ in range(count)
        ]


@contextmanager
def jwks_host(jwks: dict[str, Any]) -> Iterator[str]:
    payload = json.dumps(jwks).encode()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *_args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/jwks.json"
    finally:
        server.shutdown()
        server.server_close()


def sample_patients(count: int) -> list[str]:
    """Every tenth patient of the sample hospital (its cohort and the rest, as they come)."""
    ids = sorted(
        orjson.loads(line)["id"]
        for line in (SAMPLE / "Patient.ndjson").read_bytes().splitlines()
        if line.strip()
    )
    step = max(1, len(ids) // count)
    return ids[::step][:count]


def prefetch_of(fhir_base: str, templates: dict[str, str], patient: str) -> dict[str, Any]:
    """What an EHR sends: every template run against the FHIR server, all its pages in one
    Bundle (a first page alone would tell the service to fetch the rest), an empty answer as
    null."""
    prefetch: dict[str, Any] = {}
    with httpx.Client(timeout=120) as client:
        for key, template in templates.items():
            answer = client.get(f"{fhir_base}/{template.replace('{{context.patientId}}', patient)}")
            value = answer.json() if answer.status_code == 200 else None
            if value and value.get("resourceType") == "Bundle":
                entries = list(value.get("entry") or [])
                page = value
                while link := next(
                    (k["url"] for k in page.get("link", []) if k.get("relation") == "next"), None
                ):
                    page = client.get(link).json()
                    entries += page.get("entry") or []
                value = {**value, "entry": entries, "total": len(entries)}
                value.pop("link", None)
                if not entries:
                    value = None
            prefetch[key] = value
    return prefetch


def hook_body(patient: str, fhir_base: str, prefetch: dict[str, Any] | None) -> bytes:
    body: dict[str, Any] = {
        "hookInstance": str(uuid.uuid4()),
        "hook": "patient-view",
        "fhirServer": fhir_base,
        "context": {"userId": "Practitioner/bench", "patientId": patient},
    }
    if prefetch is not None:
        body["prefetch"] = prefetch
    return orjson.dumps(body)


# --- the service -----------------------------------------------------------------------------


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def prescreen_serve(
    fhir_base: str, jwks_url: str, database_url: str, work: Path, serve_from: Path | None
) -> Iterator[tuple[str, int]]:
    """``prescreen serve`` as its own process; (its URL, its pid)."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {
        **os.environ,
        "PRESCREEN_DATABASE_URL": database_url,
        "PRESCREEN_PORT": str(port),
        "PRESCREEN_PUBLIC_URL": url,
        "PRESCREEN_FHIR_URL": fhir_base,
        "PRESCREEN_TRIALS": "relieve,ssrs",
        "PRESCREEN_CDS_ISSUERS": json.dumps({ISSUER: jwks_url}),
        "PRESCREEN_LOG_LEVEL": "WARNING",
    }
    if serve_from is not None:
        env["PYTHONPATH"] = str(serve_from)
    log = work / "serve.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [str(Path(sys.executable).parent / "prescreen"), "serve"],
            env=env,
            cwd=serve_from or ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                if httpx.get(f"{url}/healthz", timeout=30).is_success:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or process.poll() is not None:
                raise RuntimeError(f"prescreen serve did not start:\n{log.read_text()[-3000:]}")
            time.sleep(0.5)
        yield url, process.pid
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime + stime


# --- one run ---------------------------------------------------------------------------------


async def _calls(
    endpoint: str, bodies: list[bytes], tokens: list[str], clients: int
) -> tuple[list[float], list[int], float]:
    """Every body once, ``clients`` at a time, each client on its own kept-alive connection."""
    latencies: list[float] = []
    statuses: list[int] = []
    queue: asyncio.Queue[tuple[bytes, str]] = asyncio.Queue()
    for pair in zip(bodies, tokens, strict=True):
        queue.put_nowait(pair)

    async def client(http: httpx.AsyncClient) -> None:
        while not queue.empty():
            body, token = queue.get_nowait()
            headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
            started = time.perf_counter()
            answer = await http.post(endpoint, content=body, headers=headers)
            latencies.append(time.perf_counter() - started)
            statuses.append(answer.status_code)

    # Every client is built before the first call: building one (an SSL context) blocks this
    # process's event loop for milliseconds, which the calls already in flight would count.
    https = [httpx.AsyncClient(timeout=120) for _ in range(clients)]
    try:
        started = time.perf_counter()
        await asyncio.gather(*(client(http) for http in https))
        return latencies, statuses, time.perf_counter() - started
    finally:
        for http in https:
            await http.aclose()


def one_run(
    endpoint: str, ehr: Ehr, bodies: list[bytes], clients: int, pid: int
) -> dict[str, float]:
    tokens = ehr.tokens(endpoint, len(bodies))
    load_before = os.getloadavg()[0]
    cpu_before = cpu_seconds(pid)
    latencies, statuses, wall = asyncio.run(_calls(endpoint, bodies, tokens, clients))
    cpu = cpu_seconds(pid) - cpu_before
    failed = sum(1 for status in statuses if status != 200)
    if failed:
        raise RuntimeError(f"{failed} of {len(statuses)} calls failed: {sorted(set(statuses))}")
    cuts = statistics.quantiles([s * 1000 for s in latencies], n=100, method="inclusive")
    return {
        "p50_ms": cuts[49],
        "p90_ms": cuts[89],
        "p99_ms": cuts[98],
        "max_ms": max(latencies) * 1000,
        "calls_per_s": len(latencies) / wall,
        "service_cpu_ms_per_call": cpu * 1000 / len(latencies),
        "load_before": load_before,
        "load_after": os.getloadavg()[0],
    }


def _median_range(values: list[float]) -> tuple[float, str]:
    return float(statistics.median(values)), f"{min(values):.3g}–{max(values):.3g}"


def summarise(config: Config, runs: list[dict[str, float]], calls: int) -> dict[str, Any]:
    row: dict[str, Any] = {
        "configuration": config.label,
        "clients": config.clients,
        "prefetch": config.prefetch,
        "calls_per_run": calls,
        "runs": len(runs),
    }
    for key in ("p50_ms", "p90_ms", "p99_ms", "max_ms", "calls_per_s", "service_cpu_ms_per_call"):
        row[key], row[f"{key}_range"] = _median_range([run[key] for run in runs])
    row["load"] = " ".join(f"{r['load_before']:.2f}→{r['load_after']:.2f}" for r in runs)
    row["runs_p99_ms"] = " ".join(f"{r['p99_ms']:.1f}" for r in runs)
    return row


# --- the whole measurement -------------------------------------------------------------------


def measure(
    calls: int = 240,
    runs: int = 3,
    database_url: str | None = None,
    serve_from: Path | None = None,
    configs: list[Config] | None = None,
) -> list[dict[str, Any]]:
    from service.fhir.client import FhirClient
    from service.fhir.loader import folder_readers, load_readers
    from tests.integration.servers import SekmetServer

    configs = configs or [Config(c, p) for p in (True, False) for c in CLIENTS]
    ehr = Ehr()
    patients = sample_patients(PATIENTS)
    results: dict[str, list[dict[str, float]]] = {c.label: [] for c in configs}
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        server = SekmetServer(work / "sekmet").start()
        try:

            async def load() -> None:
                async with FhirClient(server.base_url, timeout=300) as client:
                    await load_readers(client, folder_readers(SAMPLE), per_bundle=500)

            asyncio.run(load())
            with (
                jwks_host(ehr.jwks) as jwks_url,
                prescreen_serve(
                    server.base_url,
                    jwks_url,
                    database_url or f"sqlite:///{work / 'state.db'}",
                    work,
                    serve_from,
                ) as (url, pid),
            ):
                endpoint = f"{url}/cds-services/{SERVICE}"
                discovery = httpx.get(f"{url}/cds-services", timeout=60).json()
                templates = dict(discovery["services"][0]["prefetch"])
                prefetches = {p: prefetch_of(server.base_url, templates, p) for p in patients}
                bodies = {
                    True: [hook_body(p, server.base_url, prefetches[p]) for p in patients],
                    False: [hook_body(p, server.base_url, None) for p in patients],
                }
                for prefetch in (True, False):  # warm-up: keys fetched, programs compiled
                    warm = (bodies[prefetch] * WARM_UP_CALLS)[:WARM_UP_CALLS]
                    one_run(endpoint, ehr, warm, 4, pid)
                for run in range(runs):
                    for config in configs:
                        chosen = (bodies[config.prefetch] * (calls // len(patients) + 1))[:calls]
                        result = one_run(endpoint, ehr, chosen, config.clients, pid)
                        results[config.label].append(result)
                        print(
                            f"  run {run + 1}, {config.label}: p50 {result['p50_ms']:.1f} ms, "
                            f"p99 {result['p99_ms']:.1f} ms, max {result['max_ms']:.0f} ms, "
                            f"{result['calls_per_s']:.0f} calls/s, load "
                            f"{result['load_before']:.2f}→{result['load_after']:.2f}",
                            flush=True,
                        )
        finally:
            server.stop()
    return [summarise(c, results[c.label], calls) for c in configs]


COLUMNS = [
    "configuration",
    "calls_per_run",
    "runs",
    "p50_ms",
    "p50_ms_range",
    "p99_ms",
    "p99_ms_range",
    "max_ms",
    "max_ms_range",
    "calls_per_s",
    "calls_per_s_range",
    "service_cpu_ms_per_call",
    "load",
]


def report(rows: list[dict[str, Any]], name: str = "cds_hooks") -> None:
    notes = [
        "Targets: p99 <= 100 ms with prefetch at 8 concurrent clients; p50 <= 40 ms without "
        "prefetch.",
        "patient-view, both trials (RELIEVE and SSRS), sekmet-fhir holding the sample hospital "
        f"on 127.0.0.1, {PATIENTS} of its patients in turn; a fresh RS384 JWT per call; "
        "prescreen serve as its own process on the same two-core machine as the clients.",
        "Each figure is the median over the runs, with its range; runs of the configurations "
        "interleaved. service_cpu_ms_per_call: the service process's CPU time (user + system) "
        "over the run, per call. load: the 1-minute load average before→after each run.",
    ]

    def plot(axes: Any) -> None:
        labels = [row["configuration"].replace(", ", "\n") for row in rows]
        positions = range(len(rows))
        axes.bar([p - 0.2 for p in positions], [r["p50_ms"] for r in rows], 0.4, label="p50")
        axes.bar([p + 0.2 for p in positions], [r["p99_ms"] for r in rows], 0.4, label="p99")
        axes.set_xticks(list(positions), labels)
        axes.set_ylabel("ms (median of runs)")
        axes.set_title("CDS Hooks patient-view latency")
        axes.legend()

    write_outputs(name, rows, COLUMNS, notes, plot)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=240, help="calls per run and configuration")
    parser.add_argument("--runs", type=int, default=3, help="runs of each configuration")
    parser.add_argument("--database-url", help="the service's database (default: SQLite)")
    parser.add_argument("--serve-from", type=Path, help="run the service from this checkout")
    parser.add_argument("--name", default="cds_hooks", help="results/<name>.json, .md, .png")
    parser.add_argument(
        "--configurations",
        default="1p,8p,1n,8n",
        help="clients and p (prefetch) or n (none), comma-separated",
    )
    args = parser.parse_args()
    configs = [Config(int(c[:-1]), c.endswith("p")) for c in args.configurations.split(",")]
    rows = measure(args.calls, args.runs, args.database_url, args.serve_from, configs)
    report(rows, args.name)
    for row in rows:
        print(json.dumps(row))


if __name__ == "__main__":
    main()
