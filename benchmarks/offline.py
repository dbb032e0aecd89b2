"""Offline screening throughput against the floor "parse every line with orjson".

Both run in fresh processes on the same files. The screening figure covers reading, mapping,
evaluation and writing every output file; rule loading (validation, compilation on both engines)
is reported separately as start-up.
"""

from __future__ import annotations

from typing import Any

from benchmarks.common import AS_OF, folder_stats, population, run_child, write_outputs

FLOOR = """
import glob, orjson
best = float('inf')
for _ in range(int(sys.argv[2])):
    started = time.perf_counter()
    lines = 0
    for path in sorted(glob.glob(sys.argv[1] + '/*.ndjson')):
        with open(path, 'rb') as handle:
            for line in handle:
                orjson.loads(line)
                lines += 1
    best = min(best, time.perf_counter() - started)
result = {'seconds': best, 'lines': lines}
"""

SCREEN = """
from datetime import date
from pathlib import Path
from service.ruleset.loader import load_ruleset
from service.screening.run import screen_folder
loaded = time.perf_counter()
ruleset = load_ruleset(Path('rules/relieve.yaml'), Path('fhir_mappings'))
startup = time.perf_counter() - loaded
best = float('inf')
for _ in range(int(sys.argv[4])):
    started = time.perf_counter()
    summary = screen_folder(
        ruleset, Path(sys.argv[1]), date.fromisoformat(sys.argv[2]), Path(sys.argv[3]),
        engine='cel', subject_identifier_system='urn:prescreen:research-subject')
    best = min(best, time.perf_counter() - started)
result = {'seconds': best, 'startup_seconds': startup,
          'patients': summary.patients, 'read_seconds': summary.read_seconds,
          'evaluate_seconds': summary.evaluate_seconds, 'parsed': summary.stats.parsed,
          'verdicts': dict(summary.verdicts)}
"""


def measure(sizes: list[int]) -> list[dict[str, Any]]:
    rows = []
    for size in sizes:
        folder = population(size)
        stats = folder_stats(folder)
        out = folder.parent / f"out-{size}"
        # The best of three runs in one process for the smaller sizes (the first run pays for
        # cold caches and first calls), one run at 100k; the same for both sides.
        repeat = "3" if size <= 10_000 else "1"
        floor = run_child(FLOOR, str(folder), repeat)
        screen = run_child(SCREEN, str(folder), AS_OF.isoformat(), str(out), repeat)
        rows.append(
            {
                "patients": size,
                "resources": stats["resources"],
                "MB": round(stats["bytes"] / 1e6),
                "floor_s": floor.seconds,
                "screen_s": screen.seconds,
                "ratio_floor_over_screen": floor.seconds / screen.seconds,
                "patients_per_s": size / screen.seconds,
                "resources_per_s": stats["resources"] / screen.seconds,
                "parsed_in_full": screen.payload["parsed"],
                "startup_s": screen.payload["startup_seconds"],
                "screen_peak_rss_MB": screen.peak_rss_mb,
                "floor_peak_rss_MB": floor.peak_rss_mb,
            }
        )
        print(f"  offline {size}: {rows[-1]}", flush=True)
    return rows


def report(rows: list[dict[str, Any]]) -> None:
    columns = [
        "patients",
        "resources",
        "MB",
        "floor_s",
        "screen_s",
        "ratio_floor_over_screen",
        "patients_per_s",
        "resources_per_s",
        "parsed_in_full",
        "startup_s",
        "screen_peak_rss_MB",
        "floor_peak_rss_MB",
    ]
    notes = [
        "Target: ratio_floor_over_screen >= 1.0 (screening as fast as parsing every line).",
        "screen_s: read + map + evaluate (cel) + write all outputs; startup_s: loading and "
        "validating the rule set (both engines), not included in screen_s.",
        "Each side: best of 3 runs in one process up to 10k patients, a single run at 100k.",
    ]

    def plot(axes: Any) -> None:
        sizes = [r["patients"] for r in rows]
        axes.plot(
            sizes, [r["floor_s"] for r in rows], "o--", label="floor: orjson parse of every line"
        )
        axes.plot(sizes, [r["screen_s"] for r in rows], "o-", label="prescreen screen (cel)")
        axes.set_xscale("log")
        axes.set_yscale("log")
        axes.set_xlabel("patients")
        axes.set_ylabel("seconds")
        axes.set_title("Offline screening vs parsing floor")
        axes.legend()

    write_outputs("offline", rows, columns, notes, plot)


def report_growth(rows: list[dict[str, Any]]) -> None:
    base = rows[0]
    growth = [
        {
            "patients": r["patients"],
            "screen_s": r["screen_s"],
            "time_per_1k_patients_s": r["screen_s"] / r["patients"] * 1000,
            "peak_rss_MB": r["screen_peak_rss_MB"],
            "rss_growth_vs_smallest": r["screen_peak_rss_MB"] / base["screen_peak_rss_MB"],
        }
        for r in rows
    ]
    notes = ["Target: peak memory flat in population size, <= 500 MB at 100k patients."]

    def plot(axes: Any) -> None:
        sizes = [g["patients"] for g in growth]
        axes.plot(
            sizes, [g["peak_rss_MB"] for g in growth], "o-", color="tab:red", label="peak RSS (MB)"
        )
        axes.set_xscale("log")
        axes.set_xlabel("patients")
        axes.set_ylabel("peak RSS (MB)")
        twin = axes.twinx()
        twin.plot(
            sizes, [g["time_per_1k_patients_s"] for g in growth], "s--", label="s per 1k patients"
        )
        twin.set_ylabel("seconds per 1k patients")
        axes.set_title("Growth: memory and time per patient")
        axes.legend(loc="upper left")
        twin.legend(loc="upper right")

    write_outputs("growth", growth, list(growth[0]), notes, plot)
