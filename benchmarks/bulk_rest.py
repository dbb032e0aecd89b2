"""Bulk Data export + screen against REST screening of the same population, on HAPI FHIR.

``python -m benchmarks.bulk_rest [--patients 5000] [--spinal-fraction 0.02]
[--median-background 3] [--no-rest-all]``

HAPI FHIR (the JVM the integration suite builds and starts, tests/integration/servers.py) is
started once on 127.0.0.1 and loaded with a synthetic hospital by ``prescreen load``. Then
each way of screening it runs as a whole ``prescreen screen`` process (start-up included, as
``/usr/bin/time`` measures), through a small counting reverse proxy written here, so the
requests and bytes are those that crossed the wire:

- ``bulk``: ``--bulk`` (Patient/$export with the mappings' _type/_typeFilter, download, screen
  the folder, delete the job);
- ``rest cohort``: REST searches, patients found by cohort discovery (the default live run);
- ``rest all``: REST searches for every patient on the server (``--patients-file``), the same
  population the export covers.

The verdicts are compared: bulk against an offline run of the generated folder and against
REST for every patient it screened. Writes ``benchmarks/results/bulk_rest.json``, ``.md``,
``.png``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks import common
from benchmarks.common import AS_OF, folder_stats, write_outputs

PRESCREEN = str(Path(sys.executable).parent / "prescreen")
PATIENTS = 5_000
SPINAL_FRACTION = 0.02  # the synthetic hospital's usual share (about 100 cohort patients in 5k)
MEDIAN_BACKGROUND = 3  # few routine records: loading HAPI takes minutes, not hours
# HAPI answers every status poll with Retry-After: 120. A production run honours it; here it
# would only measure that wait, so polls are as in the integration suite (0.5 s, then <= 2 s).
QUICK_POLLS = {
    "PRESCREEN_BULK_POLL_SECONDS": "0.5",
    "PRESCREEN_BULK_POLL_MAX_SECONDS": "2",
    "PRESCREEN_BULK_RETRY_AFTER_MAX_SECONDS": "2",
}


def population(patients: int, spinal_fraction: float, median_background: int) -> Path:
    return common.population(patients, "bulk", spinal_fraction, median_background)


# --- the counting proxy -----------------------------------------------------------------------


@dataclass
class WireCount:
    requests: int = 0
    bytes_sent: int = 0  # client -> server, request lines, headers and bodies
    bytes_received: int = 0  # server -> client, status lines, headers and bodies as sent
    by_kind: Counter[str] = field(default_factory=Counter)
    unparsed: int = 0  # connections whose request stream could not be followed (chunked bodies)


class _RequestStream:
    """Follows one connection's client-to-server bytes and counts each HTTP/1.1 request: the
    header block, then a body of its Content-Length."""

    def __init__(self, count: WireCount) -> None:
        self.count = count
        self.buffer = bytearray()
        self.body_left = 0
        self.lost = False

    def feed(self, data: bytes) -> None:
        if self.lost:
            return
        self.buffer += data
        while True:
            if self.body_left:
                taken = min(self.body_left, len(self.buffer))
                del self.buffer[:taken]
                self.body_left -= taken
                if self.body_left:
                    return
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self.buffer[:end]).decode("latin-1").split("\r\n")
            del self.buffer[: end + 4]
            method, target = [*head[0].split(" "), "", ""][:2]
            headers = {
                name.strip().lower(): value.strip()
                for name, _, value in (line.partition(":") for line in head[1:])
            }
            self.count.requests += 1
            self.count.by_kind[f"{method} {_kind(target)}"] += 1
            if "chunked" in headers.get("transfer-encoding", "").lower():
                self.count.unparsed += 1
                self.lost = True
                return
            self.body_left = int(headers.get("content-length", "0") or 0)


def _kind(target: str) -> str:
    """The first path segment after the FHIR base (a resource type or an operation), never an
    id or a query: what a request was for, without patient data."""
    path = target.split("?", 1)[0].split("/")
    segments = [s for s in path if s]
    if segments and segments[0] == "fhir":
        segments = segments[1:]
    operations = [s for s in segments if s.startswith("$")]
    if operations:
        return operations[-1]  # Patient/$export is the kick-off, not a Patient read
    return segments[0] if segments else "[base]"


class CountingProxy:
    """A TCP relay on 127.0.0.1 in front of the server, in a thread with its own event loop.
    The Host header passes unchanged, so the server's links name the proxy."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.count = WireCount()
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None

    def start(self) -> CountingProxy:
        self._thread.start()
        self._server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._connection, "127.0.0.1", 0), self._loop
        ).result()
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)

    def reset(self) -> WireCount:
        """The counts so far, and a fresh count from now on."""
        done, self.count = self.count, WireCount()
        return done

    async def _connection(
        self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter
    ) -> None:
        try:
            server_reader, server_writer = await asyncio.open_connection(
                "127.0.0.1", self.upstream_port
            )
        except OSError:
            client_writer.close()
            return
        count = self.count
        stream = _RequestStream(count)

        async def pump(
            source: asyncio.StreamReader, sink: asyncio.StreamWriter, upstream: bool
        ) -> None:
            try:
                while data := await source.read(256 * 1024):
                    if upstream:
                        count.bytes_sent += len(data)
                        stream.feed(data)
                    else:
                        count.bytes_received += len(data)
                    sink.write(data)
                    await sink.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                sink.close()

        await asyncio.gather(
            pump(client_reader, server_writer, True), pump(server_reader, client_writer, False)
        )


# --- runs ---------------------------------------------------------------------------------------


def run_process(command: list[str], env: dict[str, str] | None = None) -> dict[str, Any]:
    """One whole process: wall time, CPU time of it and its children, exit code."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run(
        command, capture_output=True, text=True, env={**os.environ, **(env or {})}, check=False
    )
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if done.returncode not in (0, 1):  # 1: some patients need review or were not screened
        raise RuntimeError(f"{command[:3]} exited {done.returncode}:\n{done.stderr[-3000:]}")
    return {"wall_s": wall, "cpu_s": cpu, "exit": done.returncode, "stdout": done.stdout}


def screen_command(fhir_url: str, out: Path, *extra: str) -> list[str]:
    return [
        PRESCREEN,
        "screen",
        "--trial",
        "relieve",
        "--fhir-url",
        fhir_url,
        "--as-of",
        AS_OF.isoformat(),
        "--out",
        str(out),
        "--no-progress",
        *extra,
    ]


def verdicts(out: Path) -> dict[str, Any]:
    lines = (out / "verdicts.ndjson").read_text().splitlines()
    return {v["patient"]: v for v in map(json.loads, lines) if v}


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU time of a running process, all its threads (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def export_summary(stdout: str) -> dict[str, Any]:
    """What ``prescreen screen --bulk`` printed about its export: the time spent waiting for
    the server's job, and whether _typeFilter was sent."""
    text = " ".join(stdout.split())
    waited = re.search(r"(\d+)s waiting for the server", text)
    type_filter = re.search(r"_typeFilter (sent|not sent)", text)
    return {
        "export_wait_s": float(waited.group(1)) if waited else None,
        "type_filter": type_filter.group(1) if type_filter else None,
    }


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.glob("*.ndjson"))


def measure(
    patients: int = PATIENTS,
    spinal_fraction: float = SPINAL_FRACTION,
    median_background: int = MEDIAN_BACKGROUND,
    rest_all: bool = True,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    from tests.integration.servers import HapiServer

    folder = population(patients, spinal_fraction, median_background)
    stats = folder_stats(folder)
    context: dict[str, Any] = {
        "patients": patients,
        "resources": stats["resources"],
        "population_mb": stats["bytes"] / 1e6,
    }
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch)
        offline_out = work / "offline"
        offline = run_process(
            [
                *[PRESCREEN, "screen", "--trial", "relieve", "--source", str(folder)],
                *["--as-of", AS_OF.isoformat(), "--out", str(offline_out), "--no-progress"],
            ]
        )
        context["offline_s"] = offline["wall_s"]
        expected = verdicts(offline_out)
        server = HapiServer(work / "hapi")
        proxy: CountingProxy | None = None
        try:
            print("  starting HAPI FHIR ...", flush=True)
            server.start()
            context["hapi_startup_s"] = server.startup_seconds
            print(f"  HAPI up after {server.startup_seconds:.0f} s; loading ...", flush=True)
            load = run_process(
                [
                    PRESCREEN,
                    "load",
                    "--source",
                    str(folder),
                    "--fhir-url",
                    server.base_url,
                    "--no-progress",
                ]
            )
            context["load_s"] = load["wall_s"]
            print(f"  loaded {stats['resources']:,} resources in {load['wall_s']:.0f} s")
            proxy = CountingProxy(server.port).start()
            base = f"http://127.0.0.1:{proxy.port}/fhir"
            ids = work / "all-patients.txt"
            ids.write_text("".join(f"{key.removeprefix('Patient/')}\n" for key in expected))

            # A first REST run warms the JVM up (JIT, caches); it is not reported.
            run_process(screen_command(base, work / "warm-up"))
            proxy.reset()
            runs: list[tuple[str, list[str], dict[str, str]]] = [
                ("bulk", ["--bulk"], QUICK_POLLS),
                ("rest cohort", [], {}),
            ]
            if rest_all:
                runs.append(("rest all", ["--patients-file", str(ids)], {}))
            for name, extra, env in runs:
                out = work / name.replace(" ", "-")
                print(f"  {name} ...", flush=True)
                assert server.process is not None
                server_cpu = process_cpu_seconds(server.process.pid)
                timing = run_process(screen_command(base, out, *extra), env)
                server_cpu = process_cpu_seconds(server.process.pid) - server_cpu
                wire = proxy.reset()
                got = verdicts(out)
                row = {
                    "run": name,
                    "screened": len(got),
                    "wall_s": timing["wall_s"],
                    "cpu_s": timing["cpu_s"],
                    "server_cpu_s": server_cpu,
                    "requests": wire.requests,
                    "mb_sent": wire.bytes_sent / 1e6,
                    "mb_received": wire.bytes_received / 1e6,
                    "same_verdicts_as_offline": all(expected.get(p) == v for p, v in got.items()),
                    "requests_by_kind": ", ".join(
                        f"{kind} {n}" for kind, n in sorted(wire.by_kind.items())
                    ),
                }
                if wire.unparsed:
                    row["connections_not_followed"] = wire.unparsed
                if name == "bulk":
                    row["export_mb_on_disk"] = folder_bytes(out / "bulk") / 1e6
                    row.update(export_summary(timing["stdout"]))
                    row["same_verdicts_as_offline"] = got == expected
                rows.append(row)
                print(f"  {name}: {row}", flush=True)
                context[f"verdicts {name}"] = got
        finally:
            if proxy is not None:
                proxy.stop()
            server.stop()
    # Bulk against REST, patient by patient, for every patient a REST run screened.
    by_bulk = context.pop("verdicts bulk")
    for row in rows:
        if row["run"] != "bulk":
            got = context.pop(f"verdicts {row['run']}")
            row["same_verdicts_as_bulk"] = all(by_bulk.get(p) == v for p, v in got.items())
    return rows, context


def report(rows: list[dict[str, Any]], context: dict[str, Any]) -> None:
    c = context
    notes = [
        f"Population: {c['patients']:,} synthetic patients, {c['resources']:,} resources "
        f"({c['population_mb']:.1f} MB NDJSON); offline screen of the same folder "
        f"{c['offline_s']:.1f} s.",
        f"HAPI FHIR 8.8.0 (JPA, H2 in memory, -Xmx1536m) on 127.0.0.1: up after "
        f"{c['hapi_startup_s']:.0f} s; `prescreen load` of the population took "
        f"{c['load_s']:.0f} s.",
        "Each run is a whole `prescreen screen --trial relieve --fhir-url URL` process (start-up "
        "included), after one unreported REST run that warms the JVM up; no write-back. "
        "cpu_s: CPU time of the prescreen process; server_cpu_s: CPU time HAPI's JVM used "
        "meanwhile.",
        "Requests and bytes: counted by a TCP relay between prescreen and HAPI (HTTP/1.1 "
        "request lines, headers and bodies as they crossed, compressed where the server "
        "compressed them).",
        "bulk: Patient/$export with _type/_typeFilter from the mappings, kick-off, status polls "
        "(0.5 s then <= 2 s here: HAPI asks 120 s between polls, which a production run "
        "honours), downloads, the offline screen of the folder, DELETE of the job; "
        "export_wait_s: the part of wall_s spent waiting for HAPI's export job (as prescreen "
        "reports it); type_filter: whether _typeFilter was sent (HAPI declares it).",
        "rest cohort: the cohort found by a Condition search, then batches of 25 patients; "
        "rest all: every patient on the server by id (--patients-file), the population the "
        "export covers.",
        "same_verdicts_as_offline: the run's verdicts equal those of `--source` on the "
        "generated folder for every patient it screened (bulk: for every patient); "
        "same_verdicts_as_bulk: likewise against the bulk run.",
    ]

    def plot(axes: Any) -> None:
        names = [row["run"] for row in rows]
        axes.bar(names, [row["wall_s"] for row in rows], color="tab:blue")
        axes.set_ylabel("seconds, whole process")
        for index, row in enumerate(rows):
            axes.annotate(
                f"{row['requests']:,} req\n{row['mb_received']:.1f} MB",
                (index, row["wall_s"]),
                ha="center",
                va="bottom",
                fontsize=8,
            )
        axes.set_title(f"Bulk export vs REST on HAPI FHIR, {c['patients']:,} patients")
        axes.margins(y=0.2)

    columns = [
        "run",
        "screened",
        "wall_s",
        "cpu_s",
        "server_cpu_s",
        "requests",
        "mb_sent",
        "mb_received",
        "export_mb_on_disk",
        "export_wait_s",
        "type_filter",
        "same_verdicts_as_offline",
        "same_verdicts_as_bulk",
        "requests_by_kind",
    ]
    for row in rows:
        for key in ("same_verdicts_as_offline", "same_verdicts_as_bulk"):
            if key in row:
                row[key] = "yes" if row[key] else "NO"
    write_outputs("bulk_rest", rows, columns, notes, plot)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    common.population_arguments(parser, PATIENTS, SPINAL_FRACTION, MEDIAN_BACKGROUND)
    parser.add_argument(
        "--no-rest-all", action="store_true", help="skip REST screening of every patient"
    )
    args = parser.parse_args()
    rows, context = measure(
        args.patients, args.spinal_fraction, args.median_background, not args.no_rest_all
    )
    report(rows, context)


if __name__ == "__main__":
    main()
