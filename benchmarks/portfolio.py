"""A portfolio against one trial, and where one offline process spends its time.

``python -m benchmarks.portfolio [--patients 10000] [--pairs 3] [--source DIR]``

1. ``prescreen screen --trial relieve,ssrs --workers 1`` against ``--trial relieve --workers
   1`` on the same synthetic hospital, as whole processes (what ``/usr/bin/time`` sees), in
   alternating pairs (the first of a pair changes every pair): the ratio of each pair, the
   median and range of the ratios, and the load average before and after each run.
2. The profile of one process of each: the same command run once more in a process whose
   phases are timed from inside (start-up and imports, loading the rule sets, reading the
   NDJSON, mapping what was read, evaluating, writing the outputs, the portfolio's overlap),
   wall and CPU time. The timers cost a little: the profile's total is slightly above a plain
   run's.

Writes ``benchmarks/results/portfolio.json``, ``.md`` and ``.png``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.common import (
    AS_OF,
    DATA,
    ROOT,
    folder_stats,
    population,
    timed_screen,
    write_outputs,
)

TARGET = 1.3
TRIAL_SETS = ("relieve", "relieve,ssrs")
PHASES = ("start-up", "rule sets", "reading", "mapping", "evaluation", "writing", "overlap")


def measure_pairs(source: Path, pairs: int) -> dict[str, Any]:
    runs: dict[str, list[dict[str, float]]] = {trials: [] for trials in TRIAL_SETS}
    ratios, cpu_ratios = [], []
    for pair in range(pairs):
        order = TRIAL_SETS if pair % 2 == 0 else TRIAL_SETS[::-1]
        for trials in order:
            out = DATA / f"out-portfolio-{trials.replace(',', '-')}"
            runs[trials].append(timed_screen(source, trials, out, "--workers", "1"))
            run = runs[trials][-1]
            print(
                f"  pair {pair + 1}, --trial {trials}: {run['wall_s']:.2f} s, cpu "
                f"{run['cpu_s']:.2f} s, load {run['load_before']:.2f}->{run['load_after']:.2f}",
                flush=True,
            )
        one, both = runs["relieve"][-1], runs["relieve,ssrs"][-1]
        ratios.append(both["wall_s"] / one["wall_s"])
        cpu_ratios.append(both["cpu_s"] / one["cpu_s"])
    stats = folder_stats(source)

    def median(trials: str, key: str) -> float:
        return float(statistics.median(r[key] for r in runs[trials]))

    return {
        "source": source.name,
        "MB": round(stats["bytes"] / 1e6),
        "pairs": pairs,
        "relieve_s": median("relieve", "wall_s"),
        "portfolio_s": median("relieve,ssrs", "wall_s"),
        "ratio": float(statistics.median(ratios)),
        "ratio_range": f"{min(ratios):.2f}-{max(ratios):.2f}",
        "cpu_ratio": float(statistics.median(cpu_ratios)),
        "relieve_cpu_s": median("relieve", "cpu_s"),
        "portfolio_cpu_s": median("relieve,ssrs", "cpu_s"),
        "relieve_peak_MB": median("relieve", "peak_rss_MB"),
        "portfolio_peak_MB": median("relieve,ssrs", "peak_rss_MB"),
        "ratios": " ".join(f"{r:.3f}" for r in ratios),
        "relieve_s_all": " ".join(f"{r['wall_s']:.2f}" for r in runs["relieve"]),
        "portfolio_s_all": " ".join(f"{r['wall_s']:.2f}" for r in runs["relieve,ssrs"]),
        "load": " ".join(
            f"{r['load_before']:.2f}->{r['load_after']:.2f}"
            for pair in zip(runs["relieve"], runs["relieve,ssrs"], strict=True)
            for r in pair
        ),
    }


# --- the profile: one process, its phases timed from inside -----------------------------------


def profile(source: Path, trials: str) -> dict[str, Any]:
    """The phases of one ``prescreen screen --workers 1`` process (run in a child)."""
    out = DATA / f"out-profile-{trials.replace(',', '-')}"
    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    command = [sys.executable, "-m", "benchmarks.portfolio", "--profile-child", trials]
    done = subprocess.run(
        [*command, str(source), str(out)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    )
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"profile child failed:\n{done.stderr[-3000:]}")
    phases = json.loads(done.stdout.strip().splitlines()[-1])
    return {
        "trials": trials,
        "whole_process_s": wall,
        **phases,
        "load": f"{load_before:.2f}->{os.getloadavg()[0]:.2f}",
    }


def profile_child(trials: str, source: str, out: str) -> None:
    """Run ``prescreen screen`` here with timers around its phases; print them as JSON."""
    import functools
    import resource
    from collections import defaultdict
    from collections.abc import Callable

    wall: dict[str, float] = defaultdict(float)
    cpu: dict[str, float] = defaultdict(float)
    # Process start to here: the interpreter, and this module (it imports little).
    ticks = os.sysconf("SC_CLK_TCK")
    since_boot = float(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
    uptime = float(Path("/proc/uptime").read_text().split()[0])
    t0_wall = time.perf_counter() - (uptime - since_boot / ticks)
    t0_cpu = 0.0

    def timed(name: str, function: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(function)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            w, c = time.perf_counter(), time.process_time()
            try:
                return function(*args, **kwargs)
            finally:
                wall[name] += time.perf_counter() - w
                cpu[name] += time.process_time() - c

        return wrapper

    import service.cli
    from service import catalog
    from service.screening import output, run
    from service.screening import source as collecting

    wall["imports"] = time.perf_counter() - t0_wall
    cpu["imports"] = time.process_time() - t0_cpu
    catalog.load_trial = timed("rule sets", catalog.load_trial)
    run.NdjsonReader.read_files = timed("reading", run.NdjsonReader.read_files)
    collecting.Collector.add_resource = timed("mapping", collecting.Collector.add_resource)
    run._Trial.screen = timed("screening", run._Trial.screen)
    run.evaluate_reporting = timed("evaluation", run.evaluate_reporting)
    run.write_overview = timed("overlap", run.write_overview)
    output.OutputSet.__exit__ = timed("committing", output.OutputSet.__exit__)
    w, c = time.perf_counter(), time.process_time()
    command = ["screen", "--trial", trials, "--source", source, "--as-of", AS_OF.isoformat()]
    code = service.cli.main([*command, "--out", out, "--no-progress", "--workers", "1"])
    wall["main"], cpu["main"] = time.perf_counter() - w, time.process_time() - c
    if code not in (0, 1):
        raise SystemExit(f"prescreen exited {code}")
    total_wall, total_cpu = time.perf_counter() - t0_wall, time.process_time() - t0_cpu
    # The phases, each without the ones inside it.
    phases = {
        "start-up": (wall["imports"], cpu["imports"]),
        "rule sets": (wall["rule sets"], cpu["rule sets"]),
        "reading": (wall["reading"] - wall["mapping"], cpu["reading"] - cpu["mapping"]),
        "mapping": (wall["mapping"], cpu["mapping"]),
        "evaluation": (wall["evaluation"], cpu["evaluation"]),
        "writing": (
            wall["screening"] - wall["evaluation"] + wall["committing"],
            cpu["screening"] - cpu["evaluation"] + cpu["committing"],
        ),
        "overlap": (wall["overlap"], cpu["overlap"]),
    }
    accounted = sum(v[0] for v in phases.values())
    phases["other"] = (total_wall - accounted, total_cpu - sum(v[1] for v in phases.values()))
    row: dict[str, Any] = {f"{k}_s": round(v[0], 3) for k, v in phases.items()}
    row |= {f"{k}_cpu_s": round(v[1], 3) for k, v in phases.items()}
    row["total_s"], row["total_cpu_s"] = round(total_wall, 3), round(total_cpu, 3)
    row["peak_rss_MB"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(row))


# --- report ----------------------------------------------------------------------------------


def report(pairs: dict[str, Any], profiles: list[dict[str, Any]]) -> None:
    rows = [{"what": "pairs", **pairs}] + [{"what": "profile", **p} for p in profiles]
    notes = [
        f"Target: --trial relieve,ssrs <= {TARGET}x --trial relieve (one worker, whole process, "
        "median of the pairs' ratios).",
        "pairs: whole `prescreen screen --workers 1` processes, alternating; ratio: portfolio "
        "wall / relieve wall of each pair, the median and its range; cpu_ratio likewise with "
        "the CPU time of the runs; load: the 1-minute load average before->after each run "
        "(the machine has two cores and is shared).",
        "profile: one more process of each, its phases timed from inside (wall *_s and CPU "
        "*_cpu_s): start-up (interpreter and imports, before the command runs), rule sets "
        "(loading and compiling), reading (finding and parsing the lines worth it, without "
        "mapping), mapping (resources to facts, every trial's collector), evaluation (the CEL "
        "rules, memoised per fact pattern), writing (verdict lines, ResearchSubjects, summary "
        "files, committing the outputs), overlap (a portfolio's summary.json and "
        "patients.ndjson), other (the rest: argument parsing, discovering the files, the "
        "summary's tables).",
    ]
    columns = sorted({key for row in rows for key in row}, key=_column_order)

    def plot(axes: Any) -> None:
        labels = [p["trials"] for p in profiles]
        bottom = [0.0] * len(profiles)
        for phase in (*PHASES, "other"):
            values = [p.get(f"{phase}_s", 0.0) for p in profiles]
            axes.bar(labels, values, bottom=bottom, label=phase)
            bottom = [b + v for b, v in zip(bottom, values, strict=True)]
        axes.set_ylabel("seconds (one process, wall)")
        axes.set_title(f"Where one process spends its time (ratio {pairs['ratio']:.2f})")
        axes.legend(fontsize=7)

    write_outputs("portfolio", rows, columns, notes, plot)


def _column_order(key: str) -> tuple[int, str]:
    first = ["what", "trials", "source", "MB", "pairs", "ratio", "ratio_range", "cpu_ratio"]
    return (first.index(key), key) if key in first else (len(first), key)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--patients", type=int, default=10_000, help="synthetic hospital size")
    parser.add_argument("--pairs", type=int, default=3, help="alternating pairs of runs")
    parser.add_argument("--source", type=Path, help="another NDJSON folder instead")
    parser.add_argument("--profile-child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.profile_child:
        profile_child(*args.profile_child)
        return
    source = args.source or population(args.patients)
    pairs = measure_pairs(source, args.pairs)
    print(f"  pairs: {pairs}", flush=True)
    profiles = [profile(source, trials) for trials in TRIAL_SETS]
    for found in profiles:
        print(f"  profile: {found}", flush=True)
    report(pairs, profiles)


if __name__ == "__main__":
    main()
