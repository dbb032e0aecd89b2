"""Idempotent write-back of screening results to the FHIR server.

What is written, per patient who is (or was) a candidate:

- a ``ResearchSubject`` (R4), found again by its deterministic identifier (study + patient),
  created with a conditional create and updated with ``If-Match`` on its version;
- one ``Observation`` per criterion, so the results can be read from the server alone:
  ``code`` = the criterion (system ``urn:prescreen:criterion:<rule set>``), ``valueCodeableConcept``
  = met / not_met / unknown (system ``urn:prescreen:criterion-result``), ``note`` = the reason,
  the evidence as ``workflow-supportingInfo`` extensions (the core R4 extension that may reference
  any resource: ``derivedFrom`` only admits Observations and a few others, so it additionally
  lists the Observation evidence), ``focus`` = the ResearchSubject, ``effectiveDateTime`` = as_of,
  and the criterion's kind and manual flag as ``component`` (system
  ``urn:prescreen:criterion-attribute``); each has a deterministic identifier and is written with
  a conditional update;
- one ``Provenance`` per write, naming the rule set id and version (``policy``), as_of
  (``occurredDateTime``), the written resources (``target``) and the evidence (``entity``);
- once per server, the CodeSystems of every code prescreen writes (``codesystems``), each with a
  conditional create on its url and version.

Every written resource also carries two ``meta.tag`` codings: ``urn:prescreen:key`` = its
deterministic key (the identifier value) and ``urn:prescreen:study`` = the NCT id. Conditional
creates and updates match on ``identifier`` where the CapabilityStatement declares that search
parameter for the type, and on ``_tag`` otherwise (``_tag`` is defined for every resource; some
servers, sekmet-fhir among them, have no ``identifier`` search on ResearchSubject). Subjects
written before are found by the study tag.

All of a patient's writes go in one transaction Bundle, so they land together or not at all.
Every entry has an absolute ``fullUrl`` (the server base + type/id for an update) or a
``urn:uuid`` one, and a Bundle refers to no entry outside itself: a dry run prints each Bundle
exactly as a real run sends it (NDJSON), and each can be sent alone. While a run creates the
ResearchStudy (its own transaction, before any patient's), each new subject's transaction carries
the study's conditional create too, which then matches the study on the server: so the subject
needs no server-assigned id that a dry run could not know.

Nothing is written when neither the status nor the results changed since the last run (a
fingerprint of the results is kept on the ResearchSubject), so running twice writes nothing twice.
A status a person set is never overwritten: prescreen records the status it last wrote in an
extension, and changes a subject only while its status is candidate, potential-candidate, or
still exactly what prescreen last wrote. A candidate who no longer qualifies becomes ``ineligible``.
"""

from __future__ import annotations

import hashlib
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from urllib.parse import quote

import orjson
from fhir.resources.R4B.observation import Observation
from fhir.resources.R4B.provenance import Provenance
from fhir.resources.R4B.researchsubject import ResearchSubject

from service.errors import FhirServerError, FhirUnavailableError
from service.fhir.client import FhirClient, Json
from service.fhir.codesystems import (
    code_system_key,
    code_systems_for,
    criterion_display,
    criterion_system,
)
from service.fhir.connect import ServerAbilities
from service.research import (
    SUBJECT_STATUSES,
    research_study,
    research_subject,
    study_identifier,
    subject_identifier_value,
    validated,
)
from service.ruleset.evaluate import PatientVerdict
from service.ruleset.loader import RuleSet

log = logging.getLogger(__name__)

WRITTEN_STATUS_URL = "urn:prescreen:fhir:StructureDefinition:written-status"
FINGERPRINT_URL = "urn:prescreen:fhir:StructureDefinition:results-fingerprint"
RESULT_SYSTEM = "urn:prescreen:criterion-result"
# Observation.component codes (and kind values) of the published CodeSystem
# terminology/CodeSystem-criterion-attribute.json.
ATTRIBUTE_SYSTEM = "urn:prescreen:criterion-attribute"
KIND_COMPONENT = "criterion-kind"
MANUAL_COMPONENT = "manual"
# Part of the fingerprint: a change of what is written for the same results (2: the criterion
# Observations gained their kind and manual components) rewrites every subject once.
WRITE_FORMAT = 2
OBSERVATION_IDENTIFIER_SYSTEM = "urn:prescreen:criterion-observation"
PRESCREEN_OWNED = frozenset({"candidate", "potential-candidate"})
KEY_TAG_SYSTEM = "urn:prescreen:key"
SUPPORTING_INFO_URL = "http://hl7.org/fhir/StructureDefinition/workflow-supportingInfo"
# Observation.derivedFrom admits only these targets in R4.
DERIVED_FROM_TYPES = frozenset(
    {
        "DocumentReference",
        "ImagingStudy",
        "Media",
        "QuestionnaireResponse",
        "Observation",
        "MolecularSequence",
    }
)
STUDY_TAG_SYSTEM = "urn:prescreen:study"


@dataclass
class ExistingSubject:
    resource: Json

    @property
    def id(self) -> str:
        return str(self.resource["id"])

    @property
    def version(self) -> str | None:
        version = self.resource.get("meta", {}).get("versionId")
        return str(version) if version is not None else None

    @property
    def status(self) -> str:
        return str(self.resource.get("status", ""))

    def extension(self, url: str) -> str | None:
        for ext in self.resource.get("extension", []):
            if ext.get("url") == url:
                value = ext.get("valueCode", ext.get("valueString"))
                return str(value) if value is not None else None
        return None

    @property
    def owned_by_prescreen(self) -> bool:
        """True unless a person has set a status of their own since prescreen last wrote."""
        return self.status in PRESCREEN_OWNED or self.status == self.extension(WRITTEN_STATUS_URL)


@dataclass
class WriteStats:
    created: int = 0
    updated: int = 0
    unchanged: int = 0
    kept_human_status: int = 0
    withdrawn: int = 0
    conflicts_retried: int = 0
    transactions: int = 0
    code_systems_created: int = 0
    code_systems_refused: bool = False
    failed: list[str] = field(default_factory=list)


def ruleset_policy(ruleset: RuleSet) -> str:
    """Provenance.policy: the rule set and the version it ran as (with the parameters a run
    set, ``--dry-run --set``), as a URI: characters a URI may not hold (``>``) escaped."""
    version = quote(ruleset.run_version, safe="+=.,-_~!$&'()*;:@")
    return f"urn:prescreen:ruleset:{ruleset.id}:{version}"


def fingerprint(verdict: PatientVerdict, ruleset: RuleSet) -> str:
    """What the coordinator sees: status, per-criterion results, evidence and reasons."""
    payload = orjson.dumps(
        [
            WRITE_FORMAT,
            ruleset.id,
            ruleset.version,
            verdict.verdict,
            [c.as_contract() for c in verdict.criteria],
        ]
    )
    return hashlib.sha256(payload).hexdigest()[:32]


class WriteBack:
    def __init__(
        self,
        client: FhirClient,
        ruleset: RuleSet,
        as_of: date,
        identifier_system: str,
        *,
        abilities: ServerAbilities,
        dry_run: bool = False,
        echo: Callable[[Json], None] | None = None,
    ) -> None:
        self.client = client
        self.abilities = abilities
        self.ruleset = ruleset
        self.as_of = as_of
        self.identifier_system = identifier_system
        self.dry_run = dry_run
        self.echo = echo
        self.stats = WriteStats()
        # "ResearchStudy/<id>" of the study found on the server; empty while this run creates it
        # (then each new subject's transaction carries the study's conditional create).
        self.study_reference = ""
        self.subjects: dict[str, ExistingSubject] = {}

    # --- preparation ----------------------------------------------------------------------------

    def _match(self, resource_type: str, system: str, key: str) -> tuple[str, str]:
        """The search that finds the one resource with this deterministic key."""
        if self.abilities.searchable(resource_type, "identifier"):
            return "identifier", f"{system}|{key}"
        return "_tag", f"{KEY_TAG_SYSTEM}|{key}"

    def _tagged(self, resource: Json, key: str, *, study: bool = True) -> Json:
        """The resource with prescreen's key and study tags (other tags kept)."""
        meta = dict(resource.get("meta", {}))
        tags = [
            t
            for t in meta.get("tag", [])
            if t.get("system") not in (KEY_TAG_SYSTEM, STUDY_TAG_SYSTEM)
        ]
        tags.append({"system": KEY_TAG_SYSTEM, "code": key})
        if study:
            tags.append({"system": STUDY_TAG_SYSTEM, "code": self.ruleset.trial.nct_id})
        return {**resource, "meta": {"tag": tags}}

    async def _send(self, entries: list[Json]) -> Json | None:
        """Send one transaction, or in a dry run print it (exactly as it would be sent)."""
        if self.dry_run:
            if self.echo is not None:
                self.echo({"resourceType": "Bundle", "type": "transaction", "entry": entries})
            return None
        return await self.client.bundle("transaction", entries)

    async def prepare(self, load_subjects: bool = True) -> None:
        """Publish the CodeSystems, find (or create) the ResearchStudy and read the subjects
        written for it before.

        A service that screens a few patients at a time passes ``load_subjects=False`` and reads
        just those patients' subjects with ``load_subjects_for``.
        """
        await self.publish_code_systems()
        identifier = study_identifier(self.ruleset)
        param, token = self._match("ResearchStudy", identifier["system"], identifier["value"])
        found = [r async for r in self.client.search("ResearchStudy", [(param, token)])]
        studies = [r for r in found if r.get("resourceType") == "ResearchStudy"]
        if len(studies) > 1:
            raise FhirServerError(f"{len(studies)} ResearchStudy resources carry {token}")
        if studies:
            self.study_reference = f"ResearchStudy/{studies[0]['id']}"
        else:
            # Its own transaction first, so that parallel patient transactions never race to
            # create it; theirs carry the same conditional create, which then matches.
            self.study_reference = ""
            await self._send([self._study_create()])
        if load_subjects and self.study_reference:
            params = [
                ("_tag", f"{STUDY_TAG_SYSTEM}|{self.ruleset.trial.nct_id}"),
                ("_count", "500"),
            ]
            async for resource in self.client.search("ResearchSubject", params):
                self._remember(resource)

    async def publish_code_systems(self) -> None:
        """Put the CodeSystems of every code written on the server, once: each with a
        conditional create on its url and version, and only those the server lacks.

        A server that refuses them (no CodeSystem support, no scope for it) costs a warning,
        not the run: the results are worth writing without them. Either way a process tries
        each server once (a service screens a few patients at a time, many times a day).
        """
        wanted = code_systems_for(self.ruleset)
        base = self.client.base_url
        missing = [cs for cs in wanted if (base, code_system_key(cs)) not in _SETTLED]
        if not missing:
            return
        try:
            on_server = await self._code_systems_on_server(missing)
            to_create = [cs for cs in missing if code_system_key(cs) not in on_server]
            if to_create:
                await self._send([self._code_system_create(cs) for cs in to_create])
        except FhirUnavailableError:
            raise
        except FhirServerError as exc:
            if exc.status == 401:
                raise  # credentials refused: nothing else will work either
            log.warning("the server refused prescreen's CodeSystems (HTTP %s)", exc.status)
            self.stats.code_systems_refused = True
            to_create = []
        if self.dry_run:
            return  # a dry run changed nothing: a real run must still look
        self.stats.code_systems_created += len(to_create)
        _SETTLED.update((base, code_system_key(cs)) for cs in missing)

    def _code_system_match(self, code_system: Json) -> list[tuple[str, str]]:
        if self.abilities.searchable("CodeSystem", "url") and self.abilities.searchable(
            "CodeSystem", "version"
        ):
            return [("url", str(code_system["url"])), ("version", str(code_system["version"]))]
        return [("_tag", f"{KEY_TAG_SYSTEM}|{code_system_key(code_system)}")]

    async def _code_systems_on_server(self, code_systems: list[Json]) -> set[str]:
        """The keys of these CodeSystems the server already has (one OR-search)."""
        if self.abilities.searchable("CodeSystem", "url"):
            params = [("url", ",".join(sorted({str(cs["url"]) for cs in code_systems})))]
        else:
            keys = sorted(code_system_key(cs) for cs in code_systems)
            params = [("_tag", ",".join(f"{KEY_TAG_SYSTEM}|{key}" for key in keys))]
        # A server that ignores a parameter answers with more: compare url and version here.
        found: set[str] = set()
        async for resource in self.client.search("CodeSystem", params):
            if resource.get("resourceType") == "CodeSystem" and resource.get("url"):
                found.add(f"{resource['url']}:{resource.get('version', '')}")
        return found

    def _code_system_create(self, code_system: Json) -> Json:
        resource = {k: v for k, v in code_system.items() if k != "id"}
        query = "&".join(f"{param}={value}" for param, value in self._code_system_match(resource))
        return {
            "fullUrl": f"urn:uuid:{uuid.uuid4()}",
            "resource": self._tagged(resource, code_system_key(resource), study=False),
            "request": {"method": "POST", "url": "CodeSystem", "ifNoneExist": query},
        }

    async def load_subjects_for(self, patient_ids: list[str]) -> None:
        """Read the existing subjects of these patients (one OR-search per 50 patients)."""
        keys = [subject_identifier_value(self.ruleset, pid) for pid in patient_ids]
        for key in keys:
            self.subjects.pop(key, None)
        for start in range(0, len(keys), 50):
            tokens = [
                self._match("ResearchSubject", self.identifier_system, k)
                for k in keys[start : start + 50]
            ]
            params = [(tokens[0][0], ",".join(token for _param, token in tokens))]
            async for resource in self.client.search("ResearchSubject", params):
                self._remember(resource)

    def _study_create(self) -> Json:
        study = research_study(self.ruleset)
        study.pop("id", None)
        identifier = study_identifier(self.ruleset)
        param, token = self._match("ResearchStudy", identifier["system"], identifier["value"])
        return {
            "fullUrl": f"urn:uuid:{uuid.uuid4()}",
            "resource": self._tagged(study, identifier["value"]),
            "request": {
                "method": "POST",
                "url": "ResearchStudy",
                "ifNoneExist": f"{param}={token}",
            },
        }

    def _remember(self, resource: Json) -> None:
        if resource.get("resourceType") != "ResearchSubject":
            return
        for identifier in resource.get("identifier", []):
            if identifier.get("system") == self.identifier_system:
                self.subjects[str(identifier.get("value"))] = ExistingSubject(resource)

    # --- planning -------------------------------------------------------------------------------

    def plan(self, verdict: PatientVerdict) -> list[Json] | None:
        """The transaction entries for one patient, or None when there is nothing to write."""
        key = subject_identifier_value(self.ruleset, verdict.patient_id)
        existing = self.subjects.get(key)
        status = verdict.verdict if verdict.verdict in SUBJECT_STATUSES else "ineligible"
        marks = fingerprint(verdict, self.ruleset)
        entries: list[Json] = []
        if existing is None:
            if status == "ineligible":
                return None
            study_reference = self.study_reference
            if not study_reference:
                study_entry = self._study_create()
                entries.append(study_entry)
                study_reference = str(study_entry["fullUrl"])
            subject_url = f"urn:uuid:{uuid.uuid4()}"
            subject = self._subject(verdict.patient_id, status, marks, None, study_reference)
            param, token = self._match("ResearchSubject", self.identifier_system, key)
            subject_entry = {
                "fullUrl": subject_url,
                "resource": subject,
                "request": {
                    "method": "POST",
                    "url": "ResearchSubject",
                    "ifNoneExist": f"{param}={token}",
                },
            }
            self.stats.created += 1
        else:
            if not existing.owned_by_prescreen:
                self.stats.kept_human_status += 1
                return None
            if existing.status == status and existing.extension(FINGERPRINT_URL) == marks:
                self.stats.unchanged += 1
                return None
            # The entries refer to it as the server does ("ResearchSubject/<id>"); its fullUrl
            # is that same reference made absolute on the server's base, as R4 requires.
            subject_url = f"ResearchSubject/{existing.id}"
            subject = self._subject(verdict.patient_id, status, marks, existing.resource, "")
            request: Json = {"method": "PUT", "url": subject_url}
            if existing.version is not None:
                request["ifMatch"] = f'W/"{existing.version}"'
            subject_entry = {
                "fullUrl": f"{self.client.base_url}{subject_url}",
                "resource": subject,
                "request": request,
            }
            self.stats.updated += 1
            if status == "ineligible" and existing.status != "ineligible":
                self.stats.withdrawn += 1
        entries.append(subject_entry)
        observation_urls = []
        for criterion in verdict.criteria:
            url = f"urn:uuid:{uuid.uuid4()}"
            observation_urls.append(url)
            entries.append(self._observation(verdict, criterion.id, url, subject_url))
        entries.append(self._provenance(verdict, [subject_url, *observation_urls]))
        return entries

    def _subject(
        self,
        patient_id: str,
        status: str,
        marks: str,
        previous: Json | None,
        study_reference: str,
    ) -> Json:
        if previous is None:
            subject = research_subject(
                self.ruleset, patient_id, status, self.as_of, self.identifier_system
            )
            subject["study"]["reference"] = study_reference
            subject.pop("id", None)
        else:
            # Keep what others added (notes, period, consent); change only what prescreen owns.
            subject = {k: v for k, v in previous.items() if k != "meta"}
            subject["status"] = status
        others = [
            e
            for e in subject.get("extension", [])
            if e.get("url") not in (WRITTEN_STATUS_URL, FINGERPRINT_URL)
        ]
        subject["extension"] = [
            *others,
            {"url": WRITTEN_STATUS_URL, "valueCode": status},
            {"url": FINGERPRINT_URL, "valueString": marks},
        ]
        key = subject_identifier_value(self.ruleset, patient_id)
        return validated(ResearchSubject, self._tagged(subject, key))

    def _observation(
        self, verdict: PatientVerdict, criterion_id: str, full_url: str, subject_url: str
    ) -> Json:
        criterion = next(c for c in self.ruleset.criteria if c.id == criterion_id)
        result = next(c for c in verdict.criteria if c.id == criterion_id)
        identifier = f"{subject_identifier_value(self.ruleset, verdict.patient_id)}/{criterion_id}"
        resource: Json = {
            "resourceType": "Observation",
            "identifier": [{"system": OBSERVATION_IDENTIFIER_SYSTEM, "value": identifier}],
            "status": "final",
            "code": {
                "coding": [
                    {
                        "system": criterion_system(self.ruleset),
                        "code": criterion_id,
                        "display": criterion_display(criterion),
                    }
                ],
                "text": f"{self.ruleset.trial.acronym} {criterion.kind}: {criterion_id}",
            },
            "subject": {"reference": f"Patient/{verdict.patient_id}"},
            "focus": [{"reference": subject_url}],
            "effectiveDateTime": self.as_of.isoformat(),
            "valueCodeableConcept": {
                "coding": [{"system": RESULT_SYSTEM, "code": result.result}],
                "text": result.result,
            },
            "note": [{"text": result.reason}],
            "component": [
                {
                    "code": {"coding": [{"system": ATTRIBUTE_SYSTEM, "code": KIND_COMPONENT}]},
                    "valueCodeableConcept": {
                        "coding": [{"system": ATTRIBUTE_SYSTEM, "code": criterion.kind}],
                        "text": criterion.kind,
                    },
                },
                {
                    "code": {"coding": [{"system": ATTRIBUTE_SYSTEM, "code": MANUAL_COMPONENT}]},
                    "valueBoolean": criterion.manual,
                },
            ],
        }
        if result.evidence:
            resource["extension"] = [
                {"url": SUPPORTING_INFO_URL, "valueReference": {"reference": ref}}
                for ref in result.evidence
            ]
            derived = [r for r in result.evidence if r.split("/", 1)[0] in DERIVED_FROM_TYPES]
            if derived:
                resource["derivedFrom"] = [{"reference": ref} for ref in derived]
        param, token = self._match("Observation", OBSERVATION_IDENTIFIER_SYSTEM, identifier)
        return {
            "fullUrl": full_url,
            "resource": validated(Observation, self._tagged(resource, identifier)),
            "request": {"method": "PUT", "url": f"Observation?{param}={token}"},
        }

    def _provenance(self, verdict: PatientVerdict, targets: list[str]) -> Json:
        evidence = sorted({ref for c in verdict.criteria for ref in c.evidence})
        resource: Json = {
            "resourceType": "Provenance",
            "target": [{"reference": target} for target in targets],
            "occurredDateTime": self.as_of.isoformat(),
            "recorded": datetime.now(UTC).isoformat(timespec="seconds"),
            "policy": [ruleset_policy(self.ruleset)],
            "reason": [
                {"text": f"pre-screening for {self.ruleset.trial.nct_id}: {verdict.verdict}"}
            ],
            "agent": [
                {
                    "type": {
                        "coding": [
                            {
                                "system": "http://terminology.hl7.org/CodeSystem/provenance-participant-type",
                                "code": "assembler",
                            }
                        ]
                    },
                    "who": {"display": f"prescreen {self.ruleset.id} {self.ruleset.run_version}"},
                }
            ],
        }
        if evidence:
            resource["entity"] = [
                {"role": "source", "what": {"reference": ref}} for ref in evidence
            ]
        return {
            "fullUrl": f"urn:uuid:{uuid.uuid4()}",
            "resource": validated(Provenance, resource),
            "request": {"method": "POST", "url": "Provenance"},
        }

    # --- writing --------------------------------------------------------------------------------

    async def write(self, verdicts: list[PatientVerdict]) -> None:
        """One transaction per patient with changes; a version conflict is re-read and retried."""
        for verdict in verdicts:
            entries = self.plan(verdict)
            if entries is None:
                continue
            if self.dry_run:
                await self._send(entries)
                continue
            await self._commit(verdict, entries)

    async def withdraw(self, patient_ids: list[str]) -> None:
        """Subjects of patients no longer screened (inactive, merged) are set to ineligible,
        like a former candidate's, unless a person set their status; nothing new is created."""
        await self.write([PatientVerdict(pid, "ineligible", ()) for pid in patient_ids])

    async def _commit(self, verdict: PatientVerdict, entries: list[Json]) -> None:
        for attempt in range(3):
            try:
                self.stats.transactions += 1
                answer = await self.client.bundle("transaction", entries)
            except FhirServerError as exc:
                if exc.status not in (409, 412) or attempt == 2:
                    raise
                # Someone changed the subject since it was read: read it again and re-plan.
                self.stats.conflicts_retried += 1
                await self.load_subjects_for([verdict.patient_id])
                replanned = self.plan(verdict)
                if replanned is None:
                    return
                entries = replanned
                continue
            self._remember_written(answer, entries)
            return

    def _remember_written(self, answer: Json, entries: list[Json]) -> None:
        """Keep the new version of the subject, so a later write in this run uses If-Match."""
        for sent, received in zip(entries, answer.get("entry", []), strict=False):
            if sent["resource"].get("resourceType") != "ResearchSubject":
                continue
            written = dict(sent["resource"])
            location = received.get("response", {}).get("location", "")
            parts = location.split("/")
            if "ResearchSubject" in parts:
                index = parts.index("ResearchSubject")
                written["id"] = parts[index + 1]
                if "_history" in parts:
                    written["meta"] = {"versionId": parts[parts.index("_history") + 1]}
            if isinstance(received.get("resource"), dict):
                written = received["resource"]
            if written.get("id"):
                self._remember(written)


# (server base, CodeSystem key) found, created or refused in this process: not tried again.
_SETTLED: set[tuple[str, str]] = set()
