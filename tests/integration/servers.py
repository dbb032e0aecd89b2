"""Real FHIR servers the integration suite starts on 127.0.0.1, behind one small interface.

Server-specific behaviour lives here (how to start, configure and stop each server), never in
the tests, which only use the base URL and what the FHIR specification requires of any server.
"""

from __future__ import annotations

import atexit
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


# Every server process the suite starts, killed at exit whatever happened (a fixture whose
# start failed never reaches its teardown; an interrupted run never reaches any).
_STARTED: list[subprocess.Popen[bytes]] = []


@atexit.register
def _stop_everything() -> None:
    for process in _STARTED:
        if process.poll() is None:
            process.kill()
            process.wait()


def started(process: subprocess.Popen[bytes]) -> subprocess.Popen[bytes]:
    _STARTED.append(process)
    return process


def log_tail(log: Path) -> str:
    """The end of a process's log, for the message of a failed start."""
    return log.read_text(errors="replace")[-3000:] if log.is_file() else "(no log)"


def wait_until(
    ready: Callable[[float], bool],
    process: subprocess.Popen[bytes],
    seconds: float,
    log: Path,
    *,
    waiting_for: str,
    pause: float = 0.5,
) -> float:
    """Probe until ``ready(seconds left)`` says so, within one overall limit; the seconds it took.

    Fails at once when the process exits. Limits are generous: a JVM on two busy cores can take
    minutes to start, and giving up early only starts the same slow work again.
    """
    started = time.monotonic()
    while (elapsed := time.monotonic() - started) < seconds:
        if process.poll() is not None:
            raise RuntimeError(f"process exited with {process.returncode}:\n{log_tail(log)}")
        if ready(seconds - elapsed):
            return time.monotonic() - started
        time.sleep(pause)
    raise RuntimeError(f"no {waiting_for} within {seconds}s:\n{log_tail(log)}")


def wait_until_up(url: str, process: subprocess.Popen[bytes], seconds: float, log: Path) -> float:
    """Wait for a first answer from ``url``. Each probe may itself take long: on a loaded
    machine a JVM's first /metadata can take many seconds, and aborting it early only starts
    the same slow request again."""

    def answers(left: float) -> bool:
        try:
            # 401: up, and asking for credentials (a server started with authentication on).
            return httpx.get(url, timeout=max(1.0, min(60.0, left))).status_code in (200, 401)
        except httpx.HTTPError:
            return False

    return wait_until(answers, process, seconds, log, waiting_for=f"answer from {url}")


def stop_process(
    process: subprocess.Popen[bytes] | None,
    grace: float,
    ask: Callable[[], None] | None = None,
) -> None:
    """Ask a running process to end (SIGTERM, unless ``ask`` asks otherwise), and kill it if it
    has not ended within ``grace`` seconds."""
    if process is None or process.poll() is not None:
        return
    (ask or process.terminate)()
    try:
        process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def maven_package(directory: Path, what: str) -> None:
    """Build a Maven project: offline when the local repository already has everything (the
    JVM harnesses share their artifacts), otherwise from Maven Central."""
    command = ["mvn", "-q", "-B", "package", "-DskipTests"]
    done = subprocess.run([*command, "-o"], cwd=directory, capture_output=True, check=False)
    if done.returncode != 0:
        done = subprocess.run(command, cwd=directory, capture_output=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"building {what} failed:\n{done.stdout[-3000:]!r}")


@dataclass
class SekmetServer:
    """sekmet-fhir (PyPI, pinned in pyproject) with its simulator off and SQLite in a temp dir."""

    workdir: Path
    server_auth: dict[str, Any] | None = None
    name: str = "sekmet"
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    startup_seconds: float = 0.0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/fhir"

    def start(self) -> SekmetServer:
        self.workdir.mkdir(parents=True, exist_ok=True)
        settings: dict[str, Any] = {
            "base_url": self.base_url,
            "host": "127.0.0.1",
            "port": self.port,
            "data_dir": str(self.workdir / "data"),
            # The simulator would advance ServiceRequests on its own; tests need a quiet store.
            "simulator": {"enabled": False},
            "validation": {"inbound": "warn"},
            "log_inbound": False,
        }
        if self.server_auth:
            settings["server_auth"] = self.server_auth
        config = self.workdir / "settings.yaml"
        config.write_text(yaml.safe_dump(settings))
        log = self.workdir / "server.log"
        executable = shutil.which("sekmet", path=str(Path(sys.executable).parent)) or "sekmet"
        self.process = started(
            subprocess.Popen(
                [executable, "serve", "--config", str(config)],
                cwd=self.workdir,
                stdout=log.open("wb"),
                stderr=subprocess.STDOUT,
                env={**os.environ, "SEKMET_CONFIG": str(config)},
            )
        )
        try:
            self.startup_seconds = wait_until_up(
                f"{self.base_url}/metadata", self.process, 180.0, log
            )
        except BaseException:
            self.stop()
            raise
        STARTUP_REPORT.append(
            f"sekmet-fhir answered after {self.startup_seconds:.1f}s; "
            f"RSS {rss_mb(self.process.pid):.0f} MB"
        )
        return self

    def stop(self) -> None:
        stop_process(self.process, grace=10)


HAPI_DIR = Path(__file__).resolve().parent.parent / "hapi"
STARTUP_REPORT: list[str] = []


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


@dataclass
class HapiServer:
    """HAPI FHIR JPA 8.8.0 (R4, H2 in memory), built from tests/hapi with Maven and run from a
    plain classpath. Rest-hook Subscriptions and Bulk Data export are enabled.

    ``constrained``: the same build as an EHR that allows patient-scoped searches of clinical
    types and Group-level export only (tests/hapi PatientScopedInterceptor)."""

    workdir: Path
    constrained: bool = False
    name: str = "hapi"
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    startup_seconds: float = 0.0
    heap_mb: str = "?"

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/fhir"

    def build(self) -> None:
        maven_package(HAPI_DIR, "the HAPI harness")

    def start(self) -> HapiServer:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.build()
        log = self.workdir / "hapi.log"
        classpath = f"{HAPI_DIR / 'target' / 'classes'}:{HAPI_DIR / 'target' / 'lib'}/*"
        self.process = started(
            subprocess.Popen(
                [
                    "java",
                    "-Xmx1536m",
                    f"-Dprescreen.constrained={str(self.constrained).lower()}",
                    "-cp",
                    classpath,
                    "org.prescreen.hapi.HarnessMain",
                    str(self.port),
                ],
                cwd=self.workdir,
                stdout=log.open("wb"),
                stderr=subprocess.STDOUT,
            )
        )
        try:
            # One overall limit, generous: HAPI took 135 s to boot on a loaded two-core machine.
            self.startup_seconds = wait_until_up(
                f"{self.base_url}/metadata", self.process, 600.0, log
            )
        except BaseException:
            self.stop()
            raise
        ready = [line for line in log.read_text().splitlines() if line.startswith("READY")]
        if ready:
            self.heap_mb = ready[0].split("heap_used_mb=")[-1]
        STARTUP_REPORT.append(
            f"HAPI FHIR 8.8.0 answered after {self.startup_seconds:.1f}s; "
            f"heap in use at boot {self.heap_mb} MB; RSS {rss_mb(self.process.pid):.0f} MB"
        )
        return self

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            STARTUP_REPORT.append(f"HAPI FHIR RSS before stop {rss_mb(self.process.pid):.0f} MB")
        stop_process(self.process, grace=30)
