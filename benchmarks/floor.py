"""One ``prescreen screen`` process against the orjson floor, both as whole processes.

``python -m benchmarks.floor [--patients 10000,100000] [--repeat 5]``. The floor is a Python
process that reads every line of the folder and parses it with ``orjson.loads``, nothing else;
``cat | wc -l`` gives the cost of merely reading the bytes. ``prescreen screen --workers 1``
reads, maps, evaluates and writes every output, start-up included. Runs alternate so both
sides see the same machine; medians. Writes ``benchmarks/results/floor.json``, ``.md``, ``.png``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from typing import Any

from benchmarks.common import (
    DATA,
    folder_stats,
    grouped_bars,
    population,
    timed_process,
    timed_screen,
    write_outputs,
)

TARGET = 1.5

# Every line of every NDJSON file, parsed: the least a reader that looks at each resource does.
PARSE_EVERY_LINE = """
import sys
from pathlib import Path
import orjson
for path in sorted(Path(sys.argv[1]).glob("*.ndjson")):
    with path.open("rb") as handle:
        for line in handle:
            if line.strip():
                orjson.loads(line)
"""


def measure(patients: int, repeat: int) -> dict[str, Any]:
    source = population(patients)
    stats = folder_stats(source)
    files = " ".join(str(p) for p in sorted(source.glob("*.ndjson")))
    runs: dict[str, list[dict[str, float]]] = {"floor": [], "screen": [], "cat": []}
    for attempt in range(repeat):
        sides = ("floor", "screen") if attempt % 2 == 0 else ("screen", "floor")
        for side in sides:
            if side == "floor":
                timed = timed_process([sys.executable, "-c", PARSE_EVERY_LINE, str(source)])
            else:
                timed = timed_screen(source, "relieve", DATA / "out-floor", "--workers", "1")
            runs[side].append(timed)
            print(f"  {patients} {side}: {timed['wall_s']:.2f} s", flush=True)
        runs["cat"].append(timed_process(["sh", "-c", f"cat {files} | wc -l"]))
    floor = statistics.median(r["wall_s"] for r in runs["floor"])
    screen = statistics.median(r["wall_s"] for r in runs["screen"])
    return {
        "patients": patients,
        "MB": round(stats["bytes"] / 1e6),
        "lines": stats["resources"],
        "runs": repeat,
        "cat_wc_s": statistics.median(r["wall_s"] for r in runs["cat"]),
        "orjson_floor_s": floor,
        "screen_s": screen,
        "floor_over_screen": floor / screen,
        "screen_peak_rss_MB": max(r["peak_rss_MB"] for r in runs["screen"]),
        "screen_s_all": sorted(round(r["wall_s"], 2) for r in runs["screen"]),
        "floor_s_all": sorted(round(r["wall_s"], 2) for r in runs["floor"]),
        "load_avg": statistics.median(r["load_before"] for r in runs["screen"]),
    }


def with_growth(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each row's peak memory against the smallest population's."""
    smallest = min(rows, key=lambda row: row["patients"])["screen_peak_rss_MB"]
    return [{**row, "rss_vs_smallest": row["screen_peak_rss_MB"] / smallest} for row in rows]


def report(rows: list[dict[str, Any]]) -> None:
    columns = [
        "patients",
        "MB",
        "lines",
        "runs",
        "cat_wc_s",
        "orjson_floor_s",
        "screen_s",
        "floor_over_screen",
        "screen_peak_rss_MB",
        "rss_vs_smallest",
        "screen_s_all",
        "floor_s_all",
        "load_avg",
    ]
    notes = [
        f"Target: floor_over_screen >= {TARGET} (one process, start-up included, medians).",
        "orjson_floor_s: a Python process parsing every line with orjson.loads; cat_wc_s: "
        "`cat FILES | wc -l`; screen_s: `prescreen screen --trial relieve --workers 1` "
        "(read, map, evaluate, write every output).",
        "Peak memory target: flat in population size, rss_vs_smallest <= 1.3 from 10k to 100k "
        "patients (the largest process of the run, ru_maxrss).",
        "load_avg: the machine's 1-minute load average before the screen runs (median); the "
        "machine is shared.",
    ]

    plot = grouped_bars(
        [f"{row['patients']:,} patients" for row in rows],
        rows,
        [
            ("cat_wc_s", "cat | wc -l"),
            ("orjson_floor_s", "orjson every line"),
            ("screen_s", "prescreen screen"),
        ],
        "One process against the parsing floor",
    )
    write_outputs("floor", rows, columns, notes, plot)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--patients", default="10000,100000", help="population sizes")
    parser.add_argument("--repeat", type=int, default=5, help="pairs of runs")
    args = parser.parse_args()
    report(with_growth([measure(int(n), args.repeat) for n in args.patients.split(",")]))


if __name__ == "__main__":
    main()
