"""The FHIR Bulk Data Access protocol (``$export``): kick-off, status polling, cancellation.

Kick-off: ``GET [base]/$export`` (or ``Patient/$export``, ``Group/<id>/$export``) with
``Prefer: respond-async``; the server answers 202 and the status URL in ``Content-Location``.
Polling: 202 while the export runs (``X-Progress`` says how far, ``Retry-After`` when to ask
again), 200 with the manifest when it is done, 4xx/5xx with an OperationOutcome when it failed.
A 429, 502, 503 or 504, a network error, or an error whose OperationOutcome says the problem is
transient is a failed *poll*, not a failed export: it is retried (``Retry-After``, else
exponential back-off with jitter) up to the client's retry count in a row. ``DELETE`` on the
status URL cancels a running export or lets the server remove a finished one's files.

Requests go through the FhirClient's credentials and are counted in its statistics; the status
URL must be on the FHIR server's origin (the credentials go with it).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncGenerator, Awaitable, Callable, Generator
from dataclasses import dataclass

import httpx
import orjson

from service.errors import FhirServerError, FhirUnavailableError
from service.fhir.bulk.plan import ExportRequest
from service.fhir.client import FHIR_JSON, FhirClient, Json, operation_outcome_text
from service.fhir.client import retry_after_seconds as parse_retry_after

TRANSIENT_STATUSES = frozenset({429, 502, 503, 504})
# OperationOutcome issue codes of the "transient" branch that mean "ask again later" (the IG:
# a polling failure that is not a failure of the job carries a transient code). "exception"
# is in that branch too, but servers use it for jobs that failed for good.
TRANSIENT_ISSUES = frozenset({"transient", "throttled", "timeout", "lock-error", "no-store"})
# The longest wait a Retry-After is honoured for by default; a server asking more is
# misconfigured.
MAX_RETRY_AFTER = 3600.0
_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")


class BulkExportError(FhirServerError):
    """The export failed, or its answer cannot be used. ``diagnostics`` holds the server's
    OperationOutcome text (kept out of the message: it may quote patient data)."""


class ExportGoneError(BulkExportError):
    """The server no longer knows the job or one of its files (404/410): it expired or was
    deleted. A new export is the way forward."""


def issue_codes(body: bytes) -> set[str]:
    try:
        outcome = orjson.loads(body)
    except orjson.JSONDecodeError:
        return set()
    if not isinstance(outcome, dict) or outcome.get("resourceType") != "OperationOutcome":
        return set()
    return {
        str(issue.get("code"))
        for issue in outcome.get("issue") or []
        if isinstance(issue, dict) and issue.get("code")
    }


def is_transient(status: int, body: bytes) -> bool:
    if status in TRANSIENT_STATUSES:
        return True
    return status >= 500 and bool(issue_codes(body) & TRANSIENT_ISSUES)


@dataclass(frozen=True)
class BodyLimits:
    """The most bytes read of what an export's server sends: a status answer (progress, an
    error), the manifest, one exported file (as stored). Passing one is an error."""

    status: int = 1 << 20
    manifest: int = 64 << 20
    file: int = 32 << 30


async def read_bounded(response: httpx.Response, limit: int, what: str, setting: str) -> bytes:
    """A streamed response's body, refused past ``limit`` bytes (decoded), never held whole."""
    declared = response.headers.get("Content-Length", "")
    if declared.isdigit() and int(declared) > limit:
        raise TooLargeError(what, limit, setting)
    body = bytearray()
    async for chunk in response.aiter_bytes():
        body += chunk
        if len(body) > limit:
            raise TooLargeError(what, limit, setting)
    return bytes(body)


class TooLargeError(BulkExportError):
    def __init__(self, what: str, limit: int, setting: str) -> None:
        super().__init__(
            f"{what} is larger than {limit} bytes, the bound set by {setting}: refused (raise "
            "the bound if the server's answers are that large; the export job is kept, so the "
            "same command resumes it)"
        )


def progress_text(value: str | None) -> str:
    """``X-Progress`` fit for a progress line: one line, short (it is the server's text)."""
    return _CONTROL.sub(" ", value or "").strip()[:80]


class StreamingAuth(httpx.Auth):
    """Another auth's credentials, without reading every response body into memory.

    httpx reads each response in full for an auth flow that needs response bodies (the SMART
    flow does, for its token responses): a multi-gigabyte export file would be held in memory
    instead of streamed to disk. This runs the same flow but reads only the bodies of the
    requests the flow itself makes (token requests) and of a 401, which is sent again.
    """

    def __init__(self, inner: httpx.Auth) -> None:
        self.inner = inner

    def sync_auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response]:
        raise RuntimeError("the bulk client is asynchronous")  # pragma: no cover

    async def async_auth_flow(
        self, request: httpx.Request
    ) -> AsyncGenerator[httpx.Request, httpx.Response]:
        flow = self.inner.auth_flow(request)
        outgoing = next(flow)
        while True:
            response = yield outgoing
            if outgoing is not request or response.status_code == 401:
                await response.aread()
            try:
                outgoing = flow.send(response)
            except StopIteration:
                return


@dataclass(frozen=True)
class PollPolicy:
    """How often to ask: ``Retry-After`` when the server gives one (at most
    ``max_retry_after``, at least ``min_interval``), else from ``first`` seconds growing by half
    each time up to ``cap``; give up after ``max_wait`` seconds of waiting (the job is kept: a
    later run resumes it)."""

    first: float = 2.0
    cap: float = 60.0
    max_wait: float = 86_400.0
    max_retry_after: float = MAX_RETRY_AFTER
    # The shortest wait before asking again, whatever the server says: a Retry-After of 0 or
    # in the past (or a back-off drawn near 0) must not become a request loop.
    min_interval: float = 1.0

    def bounded(self, wait: float) -> float:
        return max(self.min_interval, min(wait, self.max_retry_after))


Sleep = Callable[[float], Awaitable[None]]
ProgressNote = Callable[[str], None]


class BulkClient:
    """Bulk Data requests to one FHIR server, with that server's credentials."""

    def __init__(
        self,
        client: FhirClient,
        *,
        timeout: float = 30.0,
        poll: PollPolicy | None = None,
        limits: BodyLimits | None = None,
        sleep: Sleep = asyncio.sleep,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.fhir = client
        self.poll = poll or PollPolicy()
        self.limits = limits or BodyLimits()
        self.sleep = sleep
        self.auth: httpx.Auth | None = StreamingAuth(client.auth) if client.auth else None
        self.waited = 0.0  # seconds spent waiting for the server, for the run's report
        # Credentials are passed per request (never as the client default), so a request
        # elsewhere (an output file on a storage service) can be sent without them.
        self.http = httpx.AsyncClient(
            timeout=httpx.Timeout(timeout), follow_redirects=False, transport=transport
        )

    async def __aenter__(self) -> BulkClient:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.http.aclose()

    @property
    def attempts(self) -> int:
        return self.fhir.retry.attempts

    def count(self, kind: str) -> None:
        self.fhir.stats.requests += 1
        self.fhir.stats.by_kind[kind] += 1

    def backoff(self, attempt: int) -> float:
        return self.fhir.retry.backoff(attempt)

    async def wait(self, seconds: float) -> None:
        self.waited += seconds
        await self.sleep(seconds)

    # --- kick-off ---------------------------------------------------------------------------

    async def kick_off(self, request: ExportRequest, method: str = "GET") -> str:
        """Start the export (``GET`` with query parameters, or ``POST`` with a Parameters
        resource); returns its status URL."""
        headers = {"Prefer": "respond-async", "Accept": FHIR_JSON}
        if method == "POST":
            response, _body = await self.fhir.request(
                "POST",
                request.path,
                json=request.parameters(),
                headers=headers,
                kind="bulk kick-off",
            )
        else:
            response, _body = await self.fhir.request(
                "GET", request.path, params=request.params(), headers=headers, kind="bulk kick-off"
            )
        location = response.headers.get("Content-Location")
        if response.status_code != 202 or not location:
            raise BulkExportError(
                f"the $export kick-off answered HTTP {response.status_code} "
                f"{'without' if not location else 'with'} a status URL (expected 202 and "
                "Content-Location)",
                status=response.status_code,
            )
        return self.status_url(location)

    def status_url(self, location: str) -> str:
        try:
            return self.fhir.url(location, link=True)
        except FhirServerError as exc:
            raise BulkExportError(
                "the export's status URL is on another origin than the FHIR server; refusing "
                "to send the credentials there"
            ) from exc

    # --- polling ----------------------------------------------------------------------------

    async def _status(self, method: str, url: str) -> tuple[httpx.Response, bytes]:
        """One request to the status URL: the answer and its body, read within the bounds."""
        self.count(f"bulk {method.lower()}")
        request = self.http.build_request(method, url, headers={"Accept": FHIR_JSON})
        response = await self.http.send(request, auth=self.auth, stream=True)
        try:
            if response.status_code == 200 and method == "GET":
                limit, what, setting = (
                    self.limits.manifest,
                    "the export's manifest",
                    "PRESCREEN_BULK_MAX_MANIFEST_BYTES",
                )
            else:
                limit, what, setting = (
                    self.limits.status,
                    "an answer of the export's status URL",
                    "PRESCREEN_BULK_MAX_STATUS_BYTES",
                )
            body = await read_bounded(response, limit, what, setting)
        finally:
            await response.aclose()
        return response, body

    async def wait_for_manifest(self, status_url: str, note: ProgressNote | None = None) -> Json:
        """Poll until the export is complete; returns the manifest."""
        delay = self.poll.first
        failures = 0
        waited = 0.0
        while True:
            wait: float
            try:
                response, body = await self._status("GET", status_url)
            except httpx.TransportError as exc:
                failures += 1
                if failures >= self.attempts:
                    raise FhirUnavailableError(
                        f"the export's status could not be read {failures} times in a row: "
                        f"{type(exc).__name__}"
                    ) from exc
                wait = self.backoff(failures)
            else:
                status = response.status_code
                retry_after = parse_retry_after(response.headers.get("Retry-After"))
                if status == 200:
                    return self._manifest(body)
                if status == 202:
                    failures = 0
                    if note is not None:
                        note(progress_text(response.headers.get("X-Progress")) or "in progress")
                    if retry_after is None:
                        wait, delay = delay, min(delay * 1.5, self.poll.cap)
                    else:
                        wait = retry_after
                elif is_transient(status, body):
                    failures += 1
                    if failures >= self.attempts:
                        raise FhirUnavailableError(
                            f"the export's status answered HTTP {status} {failures} times in a row"
                        )
                    wait = self.backoff(failures) if retry_after is None else retry_after
                elif status in (404, 410):
                    raise ExportGoneError(
                        f"the server no longer knows this export (HTTP {status}): it expired "
                        "or was deleted",
                        status=status,
                        diagnostics=operation_outcome_text(body),
                    )
                else:
                    raise BulkExportError(
                        f"the export failed: its status answered HTTP {status}",
                        status=status,
                        diagnostics=operation_outcome_text(body),
                    )
            wait = self.poll.bounded(wait)
            if waited + wait > self.poll.max_wait:
                raise BulkExportError(
                    f"the export was not finished after waiting {waited:.0f}s; it is kept on "
                    "the server: run the same command again to go on waiting"
                )
            waited += wait
            await self.wait(wait)

    def _manifest(self, body: bytes) -> Json:
        try:
            manifest = orjson.loads(body)
        except orjson.JSONDecodeError:
            manifest = None
        if not isinstance(manifest, dict) or not isinstance(manifest.get("output"), list):
            raise BulkExportError(
                "the export finished, but its manifest is not a JSON object with an output list"
            )
        return manifest

    # --- the end ----------------------------------------------------------------------------

    async def delete(self, status_url: str) -> bool:
        """Cancel the export, or let the server drop a finished one's files. True when the
        server took it (or no longer had it)."""
        for attempt in range(self.attempts):
            try:
                response, body = await self._status("DELETE", status_url)
            except httpx.TransportError:
                await self.wait(self.poll.bounded(self.backoff(attempt)))
                continue
            except BulkExportError:
                return False  # an answer past the bound: the deletion is not confirmed
            if is_transient(response.status_code, body):
                retry_after = parse_retry_after(response.headers.get("Retry-After"))
                wait = self.backoff(attempt) if retry_after is None else retry_after
                await self.wait(self.poll.bounded(wait))
                continue
            return response.status_code < 300 or response.status_code in (404, 410)
        return False
