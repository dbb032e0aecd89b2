"""``--workers 1`` against ``--workers 2`` on one synthetic hospital, as whole processes.

``python -m benchmarks.workers [--patients 10000] [--repeat 5]``: the same ``prescreen screen``
command line with one and with two worker processes, start-up included (what ``/usr/bin/time``
measures), alternated run by run so both see the same machine; medians. Also the CPU time of
each run (all its processes) and the peak RSS of its largest process. Writes
``benchmarks/results/workers.json``, ``.md`` and ``.png``.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.common import AS_OF, DATA, folder_stats, population, write_outputs

PRESCREEN = str(Path(sys.executable).parent / "prescreen")
TARGET = 1.7


def run_once(source: Path, trials: str, workers: int, out: Path) -> dict[str, float]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    subprocess.run(
        [
            PRESCREEN,
            "screen",
            "--trial",
            trials,
            "--source",
            str(source),
            "--as-of",
            AS_OF.isoformat(),
            "--out",
            str(out),
            "--no-progress",
            "--workers",
            str(workers),
        ],
        check=True,
        capture_output=True,
    )
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    # ru_maxrss of the children is the high-water mark of the largest one so far.
    return {"wall_s": wall, "cpu_s": cpu, "peak_rss_MB": after.ru_maxrss / 1024}


def measure(patients: int, repeat: int, trial_sets: list[str]) -> list[dict[str, Any]]:
    source = population(patients)
    stats = folder_stats(source)
    rows = []
    for trials in trial_sets:
        runs: dict[int, list[dict[str, float]]] = {1: [], 2: []}
        for attempt in range(repeat):
            for workers in (1, 2) if attempt % 2 == 0 else (2, 1):
                out = DATA / f"out-workers-{workers}"
                runs[workers].append(run_once(source, trials, workers, out))
                print(f"  {trials} --workers {workers}: {runs[workers][-1]}", flush=True)
        one = statistics.median(r["wall_s"] for r in runs[1])
        two = statistics.median(r["wall_s"] for r in runs[2])
        rows.append(
            {
                "trials": trials,
                "patients": patients,
                "MB": round(stats["bytes"] / 1e6),
                "runs": repeat,
                "workers_1_s": one,
                "workers_2_s": two,
                "speedup": one / two,
                "workers_1_s_all": sorted(round(r["wall_s"], 2) for r in runs[1]),
                "workers_2_s_all": sorted(round(r["wall_s"], 2) for r in runs[2]),
                "cpu_1_s": statistics.median(r["cpu_s"] for r in runs[1]),
                "cpu_2_s": statistics.median(r["cpu_s"] for r in runs[2]),
                "peak_rss_1_MB": max(r["peak_rss_MB"] for r in runs[1]),
            }
        )
        print(f"  {rows[-1]}", flush=True)
    return rows


def report(rows: list[dict[str, Any]]) -> None:
    columns = [
        "trials",
        "patients",
        "MB",
        "runs",
        "workers_1_s",
        "workers_2_s",
        "speedup",
        "cpu_1_s",
        "cpu_2_s",
        "workers_1_s_all",
        "workers_2_s_all",
    ]
    notes = [
        f"Target: speedup >= {TARGET} (whole process, start-up included, medians).",
        "cpu_*: user + system time of all the run's processes (median); the machine is shared, "
        "so wall times vary with what else runs on it.",
    ]

    def plot(axes: Any) -> None:
        labels = [row["trials"] for row in rows]
        positions = range(len(rows))
        axes.bar([p - 0.2 for p in positions], [r["workers_1_s"] for r in rows], 0.4, label="1")
        axes.bar([p + 0.2 for p in positions], [r["workers_2_s"] for r in rows], 0.4, label="2")
        axes.set_xticks(list(positions), labels)
        axes.set_ylabel("seconds (median, whole process)")
        axes.set_title(f"--workers 1 vs 2, {rows[0]['patients']} patients")
        axes.legend(title="workers")

    write_outputs("workers", rows, columns, notes, plot)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--patients", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--trials", default="relieve;relieve,ssrs", help="';'-separated")
    args = parser.parse_args()
    report(measure(args.patients, args.repeat, args.trials.split(";")))


if __name__ == "__main__":
    main()
