"""``prescreen load`` (an NDJSON folder into a FHIR server, as transactions) and ``prescreen
subscriptions install`` (the Subscriptions that notify the service of new data)."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.markup import escape

from service import catalog
from service.console import (
    EXIT_OK,
    EXIT_PARTIAL,
    RichProgress,
    console,
    listed_trials,
    settings_for,
    stdout,
)
from service.errors import PrescreenError


def register_load(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    load = sub.add_parser(
        "load", parents=[common], help="load an NDJSON folder into a FHIR server (transactions)"
    )
    load.add_argument("--source", required=True, help="folder of <ResourceType>.ndjson files")
    load.add_argument("--fhir-url", help="FHIR R4 base URL (PRESCREEN_FHIR_URL)")
    load.add_argument("--per-bundle", type=int, default=200, help="resources per transaction")
    load.add_argument("--no-progress", action="store_true", help="no progress bars")
    load.set_defaults(func=cmd_load)


def register_subscriptions(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    subs = sub.add_parser("subscriptions", help="FHIR Subscriptions for event-driven screening")
    subs_sub = subs.add_subparsers(dest="subscriptions_command", required=True)
    install = subs_sub.add_parser("install", parents=[common], help="create them on the server")
    install.add_argument("--trial", action="append", help="rule set (repeatable; default all)")
    install.add_argument("--fhir-url", help="FHIR R4 base URL (PRESCREEN_FHIR_URL)")
    install.add_argument("--endpoint", help="notification URL (default PUBLIC_URL/notifications)")
    install.add_argument("--api-key", help="API key (scope notify) the server sends back")
    install.set_defaults(func=cmd_subscriptions_install)


def cmd_load(args: argparse.Namespace) -> int:
    import asyncio

    from service.fhir.connect import connect
    from service.fhir.loader import SkippedLine, folder_readers, load_readers, plan_load

    settings = settings_for(args)
    # Read as a stream, twice before the first request: which types reference which, and the
    # ids of conditionally referenced resources (see service/fhir/loader.py).
    skipped: set[SkippedLine] = set()
    readers = folder_readers(Path(args.source), settings.max_line_bytes, skipped)
    plan = plan_load(readers)

    async def run() -> int:
        # Each resource is written with an update (PUT), created if new.
        client = await connect(settings, args.fhir_url, writes=dict.fromkeys(readers, "cu"))
        async with client:
            with RichProgress(enabled=not args.no_progress) as progress:
                advance = progress.task("Loading resources", plan.resources)
                return await load_readers(
                    client, readers, plan=plan, per_bundle=args.per_bundle, progress=advance
                )

    written = asyncio.run(run())
    stdout.print(f"Loaded {written} resources into {args.fhir_url or settings.fhir_url}")
    if skipped:
        # Left out, the rest loaded: the input was doubtful (exit 1), as a screening says.
        for line in sorted(skipped):
            console.print(f"[yellow]{line.kind}[/] {escape(line.file)}:{line.line}: {line.message}")
        console.print(f"{len(skipped)} line(s) left out")
        return EXIT_PARTIAL
    return EXIT_OK


def cmd_subscriptions_install(args: argparse.Namespace) -> int:
    import asyncio

    from service.fhir.connect import connect
    from service.fhir.subscriptions import install, subscription_resources

    settings = settings_for(args)
    endpoint = args.endpoint or f"{(settings.public_url or '').rstrip('/')}/notifications"
    if not endpoint.startswith(("http://", "https://")):
        raise PrescreenError("give --endpoint URL or set PRESCREEN_PUBLIC_URL")
    headers = [f"X-API-Key: {args.api_key}"] if args.api_key else []
    rulesets = [catalog.load_trial(trial, settings) for trial in listed_trials(args, settings)]
    resources = subscription_resources(rulesets, endpoint, headers, settings.fhir_codes_per_request)

    async def run() -> int:
        client = await connect(settings, args.fhir_url, writes={"Subscription": "cu"})
        async with client:
            return await install(client, resources)

    stdout.print(f"Installed {asyncio.run(run())} Subscriptions notifying {endpoint}")
    return EXIT_OK
