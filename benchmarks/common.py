"""Shared benchmark plumbing: populations, child processes, and the three output formats."""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "benchmarks" / "data"  # generated populations (git-ignored)
RESULTS = ROOT / "benchmarks" / "results"
AS_OF = date(2026, 6, 15)
SEED = 20260615


def population(
    patients: int,
    prefix: str = "hospital",
    spinal_fraction: float | None = None,
    median_background: int | None = None,
) -> Path:
    """A synthetic hospital of this size (and shape, when given), generated once and reused
    (deterministic by seed)."""
    shape: dict[str, Any] = {}
    name = f"{prefix}-{patients}"
    if spinal_fraction is not None:
        shape["spinal_fraction"] = spinal_fraction
        name += f"-sf{spinal_fraction:g}"
    if median_background is not None:
        shape["median_background"] = median_background
        name += f"-mb{median_background}"
    folder = DATA / name
    done = folder / ".complete"
    if not done.exists():
        from service.synth import write_population

        print(f"  generating {patients} patients in {folder} ...", flush=True)
        started = time.perf_counter()
        write_population(folder, patients, SEED, AS_OF, **shape)
        done.write_text(f"{time.perf_counter() - started:.1f}\n")
    return folder


def population_arguments(
    parser: argparse.ArgumentParser, patients: int, spinal_fraction: float, median_background: int
) -> None:
    """``--patients``, ``--spinal-fraction`` and ``--median-background`` of a population put
    on a server."""
    parser.add_argument("--patients", type=int, default=patients, help="patients on the server")
    parser.add_argument(
        "--spinal-fraction",
        type=float,
        default=spinal_fraction,
        help="share of patients with a spinal metastasis (the cohort)",
    )
    parser.add_argument(
        "--median-background",
        type=int,
        default=median_background,
        help="median routine resources per patient",
    )


def folder_stats(folder: Path) -> dict[str, int]:
    lines = size = 0
    for path in folder.glob("*.ndjson"):
        size += path.stat().st_size
        with path.open("rb") as handle:
            lines += sum(1 for _ in handle)
    return {"resources": lines, "bytes": size}


@dataclass
class ChildResult:
    seconds: float  # wall time of the measured section, as the child reports it
    wall_seconds: float  # the whole process, start-up included
    peak_rss_mb: float
    payload: dict[str, Any]


def run_child(code: str, *args: str) -> ChildResult:
    """Run Python code in a fresh process; it prints one JSON line with 'seconds' (+ extras).

    Peak RSS is the child's own high-water mark (``ru_maxrss``), so runs do not share memory.
    """
    wrapper = (
        "import json, resource, sys, time\n"
        f"{code}\n"
        "result['peak_rss_mb'] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024\n"
        "print(json.dumps(result))\n"
    )
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", wrapper, *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    )
    wall = time.perf_counter() - started
    if done.returncode not in (0,):
        raise RuntimeError(f"benchmark child failed ({done.returncode}):\n{done.stderr[-3000:]}")
    payload = json.loads(done.stdout.strip().splitlines()[-1])
    return ChildResult(payload["seconds"], wall, payload["peak_rss_mb"], payload)


PRESCREEN = str(Path(sys.executable).parent / "prescreen")


def timed_screen(
    source: Path, trials: str, out: Path, *extra: str, env: dict[str, str] | None = None
) -> dict[str, float]:
    """``prescreen screen`` on a folder as a whole process, as ``/usr/bin/time`` sees it: wall
    time, CPU time of all its processes, the peak RSS of the largest, and the load average
    before and after (the machine is shared)."""
    command = [PRESCREEN, "screen", "--trial", trials, "--source", str(source)]
    command += ["--as-of", AS_OF.isoformat(), "--out", str(out), "--no-progress", *extra]
    return timed_process(command, env=env, exit_codes=(0, 1))  # 1: a run with reported issues


def timed_process(
    command: list[str], env: dict[str, str] | None = None, exit_codes: tuple[int, ...] = (0,)
) -> dict[str, float]:
    """Run a command to its end and time it; any exit code but ``exit_codes`` is an error."""
    load_before = os.getloadavg()[0]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run(
        command, capture_output=True, check=False, env={**os.environ, **(env or {})}
    )
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode not in exit_codes:
        raise RuntimeError(f"{command[0]} exited {done.returncode}:\n{done.stderr[-3000:]!r}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {
        "wall_s": wall,
        "cpu_s": cpu,
        # ru_maxrss of the children is the high-water mark of the largest one so far.
        "peak_rss_MB": after.ru_maxrss / 1024,
        "load_before": load_before,
        "load_after": os.getloadavg()[0],
    }


def write_outputs(
    name: str,
    rows: list[dict[str, Any]],
    columns: list[str],
    notes: list[str],
    plot: Any | None = None,
) -> None:
    """``results/<name>.json``, ``.md`` (a table) and ``.png`` (drawn by ``plot(axes)``)."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    meta = {
        "name": name,
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "python": sys.version.split()[0],
        "machine": machine(),
    }
    (RESULTS / f"{name}.json").write_text(
        json.dumps({**meta, "rows": rows, "notes": notes}, indent=2)
    )
    lines = [f"### {name}", "", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join(_cell(row.get(c)) for c in columns) + " |")
    lines += ["", *notes, ""]
    (RESULTS / f"{name}.md").write_text("\n".join(lines))
    if plot is not None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        figure, axes = plt.subplots(figsize=(7, 4.2))
        plot(axes)
        figure.tight_layout()
        figure.savefig(RESULTS / f"{name}.png", dpi=110)
        plt.close(figure)


def grouped_bars(
    labels: list[str], rows: list[dict[str, Any]], series: list[tuple[str, str]], title: str
) -> Any:
    """A ``plot`` for ``write_outputs``: for each row (one group, labelled), a bar per
    (column, legend label) of ``series``, in seconds."""

    def plot(axes: Any) -> None:
        width = 0.8 / len(series)
        for index, (key, label) in enumerate(series):
            offset = (index - (len(series) - 1) / 2) * width
            axes.bar(
                [p + offset for p in range(len(rows))], [r[key] for r in rows], width, label=label
            )
        axes.set_xticks(list(range(len(rows))), labels)
        axes.set_ylabel("seconds (median, whole process)")
        axes.set_title(title)
        axes.legend()

    return plot


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.3g}" if abs(value) < 1000 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return "" if value is None else str(value)


def machine() -> str:
    import os
    import platform

    return f"{platform.machine()}, {os.cpu_count()} cores"
