"""The service's memory under a chunked-body attack: ``python -m benchmarks.attack``.

Starts ``prescreen serve`` (SQLite, no FHIR server needed for this), then sends eight parallel
chunked 300 MB bodies to ``POST /screenings``: once without credentials, once with a valid key.
The service's RSS is sampled from /proc while the bodies stream. Before the guard, the body limit
read only ``Content-Length`` and bodies were read before the key was checked: one such body took
the service from 136 MB to 737 MB, eight to 3.6 GB.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from benchmarks.common import ROOT, write_outputs

BODY_BYTES = 300 * 1024 * 1024
PARALLEL = 8
KEY = "attack-benchmark-key"


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def chunked_post(port: int, headers: dict[str, str], result: dict[str, Any]) -> None:
    """Stream a chunked body until the server answers or hangs up; record bytes and status."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=120)
    head = ["POST /screenings HTTP/1.1", f"Host: 127.0.0.1:{port}", "Transfer-Encoding: chunked"]
    head += [f"{k}: {v}" for k, v in headers.items()]
    sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode())
    chunk = 256 * 1024
    frame = f"{chunk:x}\r\n".encode() + b"x" * chunk + b"\r\n"
    sent = 0
    try:
        while sent < BODY_BYTES:
            sock.sendall(frame)
            sent += chunk
        sock.sendall(b"0\r\n\r\n")
    except OSError:
        pass
    try:
        answer = sock.recv(4096)
        result["status"] = int(answer.split()[1]) if answer.startswith(b"HTTP/") else None
    except (OSError, IndexError, ValueError):
        result["status"] = None
    result["sent_mb"] = sent / 1024 / 1024
    sock.close()


def attack(port: int, pid: int, headers: dict[str, str]) -> dict[str, Any]:
    before = rss_mb(pid)
    results: list[dict[str, Any]] = [{} for _ in range(PARALLEL)]
    threads = [
        threading.Thread(target=chunked_post, args=(port, headers, results[i]))
        for i in range(PARALLEL)
    ]
    peak = before
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    while any(t.is_alive() for t in threads):
        peak = max(peak, rss_mb(pid))
        time.sleep(0.05)
    return {
        "rss_before_mb": before,
        "rss_peak_mb": peak,
        "statuses": sorted({str(r.get("status")) for r in results}),
        "sent_mb_max": max(r.get("sent_mb", 0.0) for r in results),
        "seconds": time.perf_counter() - started,
    }


def main() -> None:
    port = free_port()
    with tempfile.TemporaryDirectory() as folder:
        env = {
            **os.environ,
            "PRESCREEN_DATABASE_URL": f"sqlite:///{folder}/state.db",
            "PRESCREEN_PORT": str(port),
            "PRESCREEN_API_KEYS": json.dumps({"bench": {"key": KEY, "scopes": ["screen"]}}),
        }
        log = Path(folder) / "serve.log"
        with log.open("wb") as out:
            process = subprocess.Popen(
                [str(Path(sys.executable).parent / "prescreen"), "serve"],
                env=env,
                cwd=ROOT,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        try:
            deadline = time.monotonic() + 180
            while True:
                try:
                    if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=30).is_success:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline or process.poll() is not None:
                    raise RuntimeError(log.read_text()[-2000:])
                time.sleep(0.5)
            rows = [
                {"scenario": "no credentials", **attack(port, process.pid, {})},
                {"scenario": "valid key", **attack(port, process.pid, {"X-API-Key": KEY})},
            ]
        finally:
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
    for row in rows:
        row["statuses"] = ",".join(row["statuses"])
    write_outputs(
        "attack",
        rows,
        ["scenario", "rss_before_mb", "rss_peak_mb", "statuses", "sent_mb_max", "seconds"],
        [
            f"{PARALLEL} parallel chunked bodies of {BODY_BYTES // 2**20} MB each to "
            "POST /screenings; RSS of the service process sampled every 50 ms; sent_mb_max: the "
            "most any one client got to send before the service answered and closed.",
        ],
    )
    print(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
