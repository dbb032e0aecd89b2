"""A synthetic hospital as Bulk-Data NDJSON, deterministic by seed.

Most patients are unrelated to any trial (vitals, labs, common conditions and procedures); some
have cancer; a few have spinal metastases, each drawn from a list of RELIEVE scenarios that
together produce every verdict and every criterion outcome. The codes used here are test data,
written as a hospital would record them; prescreen itself reads codes only from fhir_mappings/.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import orjson

SCT = "http://snomed.info/sct"
LOINC = "http://loinc.org"
ICD10 = "http://hl7.org/fhir/sid/icd-10-cm"
CPT = "http://www.ama-assn.org/go/cpt"
UCUM = "http://unitsofmeasure.org"
LOCAL = "urn:prescreen:relieve"
CLINICAL = "http://terminology.hl7.org/CodeSystem/condition-clinical"
VERIFICATION = "http://terminology.hl7.org/CodeSystem/condition-ver-status"
OBS_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"

Resource = dict[str, Any]

# (code system, code, display, unit, low, high) of routine measurements.
VITALS = [
    (LOINC, "8867-4", "Heart rate", "/min", 55, 110),
    (LOINC, "8480-6", "Systolic blood pressure", "mm[Hg]", 100, 170),
    (LOINC, "29463-7", "Body weight", "kg", 45, 120),
    (LOINC, "8310-5", "Body temperature", "Cel", 36, 39),
    (LOINC, "2339-0", "Glucose [Mass/volume] in Blood", "mg/dL", 70, 200),
    (LOINC, "718-7", "Hemoglobin [Mass/volume] in Blood", "g/dL", 8, 17),
    (LOINC, "2160-0", "Creatinine [Mass/volume] in Serum or Plasma", "mg/dL", 0.5, 2.5),
]
COMMON_CONDITIONS = [
    (SCT, "38341003", "Hypertensive disorder"),
    (SCT, "44054006", "Diabetes mellitus type 2"),
    (SCT, "195967001", "Asthma"),
    (SCT, "279039007", "Low back pain"),
    (SCT, "396275006", "Osteoarthritis"),
    (SCT, "35489007", "Depressive disorder"),
]
COMMON_PROCEDURES = [
    (SCT, "73761001", "Colonoscopy"),
    (SCT, "80146002", "Appendectomy"),
    (SCT, "387713003", "Surgical procedure"),
]
PRIMARY_CANCERS = [
    (SCT, "254837009", "Malignant neoplasm of breast"),
    (SCT, "254637007", "Non-small cell lung cancer"),
    (SCT, "399068003", "Malignant tumor of prostate"),
    (SCT, "363406005", "Malignant tumor of colon"),
]
REGIONS = {
    "cervical": "122494005",
    "thoracic": "122495006",
    "lumbar": "122496007",
    "sacral": "54735007",
}
PAIN_TYPES = [
    "axial-nontriggered",
    "axial-triggered",
    "radicular-nontriggered",
    "radicular-triggered",
]

# RELIEVE scenarios for spinal-metastasis patients, with their relative weights.
SCENARIOS: dict[str, int] = {
    "eligible-radiotherapy-order": 4,
    "eligible-recent-stabilization": 2,
    "eligible-two-lesions-one-region": 1,
    "no-survival-estimate": 2,
    "no-pain-type": 2,
    "no-treatment": 2,
    "two-regions": 1,
    "old-pain-scores": 1,
    "low-pain": 1,
    "short-survival": 1,
    "liver-metastasis": 1,
    "kyphoplasty-only": 1,
    "chemotherapy-only": 1,
    "deceased": 1,
    "minor": 1,
    "bone-metastasis-without-site": 1,
}


def _coding(system: str, code: str, display: str | None = None) -> dict[str, Any]:
    coding = {"system": system, "code": code}
    if display:
        coding["display"] = display
    return {"coding": [coding]}


@dataclass
class _Patient:
    """Builds the resources of one patient with ids unique in the population."""

    pid: str
    as_of: date
    rng: random.Random
    resources: list[Resource] = field(default_factory=list)
    _counter: int = 0

    def _id(self, prefix: str) -> str:
        self._counter += 1
        return f"{self.pid}-{prefix}{self._counter}"

    def ref(self) -> dict[str, str]:
        return {"reference": f"Patient/{self.pid}"}

    def day(self, days_ago: int) -> str:
        return (self.as_of - timedelta(days=days_ago)).isoformat()

    def instant(self, days_ago: int) -> str:
        hour = self.rng.randint(7, 19)
        return f"{self.day(days_ago)}T{hour:02d}:{self.rng.randint(0, 59):02d}:00+01:00"

    def patient(self, birth: str | None, **extra: Any) -> None:
        resource: Resource = {
            "resourceType": "Patient",
            "id": self.pid,
            "gender": self.rng.choice(["female", "male"]),
        }
        if birth:
            resource["birthDate"] = birth
        resource.update(extra)
        self.resources.append(resource)

    def condition(
        self,
        system: str,
        code: str,
        display: str,
        *,
        site: str | None = None,
        clinical: str = "active",
        verification: str = "confirmed",
        days_ago: int = 60,
    ) -> None:
        resource: Resource = {
            "resourceType": "Condition",
            "id": self._id("c"),
            "subject": self.ref(),
            "clinicalStatus": _coding(CLINICAL, clinical),
            "verificationStatus": _coding(VERIFICATION, verification),
            "code": _coding(system, code, display),
            "onsetDateTime": self.day(days_ago),
        }
        if site:
            resource["bodySite"] = [_coding(SCT, site)]
        self.resources.append(resource)

    def measurement(
        self, system: str, code: str, display: str, unit: str, value: float, days_ago: int
    ) -> None:
        self.resources.append(
            {
                "resourceType": "Observation",
                "id": self._id("o"),
                "status": "final",
                "category": [_coding(OBS_CATEGORY, "vital-signs")],
                "code": _coding(system, code, display),
                "subject": self.ref(),
                "effectiveDateTime": self.instant(days_ago),
                "valueQuantity": {"value": value, "unit": unit, "system": UCUM, "code": unit},
            }
        )

    def pain(self, score: int, days_ago: int, pain_type: str | None) -> None:
        resource: Resource = {
            "resourceType": "Observation",
            "id": self._id("nrs"),
            "status": "final",
            "category": [_coding(OBS_CATEGORY, "survey")],
            "code": _coding(
                LOINC, "72514-3", "Pain severity - 0-10 verbal numeric rating [Score] - Reported"
            ),
            "subject": self.ref(),
            "effectiveDateTime": self.instant(days_ago),
            "valueInteger": score,
        }
        if pain_type:
            resource["component"] = [
                {
                    "code": _coding(LOCAL, "pain-type"),
                    "valueCodeableConcept": _coding(LOCAL, pain_type),
                }
            ]
        self.resources.append(resource)

    def survival(self, months: float, days_ago: int) -> None:
        self.resources.append(
            {
                "resourceType": "Observation",
                "id": self._id("surv"),
                "status": "final",
                "code": _coding(LOCAL, "estimated-survival", "Estimated survival"),
                "subject": self.ref(),
                "effectiveDateTime": self.day(days_ago),
                "valueQuantity": {"value": months, "unit": "months", "system": UCUM, "code": "mo"},
            }
        )

    def procedure(
        self, system: str, code: str, display: str, status: str, days_ago: int | None
    ) -> None:
        resource: Resource = {
            "resourceType": "Procedure",
            "id": self._id("proc"),
            "status": status,
            "code": _coding(system, code, display),
            "subject": self.ref(),
        }
        if days_ago is not None:
            resource["performedDateTime"] = self.instant(days_ago)
        self.resources.append(resource)

    def order(
        self, system: str, code: str, display: str, *, status: str = "active", intent: str = "order"
    ) -> None:
        self.resources.append(
            {
                "resourceType": "ServiceRequest",
                "id": self._id("sr"),
                "status": status,
                "intent": intent,
                "code": _coding(system, code, display),
                "subject": self.ref(),
                "authoredOn": self.day(self.rng.randint(1, 10)),
            }
        )

    def encounter(self, days_ago: int) -> None:
        self.resources.append(
            {
                "resourceType": "Encounter",
                "id": self._id("enc"),
                "status": "finished",
                "class": {
                    "system": "http://terminology.hl7.org/CodeSystem/v3-ActCode",
                    "code": "AMB",
                },
                "subject": self.ref(),
                "period": {"start": self.instant(days_ago), "end": self.instant(days_ago)},
            }
        )


def _birth_date(rng: random.Random, as_of: date, low: int, high: int) -> str:
    return (as_of - timedelta(days=rng.randint(low * 365 + 1, high * 365))).isoformat()


def _background(p: _Patient, volume: int) -> None:
    """Routine care: encounters, vitals and labs, a few common conditions and procedures."""
    rng = p.rng
    for _ in range(max(1, volume // 8)):
        p.encounter(rng.randint(1, 900))
    for _ in range(volume):
        system, code, display, unit, low, high = rng.choice(VITALS)
        p.measurement(
            system, code, display, unit, round(rng.uniform(low, high), 1), rng.randint(0, 900)
        )
    for system, code, display in rng.sample(COMMON_CONDITIONS, rng.randint(0, 3)):
        p.condition(system, code, display, days_ago=rng.randint(30, 3000))
    if rng.random() < 0.3:
        system, code, display = rng.choice(COMMON_PROCEDURES)
        p.procedure(system, code, display, "completed", rng.randint(30, 2000))


def _spinal_scenario(p: _Patient, scenario: str) -> None:
    rng = p.rng
    adult = _birth_date(rng, p.as_of, 35, 88)
    if scenario == "deceased":
        p.patient(adult, deceasedDateTime=p.instant(2))
    elif scenario == "minor":
        p.patient(_birth_date(rng, p.as_of, 14, 17))
    else:
        p.patient(adult)
    system, code, display = rng.choice(PRIMARY_CANCERS)
    p.condition(system, code, display, days_ago=rng.randint(200, 2000))
    region = rng.choice(list(REGIONS))
    if scenario == "bone-metastasis-without-site":
        p.condition(ICD10, "C79.51", "Secondary malignant neoplasm of bone")
    elif rng.random() < 0.5:
        p.condition(
            SCT,
            "94602001",
            "Secondary malignant neoplasm of vertebral column",
            site=REGIONS[region],
        )
    else:
        p.condition(ICD10, "C79.51", "Secondary malignant neoplasm of bone", site=REGIONS[region])
    if scenario == "eligible-two-lesions-one-region":
        p.condition(
            SCT,
            "94602001",
            "Secondary malignant neoplasm of vertebral column",
            site=REGIONS[region],
        )
    if scenario == "two-regions":
        other = rng.choice([r for r in REGIONS if r != region])
        p.condition(
            SCT, "94602001", "Secondary malignant neoplasm of vertebral column", site=REGIONS[other]
        )
    if scenario == "liver-metastasis":
        p.condition(ICD10, "C78.7", "Secondary malignant neoplasm of liver")

    pain_type = None if scenario == "no-pain-type" else rng.choice(PAIN_TYPES)
    days = (
        [rng.randint(35, 90) for _ in range(2)]
        if scenario == "old-pain-scores"
        else [rng.randint(1, 29) for _ in range(rng.randint(1, 4))]
    )
    for index, days_ago in enumerate(sorted(days, reverse=True)):
        latest = index == len(days) - 1
        score = (
            rng.randint(1, 4)
            if scenario == "low-pain"
            else rng.randint(5, 10)
            if latest
            else rng.randint(2, 9)
        )
        p.pain(score, days_ago, pain_type)

    if scenario != "no-survival-estimate":
        months = (
            round(rng.uniform(0.5, 2.8), 1)
            if scenario == "short-survival"
            else round(rng.uniform(4, 30), 1)
        )
        p.survival(months, rng.randint(1, 60))

    if scenario == "eligible-recent-stabilization":
        p.procedure(CPT, "22612", "Arthrodesis, posterior, lumbar", "completed", rng.randint(1, 25))
    elif scenario == "kyphoplasty-only":
        p.order(CPT, "22513", "Percutaneous vertebral augmentation, thoracic")
    elif scenario == "chemotherapy-only":
        p.procedure(SCT, "367336001", "Chemotherapy", "in-progress", None)
    elif scenario != "no-treatment":
        p.order(
            SCT,
            "1217123003",
            "Radiotherapy course of treatment",
            intent=rng.choice(["order", "plan"]),
        )


def _cancer_without_spine(p: _Patient) -> None:
    rng = p.rng
    p.patient(_birth_date(rng, p.as_of, 30, 90))
    system, code, display = rng.choice(PRIMARY_CANCERS)
    p.condition(system, code, display, days_ago=rng.randint(100, 2000))
    if rng.random() < 0.3:
        p.condition(ICD10, "C78.7", "Secondary malignant neoplasm of liver")
    if rng.random() < 0.4:
        p.procedure(SCT, "367336001", "Chemotherapy", "completed", rng.randint(5, 200))
    if rng.random() < 0.3:
        p.pain(rng.randint(0, 8), rng.randint(1, 60), None)


def generate(
    patients: int,
    seed: int,
    as_of: date,
    *,
    spinal_fraction: float = 0.02,
    cancer_fraction: float = 0.12,
    median_background: int = 90,
) -> Iterator[Resource]:
    """Every resource of the population, patient by patient."""
    rng = random.Random(seed)
    names, weights = list(SCENARIOS), list(SCENARIOS.values())
    for index in range(patients):
        p = _Patient(f"p{index:07d}", as_of, rng)
        draw = rng.random()
        if draw < spinal_fraction:
            # Cycle through scenarios first so that even a small population covers them all.
            seen = int(index * spinal_fraction)
            scenario = (
                names[seen % len(names)] if seen < len(names) else rng.choices(names, weights)[0]
            )
            _spinal_scenario(p, scenario)
        elif draw < spinal_fraction + cancer_fraction:
            _cancer_without_spine(p)
        else:
            p.patient(_birth_date(rng, as_of, 0, 95))
        # Long tail: most patients have a modest record, a few have thousands of resources.
        volume = int(rng.lognormvariate(0, 0.9) * median_background)
        _background(p, min(volume, 40 * median_background))
        yield from p.resources


def write_population(
    out: Path, patients: int, seed: int, as_of: date, **options: Any
) -> Counter[str]:
    """Write ``<ResourceType>.ndjson`` files; returns resources written per type."""
    out.mkdir(parents=True, exist_ok=True)
    handles: dict[str, Any] = {}
    counts: Counter[str] = Counter()
    try:
        for resource in generate(patients, seed, as_of, **options):
            kind = resource["resourceType"]
            handle = handles.get(kind)
            if handle is None:
                handle = handles[kind] = (out / f"{kind}.ndjson").open("wb")
            handle.write(orjson.dumps(resource) + b"\n")
            counts[kind] += 1
    finally:
        for handle in handles.values():
            handle.close()
    return counts
