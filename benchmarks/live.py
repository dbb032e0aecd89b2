"""Live screening against a real FHIR server (sekmet-fhir, started here on 127.0.0.1).

``python -m benchmarks.live [--patients 10000] [--spinal-fraction 0.1] [--median-background 3]``

Compared with the floor "download exactly the needed resources with plain httpx, no
evaluation": the floor is told which resources the rules need (from the same mapping, run
offline) and fetches them by ``_id`` in chunks, with the same concurrency.

The default population is a 10,000-patient hospital where one patient in ten has a spinal
metastasis (about 1,000 cohort patients) and the routine records are few (a median of 3
background resources), so loading it into the server takes a couple of minutes.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks import common
from benchmarks.common import AS_OF, ROOT, folder_stats, write_outputs

PATIENTS = 10_000
SPINAL_FRACTION = 0.1
MEDIAN_BACKGROUND = 3
CONCURRENCY = 8  # the floor's requests in flight: FhirClient's default
IDS_PER_FLOOR_REQUEST = 50
# Patients per batch of searches: the default (PRESCREEN_FHIR_PATIENTS_PER_REQUEST), then a
# larger group, to show how much of the time is the server's per-search cost.
GROUP_SIZES = (25, 100)


def population(patients: int, spinal_fraction: float, median_background: int) -> Path:
    return common.population(patients, "live", spinal_fraction, median_background)


async def _floor(
    base_url: str, needed: dict[str, list[str]], concurrency: int
) -> tuple[float, int]:
    import httpx

    gate = asyncio.Semaphore(concurrency)
    requests = 0

    async def fetch(client: httpx.AsyncClient, rtype: str, ids: list[str]) -> None:
        nonlocal requests
        async with gate:
            requests += 1
            response = await client.get(
                f"{base_url}/{rtype}", params={"_id": ",".join(ids), "_count": "500"}
            )
            response.raise_for_status()
            assert len(response.json().get("entry", [])) == len(ids)

    started = time.perf_counter()
    async with httpx.AsyncClient(limits=httpx.Limits(max_connections=concurrency)) as client:
        await asyncio.gather(
            *(
                fetch(client, rtype, ids[i : i + IDS_PER_FLOOR_REQUEST])
                for rtype, ids in needed.items()
                for i in range(0, len(ids), IDS_PER_FLOOR_REQUEST)
            )
        )
    return time.perf_counter() - started, requests


def needed_resources(folder: Path, patients: set[str]) -> dict[str, list[str]]:
    """What the rules need for these patients, decided offline by the same mapping: each
    Patient and every resource the mapper kept a record of, by type."""
    from service.ruleset.loader import load_ruleset
    from service.screening.ndjson import read_folder
    from service.screening.source import Collector, IssueLog

    ruleset = load_ruleset(ROOT / "rules" / "relieve.yaml", ROOT / "fhir_mappings")
    collector = Collector(ruleset.mapper, AS_OF, IssueLog())
    read_folder(collector, folder)
    needed: dict[str, list[str]] = {}
    for pid in sorted(patients):
        needed.setdefault("Patient", []).append(pid)
        for ref in sorted(collector.patients[pid].resources or {}):
            rtype, rid = ref.split("/", 1)
            needed.setdefault(rtype, []).append(rid)
    return needed


async def search_costs(
    base_url: str, ruleset: Any, patient_ids: list[str], needed: dict[str, list[str]]
) -> dict[str, float]:
    """Seconds the server takes to answer each search of one group of patients, asked one at a
    time (medians of 3), by resource type; and ``_id read``: one of the floor's requests."""
    import statistics

    from service.fhir.client import FhirClient
    from service.fhir.connect import read_capabilities
    from service.fhir.retrieval import PatientFetcher

    async def timed(client: FhirClient, rtype: str, params: list[tuple[str, str]]) -> float:
        times = []
        for _ in range(3):
            started = time.perf_counter()
            await client.get(rtype, params)
            times.append(time.perf_counter() - started)
        return float(statistics.median(times))

    costs: dict[str, float] = {}
    async with FhirClient(base_url) as client:
        abilities = read_capabilities(await client.capabilities())
        fetcher = PatientFetcher(
            client, ruleset.mapper, abilities, codes_per_request=40, page_size=200
        )
        for rtype, params in fetcher.requests_for(patient_ids):
            costs[rtype] = costs.get(rtype, 0.0) + await timed(client, rtype, params)
        rtype = max(needed, key=lambda t: len(needed[t]))
        ids = needed[rtype][:IDS_PER_FLOOR_REQUEST]
        costs["_id read"] = await timed(client, rtype, [("_id", ",".join(ids))])
    return costs


async def portfolio_reading(
    base_url: str, rulesets: list[Any], out: Path, group_size: int
) -> dict[str, Any]:
    """One live run of these trials on one reading of the server (cohort mode): its requests,
    per patient screened, and its wall time."""
    from service.fhir.client import FhirClient
    from service.fhir.connect import ServerAbilities
    from service.fhir.retrieval import PatientFetcher
    from service.screening.live import LiveOptions, Selection, screen_portfolio_server

    options = LiveOptions(
        as_of=AS_OF, out=out, selection=Selection("cohort"), patients_per_request=group_size
    )
    load_before = os.getloadavg()[0]
    async with FhirClient(base_url) as client:
        started = time.perf_counter()
        portfolio = await screen_portfolio_server(rulesets, client, options)
        seconds = time.perf_counter() - started
        # The searches of one group (in one batch Bundle where the server takes one).
        plain = ServerAbilities(fhir_version="", batch=False, transaction=False)
        fetcher = PatientFetcher(
            client, [r.mapper for r in rulesets], plain, codes_per_request=40, page_size=200
        )
        searches = len(fetcher.requests_for(["p"] * group_size))
    by_kind = portfolio.summaries[0].requests_by_kind
    # Cohort discovery: the capability check and the first page of each trial's cohort search
    # (their next pages are counted with the groups' pages: overstated, never understated).
    discovery = by_kind.get("metadata", 0) + len(rulesets)
    return {
        "trials": ",".join(r.id for r in rulesets),
        "patients_per_request": group_size,
        "screened": portfolio.screened,
        "screened_per_trial": " ".join(str(s.patients) for s in portfolio.summaries),
        "requests": portfolio.requests,
        "requests_per_screened": portfolio.requests / portfolio.screened,
        "requests_per_screened_after_discovery": (portfolio.requests - discovery)
        / portfolio.screened,
        "requests_by_kind": ", ".join(f"{k} {v}" for k, v in sorted(by_kind.items())),
        "searches_per_group": searches,
        "wall_s": seconds,
        "load": f"{load_before:.2f}->{os.getloadavg()[0]:.2f}",
    }


def measure_portfolio(
    patients: int = PATIENTS,
    spinal_fraction: float = SPINAL_FRACTION,
    median_background: int = MEDIAN_BACKGROUND,
    group_size: int = GROUP_SIZES[0],
) -> list[dict[str, Any]]:
    """RELIEVE alone, SSRS alone, then both on one reading, on the same loaded server."""
    from service.fhir.client import FhirClient
    from service.fhir.loader import folder_readers, load_readers
    from service.ruleset.loader import load_ruleset
    from tests.integration.servers import SekmetServer

    folder = population(patients, spinal_fraction, median_background)
    rulesets = [
        load_ruleset(ROOT / "rules" / f"{trial}.yaml", ROOT / "fhir_mappings")
        for trial in ("relieve", "ssrs")
    ]
    rows = []
    with tempfile.TemporaryDirectory() as work:
        server = SekmetServer(Path(work) / "sekmet").start()
        try:

            async def load() -> None:
                async with FhirClient(server.base_url, timeout=300) as client:
                    await load_readers(client, folder_readers(folder), per_bundle=500)

            print("  loading the population into sekmet-fhir ...", flush=True)
            asyncio.run(load())
            # Each trial alone (one after the other: what a portfolio cost before it shared
            # one reading), then both on one reading.
            for chosen in ([rulesets[0]], [rulesets[1]], rulesets):
                out = Path(work) / ("out-" + "-".join(r.id for r in chosen))
                rows.append(
                    asyncio.run(portfolio_reading(server.base_url, chosen, out, group_size))
                )
                print(f"  {rows[-1]}", flush=True)
        finally:
            server.stop()
    return rows


def report_portfolio(rows: list[dict[str, Any]]) -> None:
    notes = [
        "A live portfolio reads the server once: RELIEVE alone, SSRS alone (the two together: "
        "what a portfolio cost when it ran its trials one after the other), then RELIEVE and "
        "SSRS on one reading (each group of patients fetched once with searches covering both "
        "mappings), "
        "cohort mode, sekmet-fhir on 127.0.0.1 holding the live benchmark's population.",
        "screened: patients screened for one trial or more (each trial screens its own "
        "cohort: screened_per_trial); requests: every HTTP request of the run; "
        "requests_per_screened_after_discovery leaves out the capability check and each "
        "trial's first cohort page; searches_per_group: the searches fetching one group of "
        "patients (the server's work; here in one batch Bundle a group); load: the 1-minute "
        "load average before->after the run.",
    ]
    write_outputs("live_portfolio", rows, list(rows[0]), notes)


def measure(
    patients: int = PATIENTS,
    spinal_fraction: float = SPINAL_FRACTION,
    median_background: int = MEDIAN_BACKGROUND,
    repeat: int = 3,
    group_sizes: tuple[int, ...] = GROUP_SIZES,
) -> list[dict[str, Any]]:
    """Load the population once, then for each group size screen it and fetch the floor
    ``repeat`` times each, alternated; a row per group size keeps the medians (and every
    run's times)."""
    from service.fhir.client import FhirClient
    from service.fhir.loader import folder_readers, load_readers
    from service.ruleset.loader import load_ruleset
    from service.screening.live import LiveOptions, LiveSummary, Selection, screen_server
    from tests.integration.servers import SekmetServer

    folder = population(patients, spinal_fraction, median_background)
    stats = folder_stats(folder)
    ruleset = load_ruleset(ROOT / "rules" / "relieve.yaml", ROOT / "fhir_mappings")
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as work:
        server = SekmetServer(Path(work) / "sekmet").start()
        try:

            async def load() -> float:
                started = time.perf_counter()
                async with FhirClient(server.base_url, timeout=300) as client:
                    await load_readers(client, folder_readers(folder), per_bundle=500)
                return time.perf_counter() - started

            print(f"  loading {stats['resources']:,} resources into sekmet-fhir ...", flush=True)
            load_seconds = asyncio.run(load())
            print(f"  loaded in {load_seconds:.1f} s", flush=True)

            async def ours(out: Path, group_size: int) -> tuple[LiveSummary, float, float]:
                options = LiveOptions(
                    as_of=AS_OF,
                    out=out,
                    selection=Selection("cohort"),
                    patients_per_request=group_size,
                )
                async with FhirClient(server.base_url) as client:
                    started, cpu = time.perf_counter(), time.process_time()
                    summary = await screen_server(ruleset, client, options)
                    return summary, time.perf_counter() - started, time.process_time() - cpu

            needed: dict[str, list[str]] = {}
            for group_size in group_sizes:
                ours_runs: list[float] = []
                cpu_runs: list[float] = []
                floor_runs: list[float] = []
                floor_requests = 0
                for run in range(repeat):
                    out = Path(work) / f"out-{group_size}-{run}"
                    summary, seconds, cpu = asyncio.run(ours(out, group_size))
                    ours_runs.append(seconds)
                    cpu_runs.append(cpu)
                    if not needed:
                        needed = needed_resources(folder, set(_verdict_patients(out)))
                    floor_seconds, floor_requests = asyncio.run(
                        _floor(server.base_url, needed, CONCURRENCY)
                    )
                    floor_runs.append(floor_seconds)
                    print(
                        f"  {group_size} a group, run {run + 1}: ours {seconds:.2f} s, "
                        f"floor {floor_seconds:.2f} s",
                        flush=True,
                    )
                on_server = {
                    "patients_on_server": patients,
                    "resources_on_server": stats["resources"],
                    "load_s": load_seconds,
                }
                rows.append(
                    _row(
                        on_server,
                        summary,
                        ours_runs,
                        floor_runs,
                        floor_requests,
                        needed,
                        group_size,
                    )
                )
                rows[-1]["client_cpu_s"] = _median(cpu_runs)
                cohort = sorted(_verdict_patients(out))
                costs = asyncio.run(
                    search_costs(server.base_url, ruleset, cohort[:group_size], needed)
                )
                per_group = sum(v for k, v in costs.items() if k != "_id read")
                groups = -(-len(cohort) // group_size)
                rows[-1]["server_s_per_group"] = per_group
                rows[-1]["server_s_all_groups"] = per_group * groups
                rows[-1]["server_s_by_type"] = ", ".join(
                    f"{k} {v:.3f}" for k, v in sorted(costs.items(), key=lambda kv: -kv[1])
                )
                print(f"  live: {rows[-1]}", flush=True)
        finally:
            server.stop()
    return rows


def _row(
    on_server: dict[str, Any],
    summary: Any,
    ours_runs: list[float],
    floor_runs: list[float],
    floor_requests: int,
    needed: dict[str, list[str]],
    group_size: int,
) -> dict[str, Any]:
    by_kind = summary.requests_by_kind
    discovery = by_kind.get("metadata", 0) + by_kind.get("search Condition", 0)
    # The cohort search's next pages are counted with the groups' pages (kind "page"): the
    # figure after discovery is slightly overstated, never understated.
    screened = summary.patients
    wall, floor = _median(ours_runs), _median(floor_runs)
    return {
        **on_server,
        "patients_per_request": group_size,
        "screened": screened,
        "requests": summary.requests,
        "requests_per_screened_after_discovery": (summary.requests - discovery) / screened,
        "wall_s": wall,
        "floor_s": floor,
        "floor_requests": floor_requests,
        "wall_over_floor": wall / floor,
        "needed_resources": sum(len(v) for v in needed.values()),
        "resources_fetched": summary.stats.parsed,
        "wall_runs_s": " ".join(f"{s:.2f}" for s in ours_runs),
        "floor_runs_s": " ".join(f"{s:.2f}" for s in floor_runs),
    }


def _median(values: list[float]) -> float:
    import statistics

    return float(statistics.median(values))


def _verdict_patients(out: Path) -> list[str]:
    import json

    return [
        json.loads(line)["patient"].removeprefix("Patient/")
        for line in (out / "verdicts.ndjson").read_text().splitlines()
    ]


def report(rows: list[dict[str, Any]]) -> None:
    notes = [
        "Targets: <= 2 requests per screened candidate after cohort discovery; wall time <= 1.5x "
        "the download floor.",
        "Server: sekmet-fhir (SQLite) on 127.0.0.1; no write-back; cohort discovery included "
        "in wall_s, excluded from requests_per_screened_after_discovery.",
        "Floor: plain httpx GETs by _id (50 ids a request, 8 in flight) of exactly the resources "
        "the mapping keeps for the screened patients (needed_resources), decided offline.",
        "patients_per_request: patients whose searches go in one batch (25 is the default, "
        "PRESCREEN_FHIR_PATIENTS_PER_REQUEST); the larger group is shown for comparison.",
        "wall_s and floor_s are medians of the runs listed (alternated, same loaded server); "
        "resources_fetched: what the live run downloaded (code-filtered searches); "
        "client_cpu_s: CPU time of prescreen's own process during wall_s (mapping, evaluation, "
        "outputs, HTTP): the rest of wall_s is waiting for the server's answers.",
        "server_s_per_group: the searches of one group (its first patients), asked one at a "
        "time after the runs, medians of 3, by type in server_s_by_type with one floor request "
        "(_id read, 50 ids); server_s_all_groups: that times the number of groups, what the "
        "server alone needs for the run (it answers one search at a time).",
    ]

    def plot(axes: Any) -> None:
        labels = ["download floor"] + [f"live, {r['patients_per_request']} a group" for r in rows]
        axes.bar(
            labels,
            [rows[0]["floor_s"]] + [r["wall_s"] for r in rows],
            color=["tab:gray"] + ["tab:blue"] * len(rows),
        )
        axes.set_ylabel("seconds")
        axes.set_title(f"Live screening of {rows[0]['screened']:,} cohort patients")

    write_outputs("live", rows, list(rows[0]), notes, plot)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    common.population_arguments(parser, PATIENTS, SPINAL_FRACTION, MEDIAN_BACKGROUND)
    parser.add_argument("--repeat", type=int, default=3, help="runs of each, medians reported")
    parser.add_argument(
        "--patients-per-request",
        default=",".join(map(str, GROUP_SIZES)),
        help="comma-separated group sizes to measure, one row each",
    )
    parser.add_argument(
        "--portfolio",
        action="store_true",
        help="instead: requests of RELIEVE alone and of RELIEVE and SSRS on one reading",
    )
    args = parser.parse_args()
    if args.portfolio:
        report_portfolio(
            measure_portfolio(args.patients, args.spinal_fraction, args.median_background)
        )
        return
    sizes = tuple(int(size) for size in args.patients_per_request.split(","))
    report(measure(args.patients, args.spinal_fraction, args.median_background, args.repeat, sizes))


if __name__ == "__main__":
    main()
