"""Downloading a Bulk Data export's files, resumably, a few at a time.

Each file grows under ``<Type>.<n>.part`` and is renamed to ``<Type>.<n>.ndjson`` (or
``.ndjson.gz`` when the server sent it gzip-encoded: the bytes are stored as they came, so a
byte range asked for later means the same bytes) once complete. A file cut short (a dropped
connection, a killed run) continues from its last byte with an HTTP ``Range`` request, guarded
by ``If-Range`` with the ETag or Last-Modified of the first answer; a server that answers the
whole file instead (no range support, or the file changed) has that file started again.

Credentials: the manifest's ``requiresAccessToken`` says whether files need the access token.
When they do, it is sent only to the FHIR server's origin; a file elsewhere that needs it is
refused rather than handed our token. A redirect to another origin is followed without it.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import urljoin, urlsplit

import httpx

from service.errors import FhirUnavailableError, PrescreenError
from service.fhir.bulk.job import ExportFile
from service.fhir.bulk.kickoff import (
    BulkClient,
    BulkExportError,
    ExportGoneError,
    TooLargeError,
    is_transient,
    read_bounded,
)
from service.fhir.bulk.plan import NDJSON
from service.fhir.client import operation_outcome_text
from service.fhir.client import retry_after_seconds as parse_retry_after
from service.private_files import open_private, private_folder

REDIRECTS = frozenset({301, 302, 303, 307, 308})
MAX_REDIRECTS = 5
_CONTENT_RANGE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)")


def origin(url: str) -> tuple[str, str]:
    parts = urlsplit(url)
    return parts.scheme.lower(), parts.netloc.lower()


def range_starts_at(content_range: str | None, offset: int) -> bool:
    match = _CONTENT_RANGE.fullmatch((content_range or "").strip())
    return match is not None and int(match.group(1)) == offset


@dataclass
class _Outcome:
    kind: Literal["done", "restart", "retry"]
    problem: str = ""
    retry_after: float | None = None


class FileDownloader:
    """Downloads export files into a folder; ``save`` persists the job after each change."""

    def __init__(
        self,
        bulk: BulkClient,
        folder: Path,
        *,
        requires_token: bool,
        save: Callable[[], None],
    ) -> None:
        self.bulk = bulk
        self.folder = folder
        self.requires_token = requires_token
        self.save = save
        self.fetched = 0  # files downloaded (or finished) by this run

    def _credentials(self, url: str, first_hop: bool) -> httpx.Auth | None:
        if not self.requires_token:
            return None
        if origin(url) == origin(self.bulk.fhir.base_url):
            return self.bulk.auth
        if first_hop:
            raise BulkExportError(
                "the export manifest requires the access token for a file on another origin "
                "than the FHIR server; refusing to send the token there"
            )
        return None  # a redirect away from the server: followed without our credentials

    @asynccontextmanager
    async def _get(self, url: str, headers: dict[str, str]) -> AsyncIterator[httpx.Response]:
        for hop in range(MAX_REDIRECTS + 1):
            if urlsplit(url).scheme.lower() not in ("http", "https"):
                raise BulkExportError("an export file URL is not an http(s) URL")
            auth = self._credentials(url, first_hop=hop == 0)
            self.bulk.count("bulk file")
            request = self.bulk.http.build_request("GET", url, headers=headers)
            response = await self.bulk.http.send(request, auth=auth, stream=True)
            location = response.headers.get("Location")
            if response.status_code in REDIRECTS and location:
                await response.aclose()
                url = urljoin(url, location)
                continue
            try:
                yield response
            finally:
                await response.aclose()
            return
        raise BulkExportError(f"an export file redirects more than {MAX_REDIRECTS} times")

    async def download(self, file: ExportFile) -> None:
        if file.url is None:
            raise PrescreenError("an export file without a URL cannot be downloaded")
        part = self.folder / file.part_name
        private_folder(part.parent)
        ranged = True  # False once the server has shown it cannot continue this file
        failures = 0
        while True:
            offset = part.stat().st_size if part.exists() and ranged else 0
            headers = {"Accept": NDJSON, "Accept-Encoding": "gzip"}
            if offset:
                headers["Range"] = f"bytes={offset}-"
                strong_etag = file.etag if file.etag and not file.etag.startswith("W/") else None
                validator = strong_etag or file.last_modified
                if validator:
                    headers["If-Range"] = validator
            try:
                async with self._get(file.url, headers) as response:
                    outcome = await self._receive(file, part, response, offset)
            except httpx.TransportError as exc:
                outcome = _Outcome("retry", type(exc).__name__)
            except TooLargeError:
                # Nothing half-written stays behind, and nothing passes for complete.
                part.unlink(missing_ok=True)
                file.bytes = 0
                self.save()
                raise
            if outcome.kind == "done":
                break
            if outcome.kind == "restart":
                ranged = False
                part.unlink(missing_ok=True)
                continue
            failures += 1
            if failures >= self.bulk.attempts:
                raise FhirUnavailableError(
                    f"an export file could not be downloaded after {failures} attempts: "
                    f"{outcome.problem}"
                )
            wait = outcome.retry_after
            await self.bulk.wait(
                self.bulk.poll.bounded(self.bulk.backoff(failures) if wait is None else wait)
            )
        final = self.folder / file.name
        part.replace(final)
        file.bytes = final.stat().st_size
        file.done = True
        self.fetched += 1
        self.save()

    async def _receive(
        self, file: ExportFile, part: Path, response: httpx.Response, offset: int
    ) -> _Outcome:
        status = response.status_code
        limits = self.bulk.limits
        if status >= 400:
            body = await read_bounded(
                response,
                limits.status,
                "the error answer to an export file's download",
                "PRESCREEN_BULK_MAX_STATUS_BYTES",
            )
            if status in (404, 410):
                raise ExportGoneError(
                    f"a file of the export is no longer available on the server (HTTP {status}): "
                    "the export expired or was deleted",
                    status=status,
                    diagnostics=operation_outcome_text(body),
                )
            if is_transient(status, body):
                retry_after = parse_retry_after(response.headers.get("Retry-After"))
                return _Outcome("retry", f"HTTP {status}", retry_after)
            raise BulkExportError(
                f"a file of the export could not be downloaded: HTTP {status}",
                status=status,
                diagnostics=operation_outcome_text(body),
            )
        if response.headers.get("Content-Type", "").startswith(("application/fhir+json",)):
            raise BulkExportError(
                "the server sent a FHIR resource where an export file (NDJSON) was expected"
            )
        encoding = (response.headers.get("Content-Encoding") or "identity").strip().lower()
        if encoding not in ("identity", "gzip"):
            raise BulkExportError(
                f"an export file came with Content-Encoding '{encoding[:20]}', which prescreen "
                "does not store"
            )
        if status == 206:
            continues = range_starts_at(response.headers.get("Content-Range"), offset)
            if not offset or not continues or encoding != file.encoding:
                return _Outcome("restart")
            mode = "ab"
        elif status == 200:
            mode = "wb"
            file.encoding = encoding
            file.etag = response.headers.get("ETag")
            file.last_modified = response.headers.get("Last-Modified")
            file.bytes = 0
            self.save()  # the validators a resumed download will need
        else:
            raise BulkExportError(f"a file of the export answered HTTP {status}", status=status)
        expected = response.headers.get("Content-Length")
        what, setting = "an export file", "PRESCREEN_BULK_MAX_FILE_BYTES"
        before = offset if mode == "ab" else 0  # bytes already in the part file
        if expected is not None and expected.isdigit() and before + int(expected) > limits.file:
            raise TooLargeError(what, limits.file, setting)
        received = 0
        with open_private(part, mode) as out:
            async for chunk in response.aiter_raw():
                if before + received + len(chunk) > limits.file:
                    raise TooLargeError(what, limits.file, setting)
                out.write(chunk)
                received += len(chunk)
        if expected is not None and expected.isdigit() and received != int(expected):
            return _Outcome("retry", "the file was cut short")
        return _Outcome("done")


async def download_all(
    downloader: FileDownloader,
    files: list[ExportFile],
    concurrency: int,
    advance: Callable[[int], None] | None = None,
) -> None:
    """Download every file, ``concurrency`` at a time. The first failure stops the others
    (what they got so far stays on disk for the next run) and is raised as itself."""
    limit = asyncio.Semaphore(max(1, concurrency))
    done = 0

    async def one(file: ExportFile) -> None:
        nonlocal done
        async with limit:
            await downloader.download(file)
        done += 1
        if advance is not None:
            advance(done)

    try:
        async with asyncio.TaskGroup() as group:
            for file in files:
                group.create_task(one(file))
    except BaseExceptionGroup as failures:
        raise _first(failures) from None


def _first(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The failure to report: an expired export first (it decides what to do next)."""
    flat: list[BaseException] = []
    stack: list[BaseException] = [group]
    while stack:
        item = stack.pop()
        if isinstance(item, BaseExceptionGroup):
            stack.extend(item.exceptions)
        else:
            flat.append(item)
    for kind in (ExportGoneError, PrescreenError):
        for exc in flat:
            if isinstance(exc, kind):
                return exc
    with contextlib.suppress(IndexError):
        return flat[0]
    return group
