"""An async FHIR R4 REST client for bulk screening work.

What a hospital server needs from a well-behaved client: pooled connections and a cap on
concurrent requests; timeouts; retries with exponential back-off and full jitter on 429, 502, 503,
504, connection errors, timeouts and truncated bodies, honouring ``Retry-After``; paging through
``next`` links (relative or absolute, same origin only, with a loop guard); and errors that carry
the server's OperationOutcome diagnostics. Every request is counted so a run can report how many
it made per screened patient.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import random
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from http.cookiejar import CookieJar, DefaultCookiePolicy
from typing import Any
from urllib.parse import urljoin, urlsplit

import httpx
import orjson

from service.errors import FhirServerError, FhirUnavailableError
from service.fhir.ids import is_safe_relative_path

log = logging.getLogger(__name__)

FHIR_JSON = "application/fhir+json"
Json = dict[str, Any]


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 5
    base_delay: float = 0.5
    max_delay: float = 30.0
    max_retry_after: float = 120.0
    statuses: frozenset[int] = frozenset({429, 502, 503, 504})

    def backoff(self, attempt: int) -> float:
        """Full jitter: uniform between 0 and the exponential ceiling."""
        return random.uniform(0, min(self.max_delay, self.base_delay * 2**attempt))


@dataclass
class RequestStats:
    requests: int = 0
    retries: int = 0
    errors: int = 0
    seconds: float = 0.0
    by_kind: Counter[str] = field(default_factory=Counter)


def retry_after_seconds(value: str | None) -> float | None:
    """``Retry-After`` as delta-seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def operation_outcome_text(body: bytes) -> str:
    """The diagnostics (or details text) of an OperationOutcome body, if that is what it is."""
    try:
        outcome = orjson.loads(body)
    except orjson.JSONDecodeError:
        return ""
    if not isinstance(outcome, dict) or outcome.get("resourceType") != "OperationOutcome":
        return ""
    texts = []
    for issue in outcome.get("issue", []):
        text = issue.get("diagnostics") or issue.get("details", {}).get("text")
        if text:
            texts.append(str(text))
    return "; ".join(texts)


def http_client(
    *,
    timeout: float,
    connections: int,
    auth: httpx.Auth | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
    headers: dict[str, str] | None = None,
) -> httpx.AsyncClient:
    """The pooled HTTP client under a FhirClient. Building one costs milliseconds of CPU (an
    SSL context, certificates loaded): a service keeps it and lends it (``SharedConnections``)."""
    return httpx.AsyncClient(
        auth=auth,
        timeout=httpx.Timeout(timeout),
        limits=httpx.Limits(max_connections=connections, max_keepalive_connections=connections),
        headers={"Accept": FHIR_JSON, **(headers or {})},
        transport=transport,
        follow_redirects=False,
    )


class SharedConnections:
    """Kept-alive connections to FHIR servers, one pool per base URL, lent to short-lived
    clients that each carry their own credentials (a CDS Hooks call brings the EHR's token):
    a call then opens no connection and builds no SSL context of its own."""

    def __init__(self, *, timeout: float, connections: int = 16) -> None:
        self.timeout = timeout
        self.connections = connections
        self._pools: dict[str, httpx.AsyncClient] = {}

    def client(
        self,
        base_url: str,
        *,
        auth: httpx.Auth | None = None,
        retry: RetryPolicy | None = None,
        concurrency: int = 8,
    ) -> FhirClient:
        """A client of ``base_url`` on the shared pool; closing it leaves the pool open."""
        key = base_url.rstrip("/") + "/"
        pool = self._pools.get(key)
        if pool is None:
            pool = self._pools[key] = http_client(
                timeout=self.timeout, connections=self.connections
            )
            # Calls with different credentials share it: a cookie one caller's answer set
            # (a server's session) must never go out with another's requests.
            pool.cookies = CookieJar(policy=DefaultCookiePolicy(allowed_domains=[]))
        return FhirClient(base_url, auth=auth, retry=retry, concurrency=concurrency, shared=pool)

    async def aclose(self) -> None:
        pools, self._pools = list(self._pools.values()), {}
        for pool in pools:
            await pool.aclose()


class FhirClient:
    """One FHIR server. Use as ``async with FhirClient(...) as client``.

    ``shared``: an HTTP client whose connections this one borrows (see ``SharedConnections``);
    ``auth`` then goes with each request, and closing this client leaves the shared one open.
    """

    def __init__(
        self,
        base_url: str,
        *,
        auth: httpx.Auth | None = None,
        timeout: float = 30.0,
        concurrency: int = 8,
        retry: RetryPolicy | None = None,
        max_pages: int = 10_000,
        transport: httpx.AsyncBaseTransport | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        headers: dict[str, str] | None = None,
        shared: httpx.AsyncClient | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/") + "/"
        self.auth = auth
        self.retry = retry or RetryPolicy()
        self.max_pages = max_pages
        self.stats = RequestStats()
        self._sleep = sleep
        self._limit = asyncio.Semaphore(concurrency)
        self._owned = shared is None
        self._http = shared or http_client(
            timeout=timeout,
            connections=concurrency,
            auth=auth,
            transport=transport,
            headers=headers,
        )
        # On a shared client the credentials are this client's own, sent with each request.
        self._request_auth: Any = httpx.USE_CLIENT_DEFAULT if self._owned else auth

    async def __aenter__(self) -> FhirClient:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._owned:
            await self._http.aclose()

    def url(self, path: str, *, link: bool = False) -> str:
        """Resolve a path (``Patient/1``) or a link against the base, refusing other origins.

        A path prescreen builds (not an absolute link the server returned) must be made of
        FHIR ids and operation names: an id carrying ``../``, ``?`` or ``#`` would otherwise
        reach another path of the server with our credentials.
        """
        absolute = path.startswith(("http://", "https://"))
        if not (link or absolute or not path or is_safe_relative_path(path)):
            raise FhirServerError("refusing a request path that is not made of FHIR ids")
        resolved = urljoin(self.base_url, path)
        base, target = urlsplit(self.base_url), urlsplit(resolved)
        if (base.scheme, base.netloc) != (target.scheme, target.netloc):
            # Following a link elsewhere would send our credentials to another host.
            raise FhirServerError("the server returned a link to another origin; refusing it")
        return resolved

    async def request(
        self,
        method: str,
        path: str,
        *,
        params: Any = None,
        json: Any = None,
        headers: dict[str, str] | None = None,
        kind: str = "",
        ok_statuses: frozenset[int] = frozenset(),
        retry: RetryPolicy | None = None,
    ) -> tuple[httpx.Response, Any]:
        """Send with retries (the client's policy, or ``retry`` for this request); returns the
        response and its parsed JSON body (or None)."""
        policy = retry or self.retry
        url = self.url(path)
        content = orjson.dumps(json) if json is not None else None
        send_headers = {"Content-Type": FHIR_JSON, **(headers or {})} if content else headers
        last_problem = ""
        for attempt in range(policy.attempts):
            if attempt:
                self.stats.retries += 1
            started = time.perf_counter()
            try:
                async with self._limit:
                    self.stats.requests += 1
                    self.stats.by_kind[kind or method] += 1
                    response = await self._http.request(
                        method,
                        url,
                        params=params,
                        content=content,
                        headers=send_headers,
                        auth=self._request_auth,
                    )
            except (httpx.TransportError, httpx.TimeoutException) as exc:
                last_problem = f"{type(exc).__name__}"
                await self._sleep(policy.backoff(attempt))
                continue
            finally:
                self.stats.seconds += time.perf_counter() - started
            if response.status_code in policy.statuses:
                last_problem = f"HTTP {response.status_code}"
                wait = retry_after_seconds(response.headers.get("Retry-After"))
                delay = (
                    min(wait, policy.max_retry_after)
                    if wait is not None
                    else policy.backoff(attempt)
                )
                await self._sleep(delay)
                continue
            if response.status_code >= 400 and response.status_code not in ok_statuses:
                self.stats.errors += 1
                raise FhirServerError(
                    f"{method} {_redact(path)} failed with HTTP {response.status_code}",
                    status=response.status_code,
                    diagnostics=operation_outcome_text(response.content),
                )
            body = None
            if response.content:
                try:
                    body = orjson.loads(response.content)
                except orjson.JSONDecodeError:
                    # A cut connection can deliver half a body with a 200: worth another try.
                    last_problem = "truncated or malformed JSON"
                    await self._sleep(policy.backoff(attempt))
                    continue
            return response, body
        self.stats.errors += 1
        raise FhirUnavailableError(
            f"{method} {_redact(path)} failed after {policy.attempts} attempts: {last_problem}"
        )

    async def get(
        self, path: str, params: Any = None, *, kind: str = "", retry: RetryPolicy | None = None
    ) -> Json:
        _response, body = await self.request("GET", path, params=params, kind=kind, retry=retry)
        if not isinstance(body, dict):
            raise FhirServerError(f"GET {_redact(path)} returned no JSON object")
        return body

    async def pages(self, first: Json) -> AsyncIterator[Json]:
        """A searchset Bundle and every page after it, following ``next`` links."""
        seen: set[str] = set()
        bundle: Json | None = first
        for _ in range(self.max_pages):
            if bundle is None:
                return
            yield bundle
            link = next_link(bundle)
            if link is None:
                return
            url = self.url(link, link=True)
            if url in seen:
                raise FhirServerError("the server's paging links loop back to a page already read")
            seen.add(url)
            bundle = await self.get(url, kind="page")
        raise FhirServerError(f"more than {self.max_pages} pages; stopping")

    async def search(
        self, resource_type: str, params: list[tuple[str, str]]
    ) -> AsyncIterator[Json]:
        """Every resource of a search (matches and includes), across all pages."""
        first = await self.get(resource_type, params, kind=f"search {resource_type}")
        async for page in self.pages(first):
            for entry in page.get("entry", []):
                resource = entry.get("resource")
                if isinstance(resource, dict):
                    yield resource

    async def bundle(self, bundle_type: str, entries: list[Json]) -> Json:
        """POST a batch or transaction Bundle to the base; returns the response Bundle."""
        body = {"resourceType": "Bundle", "type": bundle_type, "entry": entries}
        _response, answer = await self.request("POST", "", json=body, kind=bundle_type)
        if not isinstance(answer, dict) or answer.get("resourceType") != "Bundle":
            raise FhirServerError(f"{bundle_type} answer is not a Bundle")
        return answer

    async def capabilities(self) -> Json:
        return await self.get("metadata", kind="metadata")


def next_link(bundle: Json) -> str | None:
    for link in bundle.get("link", []):
        if link.get("relation") == "next" and link.get("url"):
            return str(link["url"])
    return None


def _redact(path: str) -> str:
    """A path fit for errors and logs: the resource type only, no ids, no query (PHI)."""
    if "://" in path:
        return "[page link]"
    first = path.split("?", 1)[0].split("/", 1)
    if not first[0]:
        return "[base]"
    return first[0] + ("/…" if len(first) > 1 else "")
