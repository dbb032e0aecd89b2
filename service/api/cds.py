"""CDS Hooks 2.0: discovery, a patient-view service with one card per trial, and feedback.

Prefetch templates are plain type searches (``Condition?patient={{context.patientId}}``), one
per resource type the mappings read: short enough for any server's request line, and filtered
here by the mapping exactly as a live run filters. A key the EHR sent as ``null`` means "no
data"; a key it left out, or whose value reports an error (an OperationOutcome), is fetched from
``fhirServer`` with the ``fhirAuthorization`` token, and without a server to fetch from the call
is answered 412: a failed prefetch never turns into a silent "no cards".

Every call carries a JWT the EHR signed (see ``Authenticator.verify_cds_jwt``); its jti is
remembered in the database until it expires, so a replay is refused on every replica. The
``fhirServer`` a call names must be one of the configured FHIR servers: prescreen sends the EHR's
token, and its own requests, nowhere else.
"""

from __future__ import annotations

import asyncio
import posixpath
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, Literal, TypeVar
from urllib.parse import unquote, urlencode, urlsplit

import httpx
from fastapi import APIRouter, HTTPException, Request, Response
from pydantic import BaseModel, Field, ValidationError
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Receive, Scope, Send

from service.api.engine import ScreeningService
from service.api.security import Authenticator
from service.errors import FhirServerError, PrescreenError
from service.fhir.auth import BearerAuth
from service.fhir.client import FhirClient, Json, RetryPolicy
from service.fhir.connect import ServerAbilities, read_capabilities
from service.fhir.ids import is_fhir_id
from service.fhir.retrieval import SEARCH_REFUSED, PatientFetcher, chunked, search_plan
from service.links import patient_page_url
from service.ruleset.loader import RuleSet
from service.settings import Settings
from service.state.cds_hooks import FeedbackReport, IssuedCard, UnknownCardsError

router = APIRouter()
SERVICE_ID = "prescreen-patient-view"
PATIENT_KEY = "patient"
PATIENT_TOKEN = "{{context.patientId}}"
ERROR_SEVERITIES = frozenset({"error", "fatal"})
# A hook answers while a clinician waits: one retry at most, never the long back-off of a run.
HOOK_RETRY = RetryPolicy(attempts=2, base_delay=0.2, max_delay=1.0, max_retry_after=2.0)
# What a server whose CapabilityStatement could not be read gets: plain searches work on every
# server. What it declares is read once an hour (a few minutes after a failure), not per hook.
PLAIN_SEARCHES = ServerAbilities(fhir_version="", batch=False, transaction=False)
ABILITIES_SECONDS = 3600.0
UNREADABLE_ABILITIES_SECONDS = 300.0
CDS_PREFIX = "/cds-services"

M = TypeVar("M", bound=BaseModel)


# --- prefetch templates --------------------------------------------------------------------------


@dataclass(frozen=True)
class PrefetchPlan:
    """The prefetch keys of every served trial: template, resource type, and who needs which."""

    templates: dict[str, str]
    resource_types: dict[str, str]
    keys_by_trial: dict[str, tuple[str, ...]]


def prefetch_plan(rulesets: Mapping[str, RuleSet]) -> PrefetchPlan:
    """One plain search per (resource type, patient search parameter) the mappings use."""
    searches: dict[str, set[tuple[str, str]]] = {}
    for trial_id, ruleset in rulesets.items():
        searches[trial_id] = {
            (s.resource_type, s.patient_param) for s in search_plan(ruleset.mapper)
        }
    pairs = sorted(set().union(*searches.values())) if searches else []
    params_per_type: dict[str, int] = {}
    for resource_type, _param in pairs:
        params_per_type[resource_type] = params_per_type.get(resource_type, 0) + 1
    templates = {PATIENT_KEY: f"Patient/{PATIENT_TOKEN}"}
    resource_types = {PATIENT_KEY: "Patient"}
    key_of: dict[tuple[str, str], str] = {}
    for resource_type, param in pairs:
        key = resource_type if params_per_type[resource_type] == 1 else f"{resource_type}-{param}"
        # A `patient` parameter takes the bare id; other reference parameters the typed one.
        value = PATIENT_TOKEN if param == "patient" else f"Patient/{PATIENT_TOKEN}"
        # Percent-encoded except the braces of the token (and `/`): a `|` left raw is refused
        # by servers that follow RFC 3986 strictly (Tomcat).
        templates[key] = f"{resource_type}?{urlencode([(param, value)], safe='{}/')}"
        resource_types[key] = resource_type
        key_of[(resource_type, param)] = key
    keys_by_trial = {
        trial_id: (PATIENT_KEY, *sorted(key_of[pair] for pair in pairs_of_trial))
        for trial_id, pairs_of_trial in searches.items()
    }
    return PrefetchPlan(templates, resource_types, keys_by_trial)


def _plan(request: Request, service: ScreeningService) -> PrefetchPlan:
    plan: PrefetchPlan | None = getattr(request.app.state, "cds_prefetch_plan", None)
    if plan is None:
        plan = prefetch_plan(service.rulesets)
        request.app.state.cds_prefetch_plan = plan
    return plan


# --- reading what the EHR prefetched -------------------------------------------------------------


@dataclass
class PrefetchContent:
    resources: list[Json] = field(default_factory=list)
    absent: set[str] = field(default_factory=set)  # keys the EHR did not send
    failed: set[str] = field(default_factory=set)  # keys whose value reports an error

    @property
    def to_fetch(self) -> set[str]:
        return self.absent | self.failed


def _reports_error(outcome: Json) -> bool:
    return any(
        isinstance(issue, dict) and issue.get("severity") in ERROR_SEVERITIES
        for issue in outcome.get("issue", [])
    )


def _value_resources(value: Json) -> list[Json] | None:
    """The resources of one prefetch value; None if it reports a failure."""
    if value.get("resourceType") == "OperationOutcome":
        return None  # the EHR could not run this template (CDS Hooks 2.0)
    if value.get("resourceType") != "Bundle":
        return [value]
    if any(
        isinstance(link, dict) and link.get("relation") == "next" for link in value.get("link", [])
    ):
        return None  # only a first page: the data is incomplete
    found = []
    for entry in value.get("entry") or []:
        resource = entry.get("resource") if isinstance(entry, dict) else None
        if not isinstance(resource, dict):
            continue
        if resource.get("resourceType") == "OperationOutcome":
            if _reports_error(resource):
                return None
            continue  # warnings or information about the search, not data
        found.append(resource)
    return found


def read_prefetch(prefetch: Mapping[str, Any] | None, keys: Iterable[str]) -> PrefetchContent:
    content = PrefetchContent()
    sent = prefetch or {}
    for key in keys:
        if key not in sent:
            content.absent.add(key)
            continue
        value = sent[key]
        if value is None:
            continue  # no data for this template (CDS Hooks 2.0: null, not an empty Bundle)
        if not isinstance(value, dict):
            raise HTTPException(400, f"prefetch '{key}' is neither a FHIR resource nor null")
        resources = _value_resources(value)
        if resources is None:
            content.failed.add(key)
        else:
            content.resources.extend(resources)
    return content


# --- the FHIR servers a call may name ------------------------------------------------------------


def normalised_base(url: str) -> str | None:
    """A FHIR base URL in one spelling (scheme and host in lower case, no default port, no
    trailing slash); None for what is not a plain http(s) base URL: credentials, a query, a
    fragment, percent-escapes or dot segments in the path."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not parts.hostname:
        return None
    if parts.username or parts.password or parts.query or parts.fragment:
        return None
    path = parts.path.rstrip("/")
    if unquote(path) != path or posixpath.normpath(path or "/") != (path or "/"):
        return None
    host = parts.hostname.lower()
    host = f"[{host}]" if ":" in host else host
    default_port = 443 if scheme == "https" else 80
    netloc = host if port in (None, default_port) else f"{host}:{port}"
    return f"{scheme}://{netloc}{path}"


def allowed_fhir_servers(settings: Settings) -> dict[str, str]:
    """Normalised base URL -> the configured URL prescreen connects to."""
    configured = [u.strip() for u in settings.cds_fhir_servers.split(",") if u.strip()]
    if not configured and settings.fhir_url:
        configured = [settings.fhir_url]
    allowed = {}
    for url in configured:
        normal = normalised_base(url)
        if normal is not None:
            allowed[normal] = url
    return allowed


# --- cards ---------------------------------------------------------------------------------------


def card_links(contract: Mapping[str, Any], public_url: str | None) -> list[dict[str, str]]:
    """Links a card offers (CDS Hooks ``links``: label, url, type ``absolute`` or ``smart``): the
    web worklist's page for this patient and trial, when the service knows its public URL."""
    patient_id = str(contract["patient"]).removeprefix("Patient/")
    url = patient_page_url(public_url, str(contract["trial"]), patient_id)
    if url is None:
        return []
    return [{"label": "Open in the prescreen worklist", "url": url, "type": "absolute"}]


def build_card(
    contract: Mapping[str, Any], trial: Any, public_url: str | None = None
) -> dict[str, Any]:
    criteria: Mapping[str, Any] = contract["criteria"]
    met = [cid for cid, c in criteria.items() if c["result"] == "met"]
    unknown = [
        f"- **{cid}**: {c['reason']}" for cid, c in criteria.items() if c["result"] == "unknown"
    ]
    verdict = contract["verdict"].replace("-", " ")
    detail = f"Met: {', '.join(met) or 'none'}."
    if unknown:
        detail += "\n\nTo check:\n" + "\n".join(unknown)
    source: dict[str, Any] = {
        "label": "prescreen",
        # The trial as a coded topic, so an EHR can group or filter cards by trial.
        "topic": {
            "system": trial.identifier_system,
            "code": trial.nct_id,
            "display": trial.title[:80],
        },
    }
    if trial.url.startswith(("https://", "http://")):
        source["url"] = trial.url
    card: dict[str, Any] = {
        "uuid": str(uuid.uuid4()),  # a new one per card returned: feedback names it
        "summary": f"{trial.acronym} ({trial.nct_id}): {verdict}"[:139],
        "indicator": "info",
        "detail": detail,
        "source": source,
    }
    links = card_links(contract, public_url)
    if links:  # CDS Hooks: no empty arrays
        card["links"] = links
    return card


# --- requests ------------------------------------------------------------------------------------


class HookRequest(BaseModel):
    hook: str = Field(max_length=100)
    hookInstance: str = Field(max_length=200)  # noqa: N815 - the CDS Hooks field names
    context: dict[str, Any]
    fhirServer: str | None = Field(default=None, max_length=2000)  # noqa: N815
    fhirAuthorization: dict[str, Any] | None = None  # noqa: N815
    prefetch: dict[str, Any] | None = None


class AcceptedSuggestion(BaseModel):
    id: str = Field(max_length=200)


class Coding(BaseModel):
    system: str | None = Field(default=None, max_length=500)
    code: str | None = Field(default=None, max_length=200)
    display: str | None = Field(default=None, max_length=500)


class OverrideReason(BaseModel):
    reason: Coding | None = None
    userComment: str | None = Field(default=None, max_length=4000)  # noqa: N815


class Feedback(BaseModel):
    card: uuid.UUID
    outcome: Literal["accepted", "overridden"]
    acceptedSuggestions: list[AcceptedSuggestion] = Field(default=[], max_length=100)  # noqa: N815
    overrideReason: OverrideReason | None = None  # noqa: N815
    outcomeTimestamp: datetime  # noqa: N815


class FeedbackRequest(BaseModel):
    feedback: list[Feedback] = Field(min_length=1, max_length=100)


def _inline_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The model's JSON schema with its definitions inlined (for the OpenAPI request body)."""
    schema = model.model_json_schema()
    definitions = schema.pop("$defs", {})

    def resolve(node: Any) -> Any:
        if isinstance(node, list):
            return [resolve(item) for item in node]
        if not isinstance(node, dict):
            return node
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/$defs/"):
            target = resolve(definitions[ref.removeprefix("#/$defs/")])
            return {**target, **{k: resolve(v) for k, v in node.items() if k != "$ref"}}
        return {k: resolve(v) for k, v in node.items()}

    return dict(resolve(schema))


def _body(model: type[BaseModel]) -> dict[str, Any]:
    return {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": _inline_schema(model)}},
        }
    }


async def _parse(request: Request, model: type[M]) -> M:
    """The body, read only after the JWT was accepted (an unauthenticated caller learns nothing
    of it). A malformed one is a 400, as in the CDS Hooks specification's examples; the errors
    say where and what, never quoting the input."""
    try:
        return model.model_validate_json(await request.body())
    except ValidationError as exc:
        errors = exc.errors(include_url=False, include_input=False, include_context=False)
        detail = [
            {"loc": ["body", *error["loc"]], "msg": error["msg"], "type": error["type"]}
            for error in errors
        ]
        raise HTTPException(400, detail) from exc


def _audience_base(request: Request, service: ScreeningService) -> str:
    return (service.settings.public_url or str(request.base_url)).rstrip("/")


async def _authenticated(
    request: Request, service: ScreeningService, audiences: list[str]
) -> dict[str, Any]:
    """The EHR's verified claims; its jti is recorded, so the same token is refused next time
    on any replica."""
    auth: Authenticator = request.app.state.auth
    claims = await auth.verify_cds_jwt(request, audiences)
    expires = datetime.fromtimestamp(float(claims["exp"]), UTC).replace(tzinfo=None)
    store = service.cds
    if not await asyncio.to_thread(store.first_use, str(claims["iss"]), claims["jti"], expires):
        raise HTTPException(
            401,
            "this CDS Hooks JWT was presented before (jti)",
            headers={"WWW-Authenticate": "Bearer"},
        )
    return claims


def _service(request: Request) -> ScreeningService:
    service: ScreeningService = request.app.state.service
    return service


# --- endpoints -----------------------------------------------------------------------------------


@router.get(CDS_PREFIX, summary="CDS Hooks discovery")
async def discovery(request: Request) -> dict[str, Any]:
    service = _service(request)
    trials = ", ".join(r.trial.acronym for r in service.rulesets.values())
    return {
        "services": [
            {
                "hook": "patient-view",
                "id": SERVICE_ID,
                "title": "Clinical trial pre-screening",
                "description": f"Flags patients who may qualify for: {trials}.",
                "prefetch": _plan(request, service).templates,
            }
        ]
    }


@router.post(
    f"{CDS_PREFIX}/{SERVICE_ID}",
    summary="patient-view: one card per trial",
    openapi_extra=_body(HookRequest),
)
async def patient_view(request: Request) -> dict[str, Any]:
    service = _service(request)
    base = _audience_base(request, service)
    claims = await _authenticated(request, service, [f"{base}{CDS_PREFIX}/{SERVICE_ID}"])
    body = await _parse(request, HookRequest)
    if body.hook != "patient-view":
        raise HTTPException(400, "this service answers patient-view")
    patient_id = body.context.get("patientId")
    if not isinstance(patient_id, str) or not is_fhir_id(patient_id):
        raise HTTPException(400, "context.patientId must be a FHIR id")
    server = _fhir_server(service.settings, body.fhirServer)
    plan = _plan(request, service)
    content = read_prefetch(body.prefetch, plan.templates)
    resources = content.resources
    lost: dict[str, str] = {}  # types the FHIR server refused: never decided by their absence
    if content.to_fetch or server is not None:
        resources = resources + await _fetch(service, plan, content, body, server, patient_id, lost)
    today = datetime.now(UTC).date()
    cards: list[dict[str, Any]] = []
    issued: list[IssuedCard] = []
    for trial_id, ruleset in service.rulesets.items():
        for contract in service.evaluate(trial_id, resources, today, lost):
            if (
                contract["patient"] == f"Patient/{patient_id}"
                and contract["verdict"] != "ineligible"
            ):
                card = build_card(contract, ruleset.trial, service.settings.public_url)
                cards.append(card)
                issued.append(IssuedCard(card["uuid"], trial_id, patient_id))
    if issued:  # most calls return no card: no thread, no database
        await asyncio.to_thread(service.cds.record_cards, str(claims["iss"]), issued)
    return {"cards": cards}


@router.post(
    f"{CDS_PREFIX}/{SERVICE_ID}/feedback",
    summary="CDS Hooks feedback: what clinicians did with the cards",
    openapi_extra=_body(FeedbackRequest),
)
async def feedback(request: Request) -> Response:
    service = _service(request)
    base = _audience_base(request, service)
    endpoint = f"{base}{CDS_PREFIX}/{SERVICE_ID}"
    # The aud is the endpoint called; some EHRs name the service itself for its feedback.
    claims = await _authenticated(request, service, [f"{endpoint}/feedback", endpoint])
    body = await _parse(request, FeedbackRequest)
    reports = [
        FeedbackReport(
            card_uuid=str(entry.card),
            outcome=entry.outcome,
            accepted_suggestions=tuple(s.id for s in entry.acceptedSuggestions),
            override_reason=(
                entry.overrideReason.model_dump(exclude_none=True) if entry.overrideReason else None
            ),
            outcome_at=_naive_utc(entry.outcomeTimestamp),
        )
        for entry in body.feedback
    ]
    store = service.cds
    try:
        await asyncio.to_thread(store.record_feedback, str(claims["iss"]), reports)
    except UnknownCardsError as unknown:
        raise HTTPException(
            400, f"{len(unknown.uuids)} card(s) unknown: not returned by this service to this EHR"
        ) from unknown
    return Response(status_code=200)


def _naive_utc(moment: datetime) -> datetime:
    if moment.tzinfo is None:
        return moment  # the spec asks for UTC
    return moment.astimezone(UTC).replace(tzinfo=None)


# --- fetching what the prefetch did not give -----------------------------------------------------


def _fhir_server(settings: Settings, named: str | None) -> str | None:
    """The configured URL of the server the call names; refused if it is not one of them."""
    if not named:
        return None
    normal = normalised_base(named)
    configured = allowed_fhir_servers(settings).get(normal) if normal else None
    if configured is None:
        raise HTTPException(403, "fhirServer is not a FHIR server this service may read")
    return configured


async def _fetch(
    service: ScreeningService,
    plan: PrefetchPlan,
    content: PrefetchContent,
    body: HookRequest,
    server: str | None,
    patient_id: str,
    lost: dict[str, str],
) -> list[Json]:
    """What the prefetch lacked, and the resources its resources refer to (Medications),
    read from the EHR's FHIR server; the types it refuses go to ``lost``."""
    if server is None:
        raise HTTPException(
            412,
            "prefetch incomplete (" + _describe(content) + ") and no fhirServer to fetch from",
        )
    token = (body.fhirAuthorization or {}).get("access_token")
    auth = BearerAuth(token) if isinstance(token, str) and token else None
    settings = service.settings
    try:
        # The service's kept-alive connections to this server, with this call's token.
        async with service.hook_connections.client(server, auth=auth, retry=HOOK_RETRY) as client:
            wanting = [
                ruleset
                for trial_id, ruleset in service.rulesets.items()
                if content.to_fetch & set(plan.keys_by_trial[trial_id])
            ]
            missing = {plan.resource_types[k] for k in content.to_fetch}
            found: list[Json] = []
            if wanting:
                abilities = await _abilities(service, client, server)
                fetcher = _fetcher(client, wanting, missing, settings, abilities)
                fetched = await fetcher.fetch([patient_id])
                found = fetched.resources
                lost.update(fetched.lost)
                if (abilities.batch or abilities.transaction) and not fetcher.use_batch:
                    _batch_refused(service, server, abilities)
            found += await _referenced(client, service.rulesets.values(), content.resources + found)
            return found
    except (FhirServerError, httpx.HTTPError) as exc:
        # No server diagnostics in the answer: they may quote patient data.
        what = _describe(content) if content.to_fetch else "referenced resources"
        raise HTTPException(
            412, f"the FHIR data could not be read from fhirServer ({what}): {type(exc).__name__}"
        ) from exc


def _describe(content: PrefetchContent) -> str:
    parts = []
    if content.absent:
        parts.append("missing: " + ", ".join(sorted(content.absent)))
    if content.failed:
        parts.append("failed: " + ", ".join(sorted(content.failed)))
    return "; ".join(parts)


async def _abilities(service: ScreeningService, client: FhirClient, server: str) -> ServerAbilities:
    """What the server declares (a batch Bundle: all the searches of a hook in one request,
    where the server runs them without an HTTP exchange each), read once an hour per server
    with the caller's token; plain searches while it cannot be read."""
    known = service.hook_abilities.get(server)
    moment = time.monotonic()
    if known is not None and known[0] > moment:
        return known[1]
    try:
        abilities = read_capabilities(await client.capabilities())
        until = moment + ABILITIES_SECONDS
    except (FhirServerError, httpx.HTTPError):
        abilities, until = PLAIN_SEARCHES, moment + UNREADABLE_ABILITIES_SECONDS
    service.hook_abilities[server] = (until, abilities)
    return abilities


def _batch_refused(service: ScreeningService, server: str, abilities: ServerAbilities) -> None:
    """A server that refused the batch it declares gets plain searches from now on."""
    until = time.monotonic() + ABILITIES_SECONDS
    service.hook_abilities[server] = (until, replace(abilities, batch=False, transaction=False))


def _fetcher(
    client: FhirClient,
    rulesets: Sequence[RuleSet],
    types: set[str],
    settings: Settings,
    abilities: ServerAbilities,
) -> PatientFetcher:
    """The trials' searches for these resource types (code-filtered like a live run, one
    search a type for all the trials, as a live portfolio reads), and the Patient; a Patient
    wanted alone is read with no other search. In one batch Bundle where the server declares
    batch (or transaction), in plain searches otherwise or once it refuses the batch."""
    fetcher = PatientFetcher(
        client,
        [ruleset.mapper for ruleset in rulesets],
        abilities,
        codes_per_request=settings.fhir_codes_per_request,
        page_size=settings.fhir_page_size,
    )
    fetcher.plan = [spec for spec in fetcher.plan if spec.resource_type in types]
    return fetcher


async def _referenced(
    client: FhirClient, rulesets: Iterable[RuleSet], resources: Sequence[Json]
) -> list[Json]:
    have = {f"{r.get('resourceType')}/{r.get('id')}" for r in resources}
    wanted: dict[str, set[str]] = {}
    for ruleset in rulesets:
        for resource in resources:
            for reference in ruleset.mapper.references_to_resolve(resource):
                rtype, _, rid = reference.partition("/")
                if reference not in have and is_fhir_id(rid):
                    wanted.setdefault(rtype, set()).add(rid)
    found: list[Json] = []
    for rtype, ids in sorted(wanted.items()):
        for chunk in chunked(sorted(ids), 50):
            try:
                found += [r async for r in client.search(rtype, [("_id", ",".join(chunk))])]
            except FhirServerError as exc:
                if exc.status not in SEARCH_REFUSED:
                    raise
                break  # refused: each record naming one stays undecided, never excludes
    return found


# --- CORS ----------------------------------------------------------------------------------------


def cors_origins(settings: Settings) -> list[str]:
    """The EHR origins of PRESCREEN_CORS_ORIGINS; ``*`` is refused: the CDS Hooks endpoints
    read the EHR's FHIR server with the token it sends, for named EHRs only."""
    origins = [o.strip().rstrip("/") for o in settings.cors_origins.split(",") if o.strip()]
    if "*" in origins:
        raise PrescreenError(
            "PRESCREEN_CORS_ORIGINS lists the origins of the EHRs allowed (https://ehr.example); "
            "* is not accepted"
        )
    return origins


class CdsCors:
    """CORS on the CDS Hooks endpoints only (browser-based EHRs call them), answered before
    anything else: a preflight carries no credentials. A preflight from an origin not listed
    (or with none listed) is answered too, without the CORS headers (400), never passed on to
    the routes (405). The rest of the API stays same-origin."""

    def __init__(self, app: ASGIApp, origins: Sequence[str]) -> None:
        self.app = app
        self.origins = list(origins)
        self.cors = CORSMiddleware(
            app,
            allow_origins=self.origins,
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type"],
            max_age=600,
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "") if scope["type"] == "http" else ""
        if path == CDS_PREFIX or path.startswith(CDS_PREFIX + "/"):
            await self.cors(scope, receive, send)
        else:
            await self.app(scope, receive, send)
