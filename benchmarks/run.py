"""Run the benchmarks: ``python -m benchmarks.run [--sizes 1000,10000,100000] [--only NAMES]``.

Each writes ``benchmarks/results/<name>.json``, ``.md`` and ``.png``.
"""

from __future__ import annotations

import argparse

from benchmarks import (
    appointments,
    bulk_rest,
    cds_hooks,
    common,
    engines,
    floor,
    live,
    offline,
    portfolio,
    spark,
    whatif,
    workers,
    worklist,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", default="1000,10000,100000", help="offline population sizes")
    parser.add_argument(
        "--only",
        default="offline,floor,workers,portfolio,engines,live,cds_hooks,whatif",
        help="which benchmarks (on request too: bulk_rest starts HAPI FHIR, spark a cluster, "
        "worklist the service with the web worklist at 5,000 patients, appointments HAPI FHIR "
        "in its constrained mode with clinic lists of 20, 100 and 1,000 patients)",
    )
    args = parser.parse_args()
    chosen = set(args.only.split(","))
    if "offline" in chosen:
        print("offline screening vs parse floor (and growth)")
        rows = offline.measure([int(s) for s in args.sizes.split(",")])
        offline.report(rows)
        offline.report_growth(rows)
    if "floor" in chosen:
        print("one process vs the orjson floor, whole processes (and memory growth)")
        floor.report(floor.with_growth([floor.measure(n, 3) for n in (10_000, 100_000)]))
    if "workers" in chosen:
        print("--workers 1 vs 2, whole processes")
        workers.report(
            workers.measure(10_000, 5, ["relieve", "relieve,ssrs"])
            + workers.measure(100_000, 3, ["relieve"])
        )
    if "portfolio" in chosen:
        print("--trial relieve,ssrs vs --trial relieve, whole processes, and the profile")
        source = common.population(10_000)
        pairs = portfolio.measure_pairs(source, 3)
        portfolio.report(pairs, [portfolio.profile(source, t) for t in portfolio.TRIAL_SETS])
    if "engines" in chosen:
        print("rule engines")
        engines.report(engines.measure())
    if "live" in chosen:
        print("live screening vs download floor; one reading for a portfolio")
        live.report(live.measure())
        live.report_portfolio(live.measure_portfolio())
    if "cds_hooks" in chosen:
        print("CDS Hooks patient-view latency, 1 and 8 clients, with and without prefetch")
        cds_hooks.report(cds_hooks.measure())
    if "whatif" in chosen:
        print("what-if of 10 combinations vs one screening, whole processes")
        whatif.report(whatif.measure(10_000, 5))
    if "bulk_rest" in chosen:
        print("bulk export + screen vs REST screen on HAPI FHIR")
        bulk_rest.report(*bulk_rest.measure())
    if "worklist" in chosen:
        print("the web worklist at 5,000 patients")
        worklist.report(worklist.measure())
    if "appointments" in chosen:
        print("clinic lists, patient by patient, on a constrained HAPI FHIR")
        appointments.report(appointments.measure())
    if "spark" in chosen:
        print("local executor vs Spark local[2] vs a standalone cluster")
        spark.report(spark.measure(100_000, "relieve", 1))


if __name__ == "__main__":
    main()
