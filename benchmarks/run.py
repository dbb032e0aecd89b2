"""Run the benchmarks: ``python -m benchmarks.run [--sizes 1000,10000,100000] [--only NAMES]``.

Each writes ``benchmarks/results/<name>.json``, ``.md`` and ``.png``.
"""

from __future__ import annotations

import argparse

from benchmarks import bulk_rest, engines, live, offline


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", default="1000,10000,100000", help="offline population sizes")
    parser.add_argument(
        "--only",
        default="offline,engines,live",
        help="which benchmarks (bulk_rest too on request: it starts HAPI FHIR)",
    )
    args = parser.parse_args()
    chosen = set(args.only.split(","))
    if "offline" in chosen:
        print("offline screening vs parse floor (and growth)")
        rows = offline.measure([int(s) for s in args.sizes.split(",")])
        offline.report(rows)
        offline.report_growth(rows)
    if "engines" in chosen:
        print("rule engines")
        engines.report(engines.measure())
    if "live" in chosen:
        print("live screening vs download floor")
        live.report(live.measure())
    if "bulk_rest" in chosen:
        print("bulk export + screen vs REST screen on HAPI FHIR")
        bulk_rest.report(*bulk_rest.measure())


if __name__ == "__main__":
    main()
