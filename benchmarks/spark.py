"""The local executor against Apache Spark on one synthetic hospital, as whole processes.

``python -m benchmarks.spark [--patients 100000] [--trials relieve] [--repeat 1]``: the same
``prescreen screen`` command line with the local executor (one process, two processes) and with
``--executor spark`` on ``local[2]`` and on a standalone cluster of two one-core workers on
127.0.0.1 (started here from the PySpark distribution, as the tests start it; its start-up is
not counted, a cluster being there before the run). Wall time of the whole ``prescreen``
process, start-up included (what ``/usr/bin/time`` measures); the outputs of every executor
are compared with the first one's, byte for byte. The machine's load average is recorded
before and after each run: on a shared machine it says how much the figures can be trusted.
Writes ``benchmarks/results/spark.json``, ``.md`` and ``.png``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.common import DATA, folder_stats, population, timed_screen, write_outputs

# The driver's JVM holds local[2]'s executors too: more than the 1 GB default.
SUBMIT_ARGS = "--driver-memory 2g pyspark-shell"


def run_once(source: Path, trials: str, extra: list[str], out: Path) -> dict[str, float]:
    env = {
        "PYSPARK_PYTHON": sys.executable,
        "SPARK_LOCAL_IP": "127.0.0.1",
        "PYSPARK_SUBMIT_ARGS": SUBMIT_ARGS,
    }
    timed = timed_screen(source, trials, out, *extra, env=env)
    return {k: timed[k] for k in ("wall_s", "load_before", "load_after")}


def same_files(first: Path, other: Path) -> bool:
    """Every output file byte for byte, summary.json apart from its timings."""
    names = sorted(p.relative_to(first) for p in first.rglob("*") if p.is_file())
    if names != sorted(p.relative_to(other) for p in other.rglob("*") if p.is_file()):
        return False
    for name in names:
        ours, theirs = (first / name).read_bytes(), (other / name).read_bytes()
        if name.name == "summary.json":
            mine, yours = json.loads(ours), json.loads(theirs)
            mine.pop("seconds", None)
            yours.pop("seconds", None)
            if json.dumps(mine) != json.dumps(yours):
                return False
        elif ours != theirs:
            return False
    return True


def measure(patients: int, trials: str, repeat: int) -> list[dict[str, Any]]:
    from tests.spark.cluster import StandaloneCluster, java_problem

    problem = java_problem()
    if problem is not None:
        raise SystemExit(f"cannot run Spark here: {problem}")
    source = population(patients)
    stats = folder_stats(source)
    with tempfile.TemporaryDirectory(prefix="prescreen-bench-spark-") as work:
        cluster = StandaloneCluster(Path(work) / "cluster")
        started = time.perf_counter()
        cluster.start()
        cluster_seconds = time.perf_counter() - started
        print(f"  standalone cluster up in {cluster_seconds:.1f}s", flush=True)
        try:
            executors = [
                ("local, 1 process", ["--workers", "1"]),
                ("local, 2 processes", ["--workers", "2"]),
                ("spark local[2]", ["--executor", "spark", "--spark-master", "local[2]"]),
                (
                    "spark standalone, 2 workers x 1 core",
                    ["--executor", "spark", "--spark-master", cluster.master_url],
                ),
            ]
            rows: list[dict[str, Any]] = []
            first_out: Path | None = None
            for name, extra in executors:
                out = DATA / f"out-spark-bench-{len(rows)}"
                runs = []
                for _ in range(repeat):
                    runs.append(run_once(source, trials, extra, out))
                    print(f"  {name}: {runs[-1]}", flush=True)
                first_out = first_out or out
                wall = statistics.median(r["wall_s"] for r in runs)
                rows.append(
                    {
                        "executor": name,
                        "patients": patients,
                        "MB": round(stats["bytes"] / 1e6),
                        "trials": trials,
                        "wall_s": wall,
                        "patients_per_hour": round(patients / wall * 3600),
                        "same_files_as_local": "yes" if same_files(first_out, out) else "NO",
                        "load_before": round(max(r["load_before"] for r in runs), 1),
                        "load_after": round(max(r["load_after"] for r in runs), 1),
                        "runs": repeat,
                    }
                )
            rows[0]["cluster_start_s"] = round(cluster_seconds, 1)
        finally:
            cluster.stop()
    return rows


def report(rows: list[dict[str, Any]]) -> None:
    columns = [
        "executor",
        "patients",
        "MB",
        "trials",
        "wall_s",
        "patients_per_hour",
        "same_files_as_local",
        "load_before",
        "load_after",
        "runs",
    ]
    notes = [
        "wall_s: the whole prescreen process, start-up included (Spark: the driver JVM and its "
        "session; the standalone cluster was started before, in "
        f"{rows[0].get('cluster_start_s')} s). One machine, 2 cores, shared: the load "
        "averages (1 min) before and after each run say what else was running.",
        "Spark local[2]: executors in the driver's JVM (--driver-memory 2g). Standalone: a "
        "master and two workers of one core and 1 GB on 127.0.0.1, executors in their own "
        "JVMs. Both pay what a cluster pays on one machine (JVMs, Arrow transfers, a shuffle) "
        "without a cluster's extra cores: they show the overhead, not the scale-out.",
    ]

    def plot(axes: Any) -> None:
        names = [row["executor"] for row in rows]
        axes.barh(range(len(rows)), [row["wall_s"] for row in rows])
        axes.set_yticks(list(range(len(rows))), names)
        axes.invert_yaxis()
        axes.set_xlabel("seconds (whole process)")
        axes.set_title(f"{rows[0]['patients']:,} patients, {rows[0]['trials']}")

    write_outputs("spark", rows, columns, notes, plot)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--patients", type=int, default=100_000)
    parser.add_argument("--trials", default="relieve")
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args()
    report(measure(args.patients, args.trials, args.repeat))


if __name__ == "__main__":
    main()
