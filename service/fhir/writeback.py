"""Idempotent write-back of screening results to the FHIR server.

What is written, per patient who is (or was) a candidate:

- a ``ResearchSubject`` (R4), found again by its deterministic identifier (study + patient),
  created with a conditional create and updated with ``If-Match`` on its version;
- one ``Observation`` per criterion, so the results can be read from the server alone:
  ``code`` = the criterion (system ``urn:prescreen:criterion:<rule set>``), ``valueCodeableConcept``
  = met / not_met / unknown (system ``urn:prescreen:criterion-result``), ``note`` = the reason,
  the evidence as ``workflow-supportingInfo`` extensions (the core R4 extension that may reference
  any resource: ``derivedFrom`` only admits Observations and a few others, so it additionally
  lists the Observation evidence), ``focus`` = the ResearchSubject, ``effectiveDateTime`` = as_of;
  each has a deterministic identifier and is written with a conditional update;
- one ``Provenance`` per write, naming the rule set id and version (``policy``), as_of
  (``occurredDateTime``), the written resources (``target``) and the evidence (``entity``).

Every written resource also carries two ``meta.tag`` codings: ``urn:prescreen:key`` = its
deterministic key (the identifier value) and ``urn:prescreen:study`` = the NCT id. Conditional
creates and updates match on ``identifier`` where the CapabilityStatement declares that search
parameter for the type, and on ``_tag`` otherwise (``_tag`` is defined for every resource; some
servers, sekmet-fhir among them, have no ``identifier`` search on ResearchSubject). Subjects
written before are found by the study tag.

All of a patient's writes go in one transaction Bundle, so they land together or not at all.
Nothing is written when neither the status nor the results changed since the last run (a
fingerprint of the results is kept on the ResearchSubject), so running twice writes nothing twice.
A status a person set is never overwritten: prescreen records the status it last wrote in an
extension, and changes a subject only while its status is candidate, potential-candidate, or
still exactly what prescreen last wrote. A candidate who no longer qualifies becomes ``ineligible``.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime

import orjson
from fhir.resources.R4B.observation import Observation
from fhir.resources.R4B.provenance import Provenance
from fhir.resources.R4B.researchsubject import ResearchSubject

from service.errors import FhirServerError
from service.fhir.client import FhirClient, Json
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

WRITTEN_STATUS_URL = "urn:prescreen:fhir:StructureDefinition:written-status"
FINGERPRINT_URL = "urn:prescreen:fhir:StructureDefinition:results-fingerprint"
RESULT_SYSTEM = "urn:prescreen:criterion-result"
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
    failed: list[str] = field(default_factory=list)


def fingerprint(verdict: PatientVerdict, ruleset: RuleSet) -> str:
    """What the coordinator sees: status, per-criterion results, evidence and reasons."""
    payload = orjson.dumps(
        [ruleset.id, ruleset.version, verdict.verdict, [c.as_contract() for c in verdict.criteria]]
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
        self.study_reference = ""
        self._study_entry: Json | None = None
        self.subjects: dict[str, ExistingSubject] = {}

    # --- preparation ----------------------------------------------------------------------------

    def _match(self, resource_type: str, system: str, key: str) -> tuple[str, str]:
        """The search that finds the one resource with this deterministic key."""
        if self.abilities.searchable(resource_type, "identifier"):
            return "identifier", f"{system}|{key}"
        return "_tag", f"{KEY_TAG_SYSTEM}|{key}"

    def _tagged(self, resource: Json, key: str) -> Json:
        """The resource with prescreen's key and study tags (other tags kept)."""
        meta = dict(resource.get("meta", {}))
        tags = [
            t
            for t in meta.get("tag", [])
            if t.get("system") not in (KEY_TAG_SYSTEM, STUDY_TAG_SYSTEM)
        ]
        tags += [
            {"system": KEY_TAG_SYSTEM, "code": key},
            {"system": STUDY_TAG_SYSTEM, "code": self.ruleset.trial.nct_id},
        ]
        return {**resource, "meta": {"tag": tags}}

    async def prepare(self, load_subjects: bool = True) -> None:
        """Find (or create) the ResearchStudy and read the subjects written for it before.

        A service that screens a few patients at a time passes ``load_subjects=False`` and reads
        just those patients' subjects with ``load_subjects_for``.
        """
        identifier = study_identifier(self.ruleset)
        param, token = self._match("ResearchStudy", identifier["system"], identifier["value"])
        found = [r async for r in self.client.search("ResearchStudy", [(param, token)])]
        studies = [r for r in found if r.get("resourceType") == "ResearchStudy"]
        if len(studies) > 1:
            raise FhirServerError(f"{len(studies)} ResearchStudy resources carry {token}")
        if studies:
            self.study_reference = f"ResearchStudy/{studies[0]['id']}"
        elif self.dry_run:
            full_url = f"urn:uuid:{uuid.uuid4()}"
            self.study_reference = full_url
            self._study_entry = self._study_create(full_url)
        else:
            answer = await self.client.bundle("transaction", [self._study_create(None)])
            self.study_reference = _reference_from(answer["entry"][0], "ResearchStudy")
        if load_subjects and not self.study_reference.startswith("urn:uuid:"):
            params = [
                ("_tag", f"{STUDY_TAG_SYSTEM}|{self.ruleset.trial.nct_id}"),
                ("_count", "500"),
            ]
            async for resource in self.client.search("ResearchSubject", params):
                self._remember(resource)

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

    def _study_create(self, full_url: str | None) -> Json:
        study = research_study(self.ruleset)
        study.pop("id", None)
        identifier = study_identifier(self.ruleset)
        param, token = self._match("ResearchStudy", identifier["system"], identifier["value"])
        entry: Json = {
            "resource": self._tagged(study, identifier["value"]),
            "request": {
                "method": "POST",
                "url": "ResearchStudy",
                "ifNoneExist": f"{param}={token}",
            },
        }
        if full_url:
            entry["fullUrl"] = full_url
        return entry

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
        if existing is None:
            if status == "ineligible":
                return None
            subject_url = f"urn:uuid:{uuid.uuid4()}"
            subject = self._subject(verdict.patient_id, status, marks, None)
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
            subject_url = f"ResearchSubject/{existing.id}"
            subject = self._subject(verdict.patient_id, status, marks, existing.resource)
            request: Json = {"method": "PUT", "url": subject_url}
            if existing.version is not None:
                request["ifMatch"] = f'W/"{existing.version}"'
            subject_entry = {"fullUrl": subject_url, "resource": subject, "request": request}
            self.stats.updated += 1
            if status == "ineligible" and existing.status != "ineligible":
                self.stats.withdrawn += 1
        entries: list[Json] = [subject_entry]
        observation_urls = []
        for criterion in verdict.criteria:
            url = f"urn:uuid:{uuid.uuid4()}"
            observation_urls.append(url)
            entries.append(self._observation(verdict, criterion.id, url, subject_url))
        entries.append(self._provenance(verdict, [subject_url, *observation_urls]))
        return entries

    def _subject(self, patient_id: str, status: str, marks: str, previous: Json | None) -> Json:
        fresh = research_subject(
            self.ruleset, patient_id, status, self.as_of, self.identifier_system
        )
        fresh["study"]["reference"] = self.study_reference
        if previous is None:
            fresh.pop("id", None)
            subject = fresh
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
                        "system": f"urn:prescreen:criterion:{self.ruleset.id}",
                        "code": criterion_id,
                        "display": " ".join(criterion.text.split())[:250],
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
            "policy": [f"urn:prescreen:ruleset:{self.ruleset.id}:{self.ruleset.version}"],
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
                    "who": {"display": f"prescreen {self.ruleset.id} {self.ruleset.version}"},
                }
            ],
        }
        if evidence:
            resource["entity"] = [
                {"role": "source", "what": {"reference": ref}} for ref in evidence
            ]
        return {
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
            if self._study_entry is not None:
                entries = [self._study_entry, *entries]
                self._study_entry = None
            if self.dry_run:
                if self.echo is not None:
                    self.echo({"resourceType": "Bundle", "type": "transaction", "entry": entries})
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


def _reference_from(entry: Json, resource_type: str) -> str:
    resource = entry.get("resource")
    if isinstance(resource, dict) and resource.get("id"):
        return f"{resource_type}/{resource['id']}"
    location = str(entry.get("response", {}).get("location", ""))
    parts = location.split("/")
    if resource_type in parts:
        return f"{resource_type}/{parts[parts.index(resource_type) + 1]}"
    raise FhirServerError(f"the server did not say where it put the {resource_type}")
