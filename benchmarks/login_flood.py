"""The service under a flood of anonymous sign-in posts: ``python -m benchmarks.login_flood``.

Starts ``prescreen serve`` (SQLite, web worklist in the local-users mode, 300 candidates in the
worklist), measures ``GET /candidates`` (an API call on the database) alone, then while
``--posters`` clients post wrong passwords to ``/ui/login`` as fast as they are answered:

- ``limits off``: the sign-in limits set so high that every post is a password check (Argon2id,
  64 MiB): what the password pool alone does for the other requests;
- ``limits on``: the default limits (every poster comes from 127.0.0.1: after ten failures the
  address waits, and posts are answered 429 without a check).

The finding: 16 posters took ``/candidates`` from 0.054 s to 1.37 s and the service from 132 to
398 MB. Reported: latency (median, p95) of ``/candidates`` alone and during each flood, posts
answered per second and how, the service's peak RSS. Run it with PYTHONPATH pointing at another
checkout to measure that one (``--label`` names the rows).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx

from benchmarks.attack import free_port, rss_mb
from benchmarks.common import ROOT, write_outputs

KEY = "login-flood-benchmark-key"
CANDIDATES = 300


def seed_worklist(database: str) -> None:
    """Candidates for /candidates to read (the same rows for every code version)."""
    from service.state.store import Store, migrate

    migrate(database)
    store = Store(database)
    try:
        for number in range(CANDIDATES):
            verdict = ("candidate", "potential-candidate", "ineligible")[number % 3]
            line = {
                "patient": f"Patient/p{number:05d}",
                "trial": "relieve",
                "as_of": "2026-06-15",
                "verdict": verdict,
                "criteria": {"survival": {"result": "unknown", "evidence": [], "reason": "-"}},
            }
            store.upsert_candidate("relieve", line, "2026-06-15")
    finally:
        store.close()


def latencies(url: str, seconds: float, stop: threading.Event | None = None) -> list[float]:
    """``GET /candidates?limit=100`` one after another (with a short pause) for ``seconds``."""
    found: list[float] = []
    deadline = time.monotonic() + seconds
    with httpx.Client(base_url=url, headers={"X-API-Key": KEY}, timeout=120) as client:
        while time.monotonic() < deadline and not (stop and stop.is_set()):
            started = time.perf_counter()
            answer = client.get("/candidates", params={"limit": 100})
            found.append(time.perf_counter() - started)
            answer.raise_for_status()
            time.sleep(0.05)
    return found


def poster(url: str, stop: threading.Event, outcomes: Counter[int], lock: threading.Lock) -> None:
    with httpx.Client(base_url=url, timeout=300) as client:
        page = client.get("/ui/login")
        token = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
        assert token is not None
        number = 0
        while not stop.is_set():
            number += 1
            answer = client.post(
                "/ui/login",
                data={
                    "username": f"nobody-{threading.get_ident()}-{number}",
                    "password": "not-the-password",
                    "csrf_token": token.group(1),
                },
            )
            with lock:
                outcomes[answer.status_code] += 1


def summary(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    return statistics.median(ordered), ordered[int(0.95 * (len(ordered) - 1))]


def flood(url: str, pid: int, posters: int, seconds: float) -> dict[str, Any]:
    stop = threading.Event()
    lock = threading.Lock()
    outcomes: Counter[int] = Counter()
    threads = [
        threading.Thread(target=poster, args=(url, stop, outcomes, lock), daemon=True)
        for _ in range(posters)
    ]
    before = rss_mb(pid)
    for thread in threads:
        thread.start()
    time.sleep(2.0)  # the flood under way
    peak = [before]

    def sample_rss() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], rss_mb(pid))
            time.sleep(0.05)

    sampler = threading.Thread(target=sample_rss, daemon=True)
    sampler.start()
    with lock:
        posted_before = sum(outcomes.values())
    measured = latencies(url, seconds)
    with lock:
        posted = sum(outcomes.values()) - posted_before
        answers = dict(outcomes)
    stop.set()
    for thread in threads:
        thread.join(timeout=300)
    sampler.join(timeout=10)
    median, p95 = summary(measured)
    return {
        "median_s": median,
        "p95_s": p95,
        "requests": len(measured),
        "posts_per_s": posted / seconds,
        "answers": ",".join(f"{code}:{count}" for code, count in sorted(answers.items())),
        "rss_before_mb": before,
        "rss_peak_mb": peak[0],
    }


def serve(folder: Path, port: int, limits: bool) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "PRESCREEN_DATABASE_URL": f"sqlite:///{folder}/state.db",
        "PRESCREEN_PORT": str(port),
        "PRESCREEN_UI_MODE": "local",
        "PRESCREEN_API_KEYS": json.dumps({"bench": {"key": KEY, "scopes": ["candidates"]}}),
    }
    if not limits:
        env["PRESCREEN_SIGN_IN_FAILURES_ALLOWED"] = str(10**9)
    log = folder / f"serve-{port}.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "service", "serve"],
            env=env,
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + 180
    while True:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=30).is_success:
                return process
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline or process.poll() is not None:
            process.kill()
            raise RuntimeError(log.read_text()[-2000:])
        time.sleep(0.5)


def stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=30)


def measure(label: str, posters: int, seconds: float) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="prescreen-login-flood-") as name:
        folder = Path(name)
        seed_worklist(f"sqlite:///{folder}/state.db")
        for limits in (False, True):
            port = free_port()
            process = serve(folder, port, limits)
            url = f"http://127.0.0.1:{port}"
            try:
                latencies(url, 3.0)  # warm up
                idle = latencies(url, seconds)
                median, p95 = summary(idle)
                if not limits:
                    rows.append(
                        {
                            "code": label,
                            "scenario": "idle",
                            "median_s": median,
                            "p95_s": p95,
                            "requests": len(idle),
                            "rss_before_mb": rss_mb(process.pid),
                        }
                    )
                scenario = f"{posters} posters, limits {'on' if limits else 'off'}"
                rows.append(
                    {
                        "code": label,
                        "scenario": scenario,
                        **flood(url, process.pid, posters, seconds),
                    }
                )
            finally:
                stop(process)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--posters", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=20.0, help="per measurement")
    parser.add_argument("--label", default="this checkout", help="names the rows")
    parser.add_argument("--name", default="login_flood", help="results/<name>.json/.md")
    args = parser.parse_args()
    rows = measure(args.label, args.posters, args.seconds)
    idle = rows[0]["median_s"]
    for row in rows:
        row["vs_idle"] = row["median_s"] / idle
    write_outputs(
        args.name,
        rows,
        [
            "code",
            "scenario",
            "median_s",
            "p95_s",
            "vs_idle",
            "requests",
            "posts_per_s",
            "answers",
            "rss_before_mb",
            "rss_peak_mb",
        ],
        [
            "GET /candidates?limit=100 (API key; 300 candidates in SQLite), one after another "
            "with 50 ms pauses; during the floods, that many clients post wrong passwords to "
            "/ui/login as fast as they are answered. answers: HTTP status:count of the posts. "
            "limits off: PRESCREEN_SIGN_IN_FAILURES_ALLOWED=1e9 (every post is an Argon2id check); "
            "limits on: the defaults. RSS of the service process sampled every 50 ms.",
        ],
    )
    print(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
