"""Finding patients and fetching their resources, with searches derived from the mapping.

Every search parameter used here comes from the mapping data (``search:`` on a filter, the
``cohort`` block): the code list of a value set becomes a token search, chunked so URLs stay
short. A group of patients is fetched in one batch Bundle where the server allows it, otherwise
with one search per resource type; each search names many patients at once.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

from service.errors import CrossPatientSearchRefusedError, FhirServerError, FhirUnavailableError
from service.fhir.client import FhirClient, Json
from service.fhir.connect import ServerAbilities, ungranted_reads
from service.mapping.mapper import Mapper
from service.mapping.resources import (
    UnattributableResourceError,
    patient_id_from_reference,
    patient_of,
)


@dataclass(frozen=True, slots=True)
class SearchSpec:
    """One search per group of patients: a resource type and its server-side filters."""

    resource_type: str
    patient_param: str
    filters: tuple[tuple[str, tuple[str, ...]], ...]


def search_plan(mapper: Mapper | Sequence[Mapper]) -> list[SearchSpec]:
    """Searches covering every mapped source; sources of one type that differ only in their
    code list share a search (the pain score and survival Observations, for instance).

    Several mappings (a portfolio's) share one reading: the searches of one resource type and
    patient parameter become one, which asks for what any of them asks for (each filter the
    searches have in common with the values of all; a filter only some have is dropped). Each
    mapping then keeps what it wants of the answers, as it does of a file."""
    if isinstance(mapper, Mapper):
        return _plan_of(mapper)
    plans = [_plan_of(one) for one in mapper]
    if len(plans) == 1:
        return plans[0]
    shared: dict[tuple[str, str], list[SearchSpec]] = {}
    for spec in (spec for plan in plans for spec in plan):
        shared.setdefault((spec.resource_type, spec.patient_param), []).append(spec)
    return [_relaxed(rtype, param, specs) for (rtype, param), specs in sorted(shared.items())]


def _relaxed(resource_type: str, patient_param: str, specs: list[SearchSpec]) -> SearchSpec:
    """One search that returns whatever any of ``specs`` returns (comma-separated values of a
    search parameter are alternatives)."""
    common = set.intersection(*({param for param, _ in spec.filters} for spec in specs))
    filters = []
    for param in sorted(common):
        values = {
            value for spec in specs for p, tokens in spec.filters if p == param for value in tokens
        }
        filters.append((param, tuple(sorted(values))))
    return SearchSpec(resource_type, patient_param, tuple(filters))


def _plan_of(mapper: Mapper) -> list[SearchSpec]:
    """One mapping's searches (see ``search_plan``)."""
    merged: dict[tuple[str, str, tuple[Any, ...]], set[str] | None] = {}
    for resource_type, sources in mapper.sources.items():
        if resource_type == "Patient":
            continue
        for source in sources:
            by_param = dict(source.server_filters)
            codes = by_param.pop("code", None)
            key = (resource_type, source.patient_search, tuple(sorted(by_param.items())))
            if key in merged:
                known = merged[key]
                merged[key] = None if known is None or codes is None else known | set(codes)
            else:
                merged[key] = None if codes is None else set(codes)
    plan = []
    for (resource_type, patient_param, others), code_set in sorted(
        merged.items(), key=lambda item: repr(item[0])
    ):
        filters: list[tuple[str, tuple[str, ...]]] = list(others)
        if code_set is not None:
            filters.append(("code", tuple(sorted(code_set))))
        plan.append(SearchSpec(resource_type, patient_param, tuple(sorted(filters))))
    return plan


def chunked(items: Iterable[str], size: int) -> list[list[str]]:
    items = list(items)
    return [items[i : i + size] for i in range(0, len(items), size)] or [[]]


# A code list that would take more than this many searches per group is not sent at all: the
# group's resources of that type are fetched whole and the mapper keeps the relevant ones. For a
# few patients that is less work for the server than many long OR-searches.
MAX_CODE_CHUNKS = 2


def search_requests(
    spec: SearchSpec, patient_ids: list[str], codes_per_request: int, page_size: int
) -> list[list[tuple[str, str]]]:
    """Query parameter lists for one group: every combination of token chunks."""
    base = [(spec.patient_param, ",".join(f"Patient/{pid}" for pid in patient_ids))]
    per_param = [
        [(param, ",".join(chunk)) for chunk in chunked(tokens, codes_per_request)]
        for param, tokens in spec.filters
    ]
    per_param = [options for options in per_param if len(options) <= MAX_CODE_CHUNKS]
    return [
        [*base, *combination, ("_count", str(page_size))]
        for combination in itertools.product(*per_param)
    ]


def reads_needed(mapper: Mapper) -> dict[str, set[str]]:
    """Search parameters a live run uses, by resource type: for the capability check."""
    needed: dict[str, set[str]] = {"Patient": {"_id"}}
    for target in mapper.join_targets:
        needed.setdefault(target, set()).add("_id")
    for spec in search_plan(mapper):
        needed.setdefault(spec.resource_type, set()).update(
            {spec.patient_param, *(param for param, _ in spec.filters)}
        )
    if mapper.cohort is not None:
        needed.setdefault(mapper.cohort.resource_type, set()).add(mapper.cohort.search)
    return needed


# Answers meaning "not this way" rather than "not now": fall back to plain searches.
BATCH_REFUSED = frozenset({400, 403, 404, 405, 422, 501})
# A search answered so is refused for its type: tried again without the code and status filters
# (the mapper applies them anyway), then the type is a lost source for the run: the criteria
# reading it are never decided by its absence (service/ruleset/gaps.py).
SEARCH_REFUSED = frozenset({400, 403, 404, 405, 422, 501})
OUTCOME_ERRORS = frozenset({"error", "fatal"})
# A search across patients answered so: the server allows patient-scoped queries only.
CROSS_PATIENT_REFUSED = frozenset({400, 403})


def refuses_cross_patient(exc: FhirServerError) -> bool:
    """A refusal of a search that named no patient (or several): 400/403, or an outcome saying a
    patient parameter is required."""
    if isinstance(exc, FhirUnavailableError):
        return False
    if exc.status in CROSS_PATIENT_REFUSED:
        return True
    text = exc.diagnostics.lower()
    return "patient" in text and any(word in text for word in ("required", "requires", "must"))


class _OnePatientPerSearchError(Exception):
    """A search naming several patients was refused: the server wants one per search."""


# What a run says, once, when the server turns out to take one patient per search.
ONE_PATIENT_NOTICE = (
    "the FHIR server refused a search naming several patients: it allows patient-scoped "
    "queries only; reading one patient at a time (more requests, the same verdicts)"
)


@dataclass
class Fetched:
    """What one fetch gave: the resources, and the types it could not read (with why)."""

    resources: list[Json]
    lost: dict[str, str] = field(default_factory=dict)


def _refusal(page: Json) -> bool:
    """A searchset whose outcome entry reports an error: the server did not run the search."""
    for entry in page.get("entry") or []:
        resource = entry.get("resource") if isinstance(entry, dict) else None
        if (
            isinstance(resource, dict)
            and resource.get("resourceType") == "OperationOutcome"
            and (entry.get("search") or {}).get("mode") == "outcome"
            and any(
                isinstance(issue, dict) and issue.get("severity") in OUTCOME_ERRORS
                for issue in resource.get("issue") or []
            )
        ):
            return True
    return False


class PatientFetcher:
    """Fetches groups of patients for one mapping, or for several at once (a portfolio: one
    reading of the server for all its trials, see ``search_plan``)."""

    def __init__(
        self,
        client: FhirClient,
        mapper: Mapper | Sequence[Mapper],
        abilities: ServerAbilities,
        *,
        codes_per_request: int,
        page_size: int,
    ) -> None:
        self.client = client
        self.mappers = [mapper] if isinstance(mapper, Mapper) else list(mapper)
        self.mapper = self.mappers[0]
        # Many servers accept batch without declaring it (HAPI declares only transaction):
        # try it when either is declared; a refusal switches to plain searches.
        self.use_batch = abilities.batch or abilities.transaction
        self.plan = search_plan(mapper)
        self.codes_per_request = codes_per_request
        self.page_size = page_size
        # Types the server would not give this run (refused searches, scopes not granted),
        # with why: not asked again, and lost sources for the screening.
        self.lost: dict[str, str] = {}
        self._scopes_checked = False
        # Set when the server refuses searches naming several patients (patient-scoped EHR
        # APIs): from then on each search names one patient; ``notices`` says so once.
        self.one_patient = False
        self.notices: list[str] = []

    def requests_for(self, patient_ids: list[str]) -> list[tuple[str, list[tuple[str, str]]]]:
        requests = [("Patient", [("_id", ",".join(patient_ids)), ("_count", str(self.page_size))])]
        for spec in self.plan:
            for params in search_requests(
                spec, patient_ids, self.codes_per_request, self.page_size
            ):
                requests.append((spec.resource_type, params))
        return requests

    async def fetch(self, patient_ids: list[str]) -> Fetched:
        """Every mapped resource of these patients (Patients included), and the types the
        server would not give (their searches refused, or no scope granted to read them).
        On a server that takes one patient per search, one patient at a time."""
        if self.one_patient and len(patient_ids) > 1:
            parts = await asyncio.gather(*(self.fetch([pid]) for pid in patient_ids))
            merged = Fetched([r for part in parts for r in part.resources])
            for part in parts:
                merged.lost.update(part.lost)
            return merged
        try:
            return await self._fetch(patient_ids)
        except _OnePatientPerSearchError:
            if not self.one_patient:
                self.one_patient = True
                self.notices.append(ONE_PATIENT_NOTICE)
            return await self.fetch(patient_ids)

    async def _fetch(self, patient_ids: list[str]) -> Fetched:
        await self._check_scopes()
        requests = [(t, p) for t, p in self.requests_for(patient_ids) if t not in self.lost]
        firsts: list[Json | None] | None = None
        if self.use_batch:
            try:
                firsts = await self._batch(requests)
            except FhirServerError as exc:
                if exc.status not in BATCH_REFUSED:
                    raise
                # Declared but refused (e.g. scopes that allow reads but not a POST to the
                # base): plain searches from now on.
                self.use_batch = False
        if firsts is None:
            firsts = [None] * len(requests)
        # A search the batch could not run is sent on its own, where a refusal is told apart.
        answers = await asyncio.gather(
            *(
                self._search(rtype, params) if first is None else _given(first)
                for (rtype, params), first in zip(requests, firsts, strict=True)
            ),
            return_exceptions=True,
        )
        # Every search has ended before one's error is raised: none is left running unseen.
        for answer in answers:
            if isinstance(answer, _OnePatientPerSearchError):
                raise answer
        for answer in answers:
            if isinstance(answer, BaseException):
                raise answer
        resources: list[Json] = []
        for first in answers:
            if isinstance(first, dict):
                resources.extend(await self._entries(first))
        resources.extend(await self._referenced(resources))
        wanted = {t for t, _ in self.requests_for(patient_ids)} | self._join_targets()
        return Fetched(resources, {t: why for t, why in self.lost.items() if t in wanted})

    async def _check_scopes(self) -> None:
        """Once: the types the access token does not let the run read are lost sources."""
        if self._scopes_checked:
            return
        self._scopes_checked = True
        types = {spec.resource_type for spec in self.plan} | self._join_targets()
        for rtype in await ungranted_reads(self.client, types):
            self.lost.setdefault(rtype, "the server did not grant a scope to read them")

    async def _search(self, rtype: str, params: list[tuple[str, str]]) -> Json | None:
        """A search's first page; None when the server refuses the type (then lost)."""
        if rtype in self.lost:
            return None
        try:
            first = await self.client.get(rtype, params, kind=f"search {rtype}")
            if not _refusal(first):
                return first
            status = "an OperationOutcome error"
        except FhirServerError as exc:
            if exc.status not in SEARCH_REFUSED or rtype == "Patient":
                raise
            status = f"HTTP {exc.status}"
        if self._several_patients(rtype, params):
            raise _OnePatientPerSearchError  # tried again one patient per search: not lost
        plain = [(k, v) for k, v in params if k in (self._patient_param(rtype), "_id", "_count")]
        if plain != params:
            # Perhaps a filter it does not take: the type's records unfiltered (the mapper
            # filters them here).
            try:
                first = await self.client.get(rtype, plain, kind=f"search {rtype}")
                if not _refusal(first):
                    return first
            except FhirServerError as exc:
                if exc.status not in SEARCH_REFUSED:
                    raise
        self.lost.setdefault(rtype, f"the server refused its search ({status})")
        return None

    def _several_patients(self, rtype: str, params: list[tuple[str, str]]) -> bool:
        param = self._patient_param(rtype)
        return any(key == param and "," in value for key, value in params)

    def _join_targets(self) -> set[str]:
        """The types every mapping of this reading resolves references to."""
        return {rtype for mapper in self.mappers for rtype in mapper.join_targets}

    def _patient_param(self, rtype: str) -> str:
        return next((s.patient_param for s in self.plan if s.resource_type == rtype), "patient")

    async def _entries(self, first: Json) -> list[Json]:
        found: list[Json] = []
        async for page in self.client.pages(first):
            for entry in page.get("entry", []):
                resource = entry.get("resource")
                if isinstance(resource, dict) and entry.get("search", {}).get("mode") != "outcome":
                    found.append(resource)
        return found

    async def _referenced(self, resources: list[Json]) -> list[Json]:
        """Resources the mapping resolves references to (a MedicationRequest's Medication),
        read by id in as few searches as the id lists allow. A type whose search is refused
        is lost: each record whose reference stays unresolved is then undecided."""
        have = {f"{r.get('resourceType')}/{r.get('id')}" for r in resources}
        wanted: dict[str, set[str]] = {}
        for resource in resources:
            for reference in {r for m in self.mappers for r in m.references_to_resolve(resource)}:
                if reference not in have:
                    rtype, rid = reference.split("/", 1)
                    wanted.setdefault(rtype, set()).add(rid)
        found: list[Json] = []
        for rtype, ids in sorted(wanted.items()):
            for chunk in chunked(sorted(ids), self.codes_per_request):  # URLs stay short
                params = [("_id", ",".join(chunk)), ("_count", str(self.page_size))]
                first = await self._search(rtype, params)
                if first is not None:
                    found.extend(await self._entries(first))
        return found

    async def _batch(self, requests: list[tuple[str, list[tuple[str, str]]]]) -> list[Json | None]:
        entries = [
            {"request": {"method": "GET", "url": f"{rtype}?{urlencode(params)}"}}
            for rtype, params in requests
        ]
        answer = await self.client.bundle("batch", entries)
        bundles: list[Json | None] = []
        for entry in answer.get("entry", []):
            status = str(entry.get("response", {}).get("status", ""))
            resource = entry.get("resource")
            if not status.startswith("2"):
                bundles.append(None)  # sent again on its own (a refusal is told apart there)
                continue
            if not isinstance(resource, dict) or resource.get("resourceType") != "Bundle":
                raise FhirServerError("a batch search answered without a searchset Bundle")
            bundles.append(None if _refusal(resource) else resource)
        if len(bundles) != len(requests):
            raise FhirServerError("the batch answer has a different number of entries")
        return bundles


async def _given(first: Json) -> Json:
    return first


async def _patients_of(client: FhirClient, rtype: str, params: list[tuple[str, str]]) -> set[str]:
    """The patients of a search across patients; CrossPatientSearchRefusedError when the server
    allows patient-scoped queries only (never a partial answer)."""
    try:
        first = await client.get(rtype, params, kind=f"search {rtype}")
    except FhirServerError as exc:
        if not refuses_cross_patient(exc):
            raise
        raise CrossPatientSearchRefusedError(
            rtype, f"HTTP {exc.status}", status=exc.status
        ) from exc
    if _refusal(first):
        raise CrossPatientSearchRefusedError(rtype, "an OperationOutcome error")
    found: set[str] = set()
    async for page in client.pages(first):
        for entry in page.get("entry", []):
            resource = entry.get("resource") if isinstance(entry, dict) else None
            if isinstance(resource, dict):
                patient = patient_of(resource)
                if patient is not None:
                    found.add(patient)
    return found


async def discover_cohort(
    client: FhirClient, mapper: Mapper, *, codes_per_request: int, page_size: int
) -> list[str]:
    """Patients with a resource coded in the cohort value sets (e.g. a spinal metastasis)."""
    cohort = mapper.cohort
    if cohort is None:
        raise FhirServerError(
            f"mapping '{mapper.id}' has no cohort block; give patient ids or --since instead"
        )
    found: set[str] = set()
    for chunk in chunked(cohort.tokens, codes_per_request):
        params = [(cohort.search, ",".join(chunk)), ("_count", str(page_size))]
        found |= await _patients_of(client, cohort.resource_type, params)
    return sorted(found)


async def group_members(client: FhirClient, group_id: str) -> list[str]:
    """The patients of a Group (its active members whose entity is a Patient)."""
    group = await client.get(f"Group/{group_id}", kind="read Group")
    if group.get("resourceType") != "Group":
        raise FhirServerError("the Group read returned no Group")
    found: set[str] = set()
    for member in group.get("member") or []:
        if not isinstance(member, dict) or member.get("inactive") is True:
            continue
        entity = member.get("entity")
        reference = entity.get("reference") if isinstance(entity, dict) else None
        if isinstance(reference, str):
            try:
                found.add(patient_id_from_reference(reference))
            except UnattributableResourceError:
                continue  # a Group of Practitioners or Devices has no patient to screen
    return sorted(found)


async def changed_since(
    client: FhirClient,
    mapper: Mapper | Sequence[Mapper],
    since: str,
    *,
    codes_per_request: int,
    page_size: int,
) -> list[str]:
    """Patients with a mapped resource (or their Patient record) updated after ``since``; of
    any of several mappings, in one pass."""
    try:
        return await _changed_since(
            client, mapper, since, codes_per_request=codes_per_request, page_size=page_size
        )
    except CrossPatientSearchRefusedError as exc:
        raise exc.for_purpose("--since (changes of every patient)") from exc


async def _changed_since(
    client: FhirClient,
    mapper: Mapper | Sequence[Mapper],
    since: str,
    *,
    codes_per_request: int,
    page_size: int,
) -> list[str]:
    found = await _patients_of(
        client, "Patient", [("_lastUpdated", f"gt{since}"), ("_count", str(page_size))]
    )
    for spec in search_plan(mapper):
        per_param = [
            [(param, ",".join(chunk)) for chunk in chunked(tokens, codes_per_request)]
            for param, tokens in spec.filters
        ]
        for combination in itertools.product(*per_param):
            params = [("_lastUpdated", f"gt{since}"), *combination, ("_count", str(page_size))]
            found |= await _patients_of(client, spec.resource_type, params)
    return sorted(found)
