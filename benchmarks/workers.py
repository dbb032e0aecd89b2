"""``--workers 1`` against ``--workers 2`` on synthetic hospitals, as whole processes.

``python -m benchmarks.workers [--patients 10000,100000] [--repeat 5]``: the same
``prescreen screen`` command line with one process and with two, start-up included (what
``/usr/bin/time`` measures), alternated run by run so both see the same machine; medians.
Also the CPU time of each run (all its processes), the peak RSS of its largest process, and
how many cores the machine actually gave (it is shared). Writes
``benchmarks/results/workers.json``, ``.md`` and ``.png``.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.common import (
    DATA,
    folder_stats,
    grouped_bars,
    population,
    timed_screen,
    write_outputs,
)

TARGET = 1.7
BUSY = "x = 0\nfor i in range(20_000_000):\n    x += i\n"


def free_cores() -> float:
    """How many cores the machine gives two CPU-bound processes right now: 2.0 when both are
    free, 1.0 when the other engineers' work takes one. Two runs of a busy loop side by side
    against one alone."""
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", BUSY], check=True)
    alone = time.perf_counter() - started
    started = time.perf_counter()
    both = [subprocess.Popen([sys.executable, "-c", BUSY]) for _ in range(2)]
    for process in both:
        process.wait()
    return 2 * alone / (time.perf_counter() - started)


def run_once(source: Path, trials: str, workers: int, out: Path) -> dict[str, float]:
    timed = timed_screen(source, trials, out, "--workers", str(workers))
    return {k: timed[k] for k in ("wall_s", "cpu_s", "peak_rss_MB")}


def measure(patients: int, repeat: int, trial_sets: list[str]) -> list[dict[str, Any]]:
    source = population(patients)
    stats = folder_stats(source)
    rows = []
    for trials in trial_sets:
        print(f"{patients} patients, --trial {trials}", flush=True)
        runs: dict[int, list[dict[str, float]]] = {1: [], 2: []}
        cores = [free_cores()]
        for attempt in range(repeat):
            for workers in (1, 2) if attempt % 2 == 0 else (2, 1):
                out = DATA / f"out-workers-{workers}"
                runs[workers].append(run_once(source, trials, workers, out))
                print(f"  {trials} --workers {workers}: {runs[workers][-1]}", flush=True)
            cores.append(free_cores())
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
                "free_cores": statistics.median(cores),
                "free_cores_all": sorted(round(c, 2) for c in cores),
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
        "free_cores",
        "workers_1_s_all",
        "workers_2_s_all",
    ]
    notes = [
        f"Target: speedup >= {TARGET} (whole process, start-up included, medians).",
        "cpu_*: user + system time of all the run's processes (median); the machine is shared, "
        "so wall times vary with what else runs on it.",
        "free_cores: how many cores two busy loops got side by side, measured before the runs "
        "and after each pair (median); 2.0 when nothing else runs.",
    ]

    plot = grouped_bars(
        [f"{row['trials']}\n{row['patients']:,} patients" for row in rows],
        rows,
        [("workers_1_s", "--workers 1"), ("workers_2_s", "--workers 2")],
        "--workers 1 vs 2, whole process",
    )
    write_outputs("workers", rows, columns, notes, plot)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--patients", default="10000,100000", help="population sizes")
    parser.add_argument("--repeat", type=int, default=5, help="pairs of runs (at most 3 past 10k)")
    parser.add_argument("--trials", default="relieve;relieve,ssrs", help="';'-separated")
    parser.add_argument("--large-trials", default="relieve", help="trials past 10k patients")
    args = parser.parse_args()
    rows = []
    for size in (int(n) for n in args.patients.split(",")):
        large = size > 10_000
        trial_sets = (args.large_trials if large else args.trials).split(";")
        rows += measure(size, min(args.repeat, 3) if large else args.repeat, trial_sets)
    report(rows)


if __name__ == "__main__":
    main()
