"""The web worklist at hospital size: how long a coordinator waits for each page.

``python -m benchmarks.worklist [--patients 5000] [--spinal-fraction 0.2]
[--median-background 6] [--repeat 15]``

A synthetic hospital (one patient in five with a spinal metastasis, as in the shipped sample:
about a thousand cohort patients per trial at 5,000) is loaded into sekmet-fhir on 127.0.0.1;
``prescreen serve`` (its own process, SQLite) screens it for every trial with write-back, as
``make demo-ui`` does, then a signed-in client asks, one request at a time, after a few requests
to warm up:

- the worklist (default filters: the open rows), its first and its last page, and every status;
- the worklist sorted by each kind of column (name, left to check, status, follow-up) and
  filtered (new, changed since the person looked, mine and due, flagged for review), with 25 and
  200 rows a page; a fifth of the open rows are first assigned to the signed-in person with a
  follow-up date, some of them opened and changed by a colleague, a few flagged for review;
- a search by MRN and by part of a name (POST, as the page sends it);
- the patient page of a patient flagged for both trials (evidence read from the FHIR server);
- the screening log of every row (``/ui/worklist.csv?status=any``) and the API's
  (``/candidates.csv?status=any``);
- the overview after its first view, the list of the patients its largest funnel step ruled
  out, the feasibility page (counted from the worklist) and the access audit's first page.

Each row keeps the median and the slowest of ``--repeat`` requests (wall time at the client,
over HTTP on the loopback). Writes ``benchmarks/results/worklist.json``, ``.md``, ``.png``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from benchmarks import common
from benchmarks.common import AS_OF, folder_stats, write_outputs

PRESCREEN = str(Path(sys.executable).parent / "prescreen")
PATIENTS = 5_000
SPINAL_FRACTION = 0.2  # as in the shipped sample: about 1,000 cohort patients at 5,000
MEDIAN_BACKGROUND = 6  # few routine records: loading the server takes minutes
API_KEY = "benchmark-key"
USER, PASSWORD = "bench", "bench-password"
WARM_UP = 3
TARGETS = {"page": 0.3, "log": 2.0}  # seconds: each page; the screening log of every row


def population(patients: int, spinal_fraction: float, median_background: int) -> Path:
    return common.population(patients, "worklist", spinal_fraction, median_background)


def _load(base_url: str, folder: Path) -> float:
    from service.fhir.client import FhirClient
    from service.fhir.loader import folder_readers, load_readers

    async def load() -> float:
        started = time.perf_counter()
        async with FhirClient(base_url, timeout=300) as client:
            await load_readers(client, folder_readers(folder), per_bundle=500)
        return time.perf_counter() - started

    return asyncio.run(load())


def _serve(
    work: Path, fhir_url: str, port: int, ndjson_root: Path
) -> tuple[subprocess.Popen[bytes], str]:
    """``prescreen serve`` with a coordinator (and administrator) signed up; returns the
    process and its URL."""
    from tests.integration.servers import started, wait_until_up
    from tests.ui.harness import add_person

    database = f"sqlite:///{work / 'prescreen.db'}"
    add_person(database, USER, "coordinator,admin", password=PASSWORD)
    env = {
        **os.environ,
        "PRESCREEN_DATABASE_URL": database,
        "PRESCREEN_FHIR_URL": fhir_url,
        "PRESCREEN_PORT": str(port),
        "PRESCREEN_PUBLIC_URL": f"http://127.0.0.1:{port}",
        "PRESCREEN_UI_MODE": "local",
        "PRESCREEN_SESSION_SECRET": "benchmark-session-secret",
        "PRESCREEN_API_KEYS": json.dumps(
            {"bench": {"key": API_KEY, "scopes": ["runs", "candidates"]}}
        ),
        "PRESCREEN_LOG_LEVEL": "WARNING",
        "PRESCREEN_NDJSON_ROOTS": str(ndjson_root),
    }
    log = work / "serve.log"
    process = started(
        subprocess.Popen(
            [PRESCREEN, "serve"], cwd=work, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT
        )
    )
    url = f"http://127.0.0.1:{port}"
    wait_until_up(f"{url}/healthz", process, 180.0, log)
    return process, url


def _screen(url: str, source: str, folder: Path | None = None) -> dict[str, float]:
    """A run per trial, waited for; seconds each. ``fhir``: cohort discovery, with write-back;
    ``ndjson``: every patient of the folder."""
    seconds: dict[str, float] = {}
    with httpx.Client(base_url=url, headers={"X-API-Key": API_KEY}, timeout=60) as client:
        for trial in ("relieve", "ssrs"):
            started = time.perf_counter()
            body: dict[str, Any] = {"trial": trial, "as_of": AS_OF.isoformat()}
            if source == "fhir":
                body |= {"source": "fhir", "write_back": True}
            else:
                body |= {"source": "ndjson", "path": str(folder)}
            run_id = client.post("/runs", json=body).raise_for_status().json()["id"]
            while (state := client.get(f"/runs/{run_id}").json())["status"] not in (
                "done",
                "failed",
            ):
                time.sleep(1)
            if state["status"] != "done":
                raise RuntimeError(f"the {trial} run failed: {state['error']}")
            seconds[trial] = time.perf_counter() - started
            total = state["progress"]["total"]
            print(f"  {trial} ({source}): {total} screened in {seconds[trial]:.0f} s", flush=True)
    return seconds


def _signed_in(url: str) -> httpx.Client:
    """A client holding a signed-in session cookie (not yet used: it opens in a with block)."""
    with httpx.Client(base_url=url, timeout=60, follow_redirects=False) as client:
        token = _token(client.get("/ui/login").text)
        answer = client.post(
            "/ui/login", data={"username": USER, "password": PASSWORD, "csrf_token": token}
        )
        if answer.status_code != 303:
            raise RuntimeError(f"signing in failed: {answer.status_code}")
        cookies = client.cookies
    return httpx.Client(base_url=url, timeout=60, follow_redirects=False, cookies=cookies)


def _token(html: str) -> str:
    found = re.search(r'name="csrf_token" value="([^"]+)"', html)
    if found is None:
        raise RuntimeError("no CSRF token on the page")
    return found.group(1)


def _timed(ask: Any, repeat: int) -> tuple[float, float, httpx.Response]:
    """(median, slowest) seconds of ``repeat`` answers after the warm-up, and the last one."""
    for _ in range(WARM_UP):
        ask()
    times = []
    answer = None
    for _ in range(repeat):
        started = time.perf_counter()
        answer = ask()
        times.append(time.perf_counter() - started)
        if answer.status_code != 200:
            raise RuntimeError(f"answer {answer.status_code}")
    assert answer is not None
    return statistics.median(times), max(times), answer


def _examples(api: httpx.Client) -> tuple[str, str, str]:
    """A patient flagged for both trials, their MRN and a word of their name (from the API's
    screening log)."""
    import csv
    import io

    text = api.get("/candidates.csv", params={"status": "open"}).content.decode("utf-8-sig")
    rows = list(csv.DictReader(io.StringIO(text)))
    trials: dict[str, set[str]] = {}
    for row in rows:
        trials.setdefault(row["patient"], set()).add(row["trial"])
    both = sorted(p for p, t in trials.items() if len(t) == 2) or sorted(trials)
    row = next(r for r in rows if r["patient"] == both[0])
    return both[0].removeprefix("Patient/"), row["mrn"], row["name"].split(",")[0]


def _overview_asks(browser: httpx.Client) -> list[tuple[str, str, Any]]:
    """The overview (after the first: its funnels are kept until the rows change), the list
    behind its largest funnel step, the feasibility page and the access audit."""
    overview = browser.get("/ui/").text
    steps = re.findall(r'href="(/ui/overview/[^"]+)" aria-label="(\d+) patient', overview)
    widest, count = max(steps, key=lambda step: int(step[1]))
    return [
        ("overview (after the first)", "page", lambda: browser.get("/ui/")),
        (
            f"patients a funnel step ruled out ({int(count):,})",
            "page",
            lambda: browser.get(widest),
        ),
        ("feasibility page", "page", lambda: browser.get("/ui/feasibility")),
        ("access audit, first page", "page", lambda: browser.get("/ui/audit")),
    ]


def _pages(url: str, repeat: int, phase: str) -> list[dict[str, Any]]:
    """Every request of the list, timed, as the worklist stands now."""
    rows: list[dict[str, Any]] = []
    load = os.getloadavg()[0]
    with (
        _signed_in(url) as browser,
        httpx.Client(base_url=url, headers={"X-API-Key": API_KEY}, timeout=60) as api,
    ):
        patient, mrn, name = _examples(api)
        token = _token(browser.get("/ui/worklist").text)
        first = browser.get("/ui/worklist").text
        pages = int(re.search(r"Page 1 of (\d+)", first).group(1))  # type: ignore[union-attr]
        open_rows = int(re.search(r"(\d+) rows? \(", first).group(1))  # type: ignore[union-attr]
        every = browser.get("/ui/worklist", params={"status": "any"}).text
        all_rows = int(re.search(r"(\d+) rows? \(", every).group(1))  # type: ignore[union-attr]
        last_any = -(-all_rows // 25)
        asks = [
            ("worklist, first page", "page", lambda: browser.get("/ui/worklist")),
            (
                f"worklist, last page ({pages})",
                "page",
                lambda: browser.get("/ui/worklist", params={"page": pages}),
            ),
            (
                f"worklist, every status, last page ({last_any})",
                "page",
                lambda: browser.get("/ui/worklist", params={"status": "any", "page": last_any}),
            ),
            *(
                (f"worklist sorted: {what}", "page", _get(browser, params))
                for what, params in SORTED_AND_FILTERED
            ),
            (
                "search by MRN",
                "page",
                lambda: browser.post("/ui/search", data={"q": mrn, "csrf_token": token}),
            ),
            (
                "search by a family name",
                "page",
                lambda: browser.post("/ui/search", data={"q": name, "csrf_token": token}),
            ),
            (
                "patient page (two trials)",
                "page",
                lambda: browser.get(f"/ui/patients/{patient}", params={"trial": "relieve"}),
            ),
            (
                "screening log, every row (/ui)",
                "log",
                lambda: browser.get("/ui/worklist.csv", params={"status": "any"}),
            ),
            (
                "screening log, every row (API)",
                "log",
                lambda: api.get("/candidates.csv", params={"status": "any"}),
            ),
        ]
        asks += _overview_asks(browser)
        for what, kind, ask in asks:
            median, slowest, answer = _timed(ask, repeat)
            lines = answer.text.count("\n") - 1 if kind == "log" else None
            rows.append(
                {
                    "screened": phase,
                    "rows": all_rows,
                    "open_rows": open_rows,
                    "request": what,
                    "median_s": median,
                    "max_s": slowest,
                    "target_s": TARGETS[kind],
                    "met": "yes" if median < TARGETS[kind] else "NO",
                    "log_rows": lines,
                    "bytes": len(answer.content),
                    "load_1m": load,
                }
            )
            print(f"  {what}: median {median * 1000:.0f} ms, max {slowest * 1000:.0f} ms")
    return rows


# Sorted and filtered worklist pages: (what, query).
SORTED_AND_FILTERED: list[tuple[str, dict[str, str]]] = [
    ("by patient name A-Z", {"sort": "patient", "dir": "asc"}),
    ("by patient name, 200 a page, page 3", {"sort": "patient", "size": "200", "page": "3"}),
    ("by left to check, most first", {"sort": "to_check", "dir": "desc"}),
    (
        "every status by left to check, 200 a page",
        {"status": "any", "sort": "to_check", "size": "200"},
    ),
    ("every status by status, last page", {"status": "any", "sort": "status", "page": "999"}),
    ("new (opened by nobody) by trial", {"show": "new", "sort": "trial"}),
    ("changed since I looked, by change", {"show": "changed", "sort": "change"}),
    ("mine and due, by follow-up date", {"whose": "mine", "due": "1", "sort": "follow_up"}),
    ("every status, flagged for review", {"status": "any", "review": "1", "sort": "verdict"}),
    ("every status by assignee, 200 a page", {"status": "any", "sort": "assignee", "size": "200"}),
]


def _get(browser: httpx.Client, params: dict[str, str]) -> Any:
    return lambda: browser.get("/ui/worklist", params=params)


def _follow_ups(database: str) -> None:
    """A coordinator's day at scale: a fifth of the open rows assigned to the benchmark's
    person with a follow-up date (half of them due), a colleague opening and noting some, a
    few excluded patients flagged for review."""
    from datetime import date, timedelta

    from sqlalchemy import create_engine, select

    from service.state.models import Candidate
    from service.state.worklist import WorklistStore

    engine = create_engine(database)
    try:
        store = WorklistStore(engine)
        with store.session() as session:
            rows = list(session.scalars(select(Candidate).order_by(Candidate.id)))
        open_rows = [r for r in rows if r.status in ("candidate", "potential-candidate")]
        excluded = [r for r in rows if r.verdict == "ineligible"]
        today = date.today()
        for index, row in enumerate(open_rows[::5]):
            day = today - timedelta(days=1) if index % 2 else today + timedelta(days=7)
            store.set_follow_up(row.id, "colleague", USER, day)
        store.mark_seen(USER, open_rows[::3])
        store.mark_seen("colleague", open_rows[::7])
        for row in open_rows[::21]:
            store.add_note(row.id, "colleague", "called, no answer")
        for row in excluded[::50]:
            store.flag_for_review(row.id, "colleague", "Clinician judgement", "")
    finally:
        engine.dispose()


def measure(
    patients: int = PATIENTS,
    spinal_fraction: float = SPINAL_FRACTION,
    median_background: int = MEDIAN_BACKGROUND,
    repeat: int = 15,
) -> list[dict[str, Any]]:
    """The pages once the cohort is screened (FHIR runs with write-back, as ``make demo-ui``),
    then once every patient of the hospital has a row for every trial (NDJSON runs)."""
    from tests.integration.servers import SekmetServer, free_port, stop_process

    folder = population(patients, spinal_fraction, median_background)
    stats = folder_stats(folder)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch)
        fhir = SekmetServer(work / "sekmet").start()
        serve = None
        try:
            print(f"  loading {stats['resources']:,} resources into sekmet-fhir ...", flush=True)
            load_seconds = _load(fhir.base_url, folder)
            print(f"  loaded in {load_seconds:.0f} s", flush=True)
            serve, url = _serve(work, fhir.base_url, free_port(), folder.parent)
            run_seconds = _screen(url, "fhir")
            _follow_ups(f"sqlite:///{work / 'prescreen.db'}")
            rows += _pages(url, repeat, "the cohort (FHIR runs)")
            run_seconds |= {f"{t} ndjson": s for t, s in _screen(url, "ndjson", folder).items()}
            _follow_ups(f"sqlite:///{work / 'prescreen.db'}")
            rows += _pages(url, repeat, "every patient (NDJSON runs)")
            for row in rows:
                row |= {"patients": patients, "resources": stats["resources"]}
                row |= {"load_s": load_seconds}
                row |= {f"screen {k} s": v for k, v in run_seconds.items()}
        finally:
            if serve is not None:
                stop_process(serve, grace=15)
            fhir.stop()
    return rows


def report(rows: list[dict[str, Any]]) -> None:
    first = rows[0]
    runs = ", ".join(f"{k[7:-2]} {v:.0f} s" for k, v in first.items() if k.startswith("screen "))
    notes = [
        f"{first['patients']:,} patients ({first['resources']:,} resources) on sekmet-fhir, "
        "screened for RELIEVE and SSRS by `prescreen serve`: first the cohort (FHIR runs with "
        "write-back, as `make demo-ui`), then every patient (NDJSON runs of the same hospital), "
        f"one run per trial ({runs}). rows: the worklist's rows (a patient and a trial); "
        "open_rows: the worklist's default list (statuses still open). Before the pages are "
        "timed, a fifth of the open rows are assigned with a follow-up date (half due), some "
        "opened and noted by a colleague, a few excluded patients flagged for review.",
        "median_s, max_s: wall time at the client of one request at a time (after "
        f"{WARM_UP} to warm up), over HTTP on 127.0.0.1, SQLite; targets: 0.3 s a page, "
        "2 s the screening log of every row.",
        "The patient page reads its evidence and ResearchSubjects from the FHIR server on every "
        "request. The overview, the patients of a funnel step and the feasibility page keep what "
        "they counted until a trial's rows change: timed after their first view.",
        "Load of the machine (1-minute load average, 2 cores shared with other work) when each "
        "phase's pages were timed: "
        + ", ".join(sorted({f"{r['screened']}: {r['load_1m']:.1f}" for r in rows}))
        + ".",
    ]

    def plot(axes: Any) -> None:
        labels = [f"{r['request']} [{r['rows']:,} rows]" for r in rows]
        axes.barh(labels, [r["median_s"] for r in rows], color="tab:blue")
        for target in sorted({r["target_s"] for r in rows}):
            axes.axvline(target, color="tab:red", linestyle="--", linewidth=1)
        axes.invert_yaxis()
        axes.tick_params(axis="y", labelsize=6)
        axes.set_xlabel("seconds (median)")
        axes.set_title(f"Web worklist at {first['patients']:,} patients")

    columns = ["screened", "rows", "open_rows", "request", "median_s", "max_s", "target_s"]
    write_outputs("worklist", rows, [*columns, "met", "log_rows", "bytes"], notes, plot)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    common.population_arguments(parser, PATIENTS, SPINAL_FRACTION, MEDIAN_BACKGROUND)
    parser.add_argument("--repeat", type=int, default=15, help="requests of each, after warm-up")
    args = parser.parse_args()
    report(measure(args.patients, args.spinal_fraction, args.median_background, args.repeat))


if __name__ == "__main__":
    main()
