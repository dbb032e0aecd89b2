"""``prescreen synth``: a synthetic hospital as Bulk-Data NDJSON (``service.synth``)."""

from __future__ import annotations

import argparse
from pathlib import Path

from service.console import EXIT_OK, parse_as_of, stdout


def register_synth(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], _common: argparse.ArgumentParser
) -> None:
    """``synth`` takes none of the common options: it reads no rule set."""
    synth = sub.add_parser("synth", help="generate a synthetic hospital as Bulk-Data NDJSON")
    synth.add_argument("--patients", type=int, required=True, help="number of patients")
    synth.add_argument("--seed", type=int, default=1, help="random seed (same seed, same data)")
    synth.add_argument("--as-of", help="the date the data is generated around (default today)")
    synth.add_argument("--out", required=True, help="output folder")
    synth.add_argument(
        "--spinal-fraction", type=float, default=0.02, help="share with spinal metastases"
    )
    synth.add_argument(
        "--median-background",
        type=int,
        default=90,
        help="median routine resources per patient (long-tailed)",
    )
    synth.add_argument(
        "--clinic-days",
        type=int,
        default=0,
        help="add a clinic schedule: Appointments over this many days after --as-of",
    )
    synth.set_defaults(func=cmd_synth)


def cmd_synth(args: argparse.Namespace) -> int:
    from service.synth import write_population

    as_of = parse_as_of(args.as_of)
    counts = write_population(
        Path(args.out),
        args.patients,
        args.seed,
        as_of,
        spinal_fraction=args.spinal_fraction,
        median_background=args.median_background,
        clinic_days=args.clinic_days,
    )
    stdout.print(
        f"Wrote {args.patients} patients ({sum(counts.values())} resources) to {args.out}: "
        + ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
    )
    return EXIT_OK
