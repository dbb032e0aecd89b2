"""A real Spark standalone cluster on 127.0.0.1: a master and two one-core workers, started
from the PySpark distribution the project installs (its ``bin/spark-class``).

Every process is started in its own process group (a worker's executors and their Python
workers are its children) and the groups are stopped on every path: at teardown, when the
start fails, and at interpreter exit.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from tests.integration.servers import free_port

JAVA_NEEDED = 17  # Spark 4 runs on Java 17 and 21

_GROUPS: list[subprocess.Popen[bytes]] = []


@atexit.register
def _stop_everything() -> None:
    for process in _GROUPS:
        _stop(process)


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        try:
            os.killpg(process.pid, signal.SIGTERM)  # the JVM's shutdown hooks stop executors
            process.wait(timeout=30)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)  # whatever the group still holds
    process.wait()


def java_problem() -> str | None:
    """Why this machine cannot run Spark, or None."""
    home = os.environ.get("JAVA_HOME")
    java = str(Path(home) / "bin" / "java") if home else shutil.which("java")
    if java is None or not Path(java).exists():
        return "no Java: Spark needs Java 17 or 21 (install a JDK or set JAVA_HOME)"
    done = subprocess.run([java, "-version"], capture_output=True, text=True, check=False)
    found = re.search(r'version "(\d+)', done.stderr + done.stdout)
    if done.returncode != 0 or found is None:
        return f"`{java} -version` failed: {done.stderr[-500:]}"
    if int(found.group(1)) < JAVA_NEEDED:
        return f"Java {found.group(1)} found; Spark 4 needs Java 17 or 21"
    return None


def spark_home() -> Path:
    import pyspark

    return Path(pyspark.__file__).parent


@dataclass
class StandaloneCluster:
    """``spark://127.0.0.1:<port>`` with ``workers`` workers of one core and 1 GB each."""

    workdir: Path
    workers: int = 2
    port: int = field(default_factory=free_port)
    ui_port: int = field(default_factory=free_port)
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def master_url(self) -> str:
        return f"spark://127.0.0.1:{self.port}"

    def environment(self) -> dict[str, str]:
        conf = self.workdir / "conf"  # an empty configuration folder: nothing from elsewhere
        conf.mkdir(parents=True, exist_ok=True)
        return {
            **os.environ,
            "SPARK_HOME": str(spark_home()),
            "SPARK_CONF_DIR": str(conf),
            "SPARK_LOCAL_IP": "127.0.0.1",
            "SPARK_LOG_DIR": str(self.workdir / "logs"),
            "SPARK_LOCAL_DIRS": str(self.workdir / "local"),
            "PYSPARK_PYTHON": sys.executable,
        }

    def start(self, seconds: float = 180.0) -> StandaloneCluster:
        try:
            self._launch(
                "master",
                "org.apache.spark.deploy.master.Master",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--webui-port",
                str(self.ui_port),
            )
            for number in range(self.workers):
                work = self.workdir / f"worker-{number}"
                self._launch(
                    f"worker-{number}",
                    "org.apache.spark.deploy.worker.Worker",
                    self.master_url,
                    "--host",
                    "127.0.0.1",
                    "--cores",
                    "1",
                    "--memory",
                    "1g",
                    "--webui-port",
                    str(free_port()),
                    "--work-dir",
                    str(work),
                )
            self._wait_for_workers(seconds)
        except BaseException:
            self.stop()
            raise
        return self

    def _launch(self, name: str, main_class: str, *args: str) -> None:
        log = self.workdir / f"{name}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        process = subprocess.Popen(
            [str(spark_home() / "bin" / "spark-class"), main_class, *args],
            cwd=self.workdir,
            stdout=log.open("wb"),
            stderr=subprocess.STDOUT,
            env=self.environment(),
            start_new_session=True,  # its own process group, executors included
        )
        self.processes.append(process)
        _GROUPS.append(process)

    def _wait_for_workers(self, seconds: float) -> None:
        """Until the master's status page lists every worker ALIVE (generous: JVMs start
        slowly on a loaded machine)."""
        deadline = time.monotonic() + seconds
        alive = 0
        while time.monotonic() < deadline:
            for process in self.processes:
                if process.poll() is not None:
                    raise RuntimeError(f"a Spark process exited early:\n{self.logs()}")
            try:
                status = httpx.get(f"http://127.0.0.1:{self.ui_port}/json/", timeout=10).json()
                alive = sum(1 for w in status.get("workers", []) if w.get("state") == "ALIVE")
            except (httpx.HTTPError, ValueError):
                alive = 0
            if alive == self.workers:
                return
            time.sleep(1)
        raise RuntimeError(
            f"{alive} of {self.workers} Spark workers alive after {seconds}s:\n{self.logs()}"
        )

    def logs(self) -> str:
        return "\n".join(
            f"--- {log.name}\n{log.read_text(errors='replace')[-2000:]}"
            for log in sorted(self.workdir.glob("*.log"))
        )

    def stop(self) -> None:
        for process in reversed(self.processes):
            _stop(process)
