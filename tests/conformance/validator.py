"""The HAPI FHIR instance validator of tests/validator, built once and kept running.

One JVM validates every file of a test session: it loads the core R4 definitions once, then
answers one JSON line per file path written to its stdin (see ValidatorMain.java). The Maven
build is offline when ~/.m2 already holds everything (tests/hapi needs the same artifacts), and
falls back to Maven Central otherwise. Starting, waiting and stopping use the harness of the
integration servers (tests/integration/servers.py), so the JVM is killed at exit whatever happened.
"""

from __future__ import annotations

import itertools
import json
import os
import select
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from tests.integration.servers import (
    log_tail,
    maven_package,
    started,
    stop_process,
    wait_until,
)

REPO = Path(__file__).resolve().parents[2]
VALIDATOR_DIR = REPO / "tests" / "validator"
# Known terminology: prescreen's published CodeSystems and the trials' local ones, so that a
# code written in one of these systems is checked against its CodeSystem.
TERMINOLOGY_DIRS = (
    REPO / "terminology",
    REPO / "terminology" / "criteria",
    REPO / "terminology" / "feasibility",
    REPO / "fhir_mappings" / "codesystems",
)
READY_SECONDS = 300.0  # a cold JVM on two busy cores
ANSWER_SECONDS = 300.0
HEAP = "-Xmx1g"


@dataclass(frozen=True)
class Issue:
    severity: str
    location: str
    message: str


@dataclass(frozen=True)
class Checked:
    """The validator's verdict on one resource (or Bundle) of a file."""

    path: str
    index: int
    resource_type: str | None
    issues: tuple[Issue, ...]

    @property
    def errors(self) -> list[Issue]:
        return [i for i in self.issues if i.severity in ("error", "fatal")]

    def describe(self) -> str:
        lines = [f"{self.path}[{self.index}] {self.resource_type}:"]
        lines += [f"  {i.severity} at {i.location}: {i.message}" for i in self.errors]
        return "\n".join(lines)


def _built_after_sources() -> bool:
    built = VALIDATOR_DIR / "target" / "prescreen-fhir-validator-1.jar"
    if not built.is_file() or not (VALIDATOR_DIR / "target" / "lib").is_dir():
        return False
    sources = [VALIDATOR_DIR / "pom.xml", *(VALIDATOR_DIR / "src").rglob("*")]
    newest = max(path.stat().st_mtime for path in sources if path.is_file())
    return built.stat().st_mtime > newest


def errors_of(results: list[Checked]) -> str:
    """Every error of the results, readable in an assertion message ('' when none)."""
    return "\n".join(r.describe() for r in results if r.errors)


class InstanceValidator:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.process: subprocess.Popen[bytes] | None = None
        self.log = workdir / "validator.log"
        self._buffer = b""
        self._names = itertools.count()
        self.startup_seconds = 0.0

    def build(self) -> None:
        if _built_after_sources():
            return  # Maven would only copy the same jars again (seconds on two busy cores)
        maven_package(VALIDATOR_DIR, "the validator")

    def start(self) -> InstanceValidator:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.build()
        classpath = f"{VALIDATOR_DIR / 'target' / 'classes'}:{VALIDATOR_DIR / 'target' / 'lib'}/*"
        self.process = started(
            subprocess.Popen(
                [
                    "java",
                    HEAP,
                    "-cp",
                    classpath,
                    "org.prescreen.validator.ValidatorMain",
                    *(str(folder) for folder in TERMINOLOGY_DIRS),
                ],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=self.log.open("wb"),
                bufsize=0,
            )
        )
        try:
            # The probe itself waits on the pipe, so no pause between probes.
            self.startup_seconds = wait_until(
                self._says_ready,
                self.process,
                READY_SECONDS,
                self.log,
                waiting_for="ready line from the validator",
                pause=0.0,
            )
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        def end_of_input() -> None:
            assert self.process is not None and self.process.stdin is not None
            self.process.stdin.close()  # the validator exits by itself at the end of its input

        stop_process(self.process, grace=30, ask=end_of_input)

    def _says_ready(self, left: float) -> bool:
        line = self._next_line(min(left, 1.0))
        if line is None:
            return False
        ready = json.loads(line)
        if not ready.get("ready"):
            raise RuntimeError(f"the validator did not start: {ready}")
        return True

    def _read_line(self, seconds: float) -> str:
        deadline = time.monotonic() + seconds
        while (line := self._next_line(min(max(deadline - time.monotonic(), 0.0), 1.0))) is None:
            if time.monotonic() >= deadline:
                raise RuntimeError(f"no answer from the validator within {seconds}s")
        return line

    def _next_line(self, wait: float) -> str | None:
        """The next line of the validator's output, waiting at most ``wait`` seconds for more of
        it (None: no whole line yet)."""
        assert self.process is not None and self.process.stdout is not None
        if b"\n" not in self._buffer:
            fd = self.process.stdout.fileno()
            readable, _, _ = select.select([fd], [], [], wait)
            if readable:
                chunk = os.read(fd, 1 << 16)
                if not chunk:
                    raise RuntimeError(
                        f"the validator exited ({self.process.poll()}):\n{log_tail(self.log)}"
                    )
                self._buffer += chunk
        if b"\n" not in self._buffer:
            return None
        line, self._buffer = self._buffer.split(b"\n", 1)
        return line.decode("utf-8")

    def validate_file(self, path: Path) -> list[Checked]:
        """Validate a JSON file (one resource) or an NDJSON file (one per line)."""
        assert self.process is not None and self.process.stdin is not None
        self.process.stdin.write(f"{path.resolve()}\n".encode())
        self.process.stdin.flush()
        answer: dict[str, Any] = json.loads(self._read_line(ANSWER_SECONDS))
        return [
            Checked(
                path=str(path),
                index=int(result["index"]),
                resource_type=result["resourceType"],
                issues=tuple(Issue(**issue) for issue in result["issues"]),
            )
            for result in answer["results"]
        ]

    def validate(self, resources: list[dict[str, Any]], name: str) -> list[Checked]:
        """Validate resources (or Bundles) given as JSON objects; ``name`` labels the file."""
        path = self.workdir / f"{next(self._names):04d}-{name}.ndjson"
        path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in resources))
        return self.validate_file(path)
