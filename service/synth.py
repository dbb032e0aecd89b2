"""A synthetic hospital as Bulk-Data NDJSON, deterministic by seed.

Most patients are unrelated to any trial (vitals, labs, common conditions and procedures); some
have cancer; a few have spinal metastases, each drawn from a list of RELIEVE scenarios that
together produce every verdict and every criterion outcome. Each spinal-metastasis patient also
gets an SSRS scenario (vertebra levels, performance status, history and physical, spine MRI,
pregnancy test, cord compression) that together produce every SSRS verdict and criterion outcome.
SSRS records draw from a random stream of their own, so the RELIEVE records of a seed are the same
with or without them. The codes used here are test data, written as a hospital would record them;
prescreen itself reads codes only from fhir_mappings/.
"""

from __future__ import annotations

import itertools
import random
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import orjson

from service.synth_clinic import clinic_schedule

SCT = "http://snomed.info/sct"
LOINC = "http://loinc.org"
ICD10 = "http://hl7.org/fhir/sid/icd-10-cm"
CPT = "http://www.ama-assn.org/go/cpt"
UCUM = "http://unitsofmeasure.org"
LOCAL = "urn:prescreen:relieve"
SSRS = "urn:prescreen:ssrs"
BIRTH_SEX = "http://hl7.org/fhir/us/core/StructureDefinition/us-core-birthsex"
CLINICAL = "http://terminology.hl7.org/CodeSystem/condition-clinical"
VERIFICATION = "http://terminology.hl7.org/CodeSystem/condition-ver-status"
OBS_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
IDENTIFIER_TYPE = "http://terminology.hl7.org/CodeSystem/v2-0203"
# The synthetic hospital's medical record numbers, and the ones of the hospital it took over
# (kept on some records as old identifiers, as merged hospitals do).
MRN_SYSTEM = "http://hospital.example.org/fhir/sid/mrn"
OLD_MRN_SYSTEM = "http://old-hospital.example.org/fhir/sid/mrn"

Resource = dict[str, Any]


def _listed(text: str) -> list[str]:
    return text.split(", ")


# Names of the synthetic patients (common names of several origins, some with accents and
# apostrophes, so that search and display meet them as hospitals do).
GIVEN_NAMES = {
    "female": _listed(
        "Anna, Maria, Emma, Olivia, Sofia, Chloé, Ingrid, Aisha, Mei, Fatima, Lucia, Hannah, Zoë, "
        "Grace, Leila, Nora, Elena, Priya, Ruth, Agnès, Clara, Yuki, Amara, Brigitte, Siobhán, "
        "Marta, Helen, Noor, Isabel, Eva"
    ),
    "male": _listed(
        "James, Lucas, Mohamed, Noah, Pierre, Jonas, Kenji, Mateo, Omar, Liam, Thomas, David, "
        "Arjun, Björn, Ravi, Samuel, Hugo, Tomás, Paul, Ali, Daniel, Felix, Ivan, Kwame, Luis, "
        "Marco, Niall, Oscar, Pedro, Jean"
    ),
}
FAMILY_NAMES = _listed(
    "Smith, Müller, García, Martin, Rossi, Nguyen, Kowalski, Johansson, Dubois, O'Brien, Silva, "
    "Ivanova, Yamamoto, Okafor, Haddad, Schmidt, Fernández, Bernard, Jensen, Novak, Khan, "
    "Murphy, Lefèvre, Costa, Fischer, Chen, Patel, Wagner, Moreau, Nowak, Jansen, Petrov, Santos, "
    "Lambert, Weber, Núñez, Hansen, Brown, Kim, Laurent, Becker, Van der Berg, Mensah, Popescu, "
    "Horvat, Russo, Andersson, Taylor, Da Silva, Kovács"
)

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

# Vertebra levels (SNOMED CT) in order; the sacrum is the RELIEVE "sacral" region code itself.
LEVELS = {
    "C1": "14806007",
    "C2": "39976000",
    "C3": "113205007",
    "C4": "5329002",
    "C5": "36978003",
    "C6": "36054005",
    "C7": "87391001",
    "T1": "64864005",
    "T2": "53733008",
    "T3": "1626008",
    "T4": "73071006",
    "T5": "56401006",
    "T6": "45296009",
    "T7": "62487009",
    "T8": "11068009",
    "T9": "82687006",
    "T10": "7610001",
    "T11": "12989004",
    "T12": "23215003",
    "L1": "66794005",
    "L2": "14293000",
    "L3": "36470004",
    "L4": "11994002",
    "L5": "49668003",
}
ORDER = list(LEVELS)
REGION_LEVELS = {
    "cervical": ORDER[0:7],
    "thoracic": ORDER[7:19],
    "lumbar": ORDER[19:24],
    "sacral": [],
}
# The levels SSRS can treat (C3-L5), and the MRI region each belongs to.
TREATABLE = ORDER[2:]
MRI_REGIONS = ["cervical", "thoracic", "lumbar"]
SPINE_MRI = {
    "cervical": [(LOINC, "24935-9", "MR Cervical spine"), (CPT, "72141", "MRI cervical spine")],
    "thoracic": [(LOINC, "24980-5", "MR Thoracic spine"), (CPT, "72146", "MRI thoracic spine")],
    "lumbar": [(LOINC, "24968-0", "MR Lumbar spine"), (CPT, "72148", "MRI lumbar spine")],
}
HP_VISITS = [
    (CPT, "99204", "Office or other outpatient visit, new patient"),
    (CPT, "99214", "Office or other outpatient visit, established patient"),
    (CPT, "99215", "Office or other outpatient visit, established patient"),
    (CPT, "99244", "Outpatient consultation"),
    (CPT, "98005", "Synchronous audio-video visit, established patient"),
]
KPS_ANSWERS = {100: "LA29175-9", 90: "LA29176-7", 80: "LA29177-5", 70: "LA29178-3"}
ECOG_ANSWERS = {0: "LA9622-7", 1: "LA9623-5", 2: "LA9624-3", 3: "LA9625-0"}

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

# SSRS scenarios, drawn for each spinal-metastasis patient on top of its RELIEVE scenario, with
# their relative weights. "ssrs-" scenarios have every record a candidate needs; the others leave
# out or change one thing.
SSRS_SCENARIOS: dict[str, int] = {
    "ssrs-eligible": 8,
    "ssrs-eligible-ecog": 2,
    "ssrs-three-sites": 1,
    "ssrs-compression-resolved": 1,
    "ssrs-hysterectomy": 1,
    "no-performance-status": 2,
    "ecog-2": 1,
    "low-kps": 2,
    "kps-70": 1,
    "no-history-physical": 2,
    "no-spine-mri": 1,
    "mri-other-region": 1,
    "no-pregnancy-test": 1,
    "positive-pregnancy-test": 1,
    "cord-compression": 2,
    "diffuse": 1,
    "long-site": 1,
    "upper-cervical-only": 1,
    "region-only": 2,
}
# Scenarios that need levels coded in a region of the treatable span, or a woman under 60.
_NEED_LEVELS = {"ssrs-three-sites", "diffuse", "long-site", "upper-cervical-only", "region-only"}
_NEED_WOMAN = {"ssrs-hysterectomy", "no-pregnancy-test", "positive-pregnancy-test"}


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
    # Names and record numbers come from a stream of their own: the clinical records of a seed
    # are the same with or without them.
    identity: random.Random = field(default_factory=lambda: random.Random(0))
    index: int = 0
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
        resource.update(self._identity(str(resource["gender"])))
        resource.update(extra)
        self.resources.append(resource)

    def _identity(self, gender: str) -> Resource:
        """A medical record number and a name: deterministic, unique numbers (the index times a
        number prime to 10^8); some records also keep an old number of another system (listed
        first, as use "old") or a second given name."""
        given = [self.identity.choice(GIVEN_NAMES[gender])]
        if self.index % 11 == 5:
            given.append(self.identity.choice(GIVEN_NAMES[gender]))
        family = self.identity.choice(FAMILY_NAMES)
        mrn_type = {"coding": [{"system": IDENTIFIER_TYPE, "code": "MR"}]}
        identifiers: list[Resource] = []
        if self.index % 9 == 4:
            identifiers.append(
                {
                    "use": "old",
                    "type": mrn_type,
                    "system": OLD_MRN_SYSTEM,
                    "value": f"A{self.identity.randrange(10**6):06d}",
                }
            )
        identifiers.append(
            {
                "use": "usual",
                "type": mrn_type,
                "system": MRN_SYSTEM,
                "value": f"{(self.index * 7919 + 104729) % 10**8:08d}",
            }
        )
        return {
            "identifier": identifiers,
            "name": [{"use": "official", "family": family, "given": given}],
        }

    def condition(
        self,
        system: str,
        code: str,
        display: str,
        *,
        site: str | None = None,
        levels: Sequence[str] = (),
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
            # SSRS reads vertebra levels; RELIEVE reads the region coding above.
            resource["bodySite"] += [
                _coding(SCT, LEVELS[level], f"{level} vertebra") for level in levels
            ]
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

    def encounter(self, days_ago: int, visit: tuple[str, str, str] | None = None) -> None:
        resource: Resource = {
            "resourceType": "Encounter",
            "id": self._id("enc"),
            "status": "finished",
            "class": {
                "system": "http://terminology.hl7.org/CodeSystem/v3-ActCode",
                "code": "AMB",
            },
        }
        resource["subject"] = self.ref()
        if visit:  # a history and physical: SSRS reads its type and period.start
            resource["type"] = [_coding(*visit)]
            resource["period"] = {"start": self.instant(days_ago)}
        else:
            resource["period"] = {"start": self.instant(days_ago), "end": self.instant(days_ago)}
        self.resources.append(resource)

    def observation(
        self, code: dict[str, Any], category: str, days_ago: int, value: Resource
    ) -> None:
        """An Observation with its value given as ``{"value<type>": ...}``."""
        self.resources.append(
            {
                "resourceType": "Observation",
                "id": self._id("o"),
                "status": "final",
                "category": [_coding(OBS_CATEGORY, category)],
                "code": code,
                "subject": self.ref(),
                "effectiveDateTime": self.instant(days_ago),
                **value,
            }
        )

    def note(self, system: str, code: str, display: str, days_ago: int) -> None:
        self.resources.append(
            {
                "resourceType": "DocumentReference",
                "id": self._id("doc"),
                "status": "current",
                "docStatus": "final",
                "type": _coding(system, code, display),
                "subject": self.ref(),
                "date": self.instant(days_ago),
                "content": [{"attachment": {"contentType": "text/plain", "title": display}}],
            }
        )

    def report(self, codes: list[tuple[str, str, str]], days_ago: int, conclusion: str) -> None:
        self.resources.append(
            {
                "resourceType": "DiagnosticReport",
                "id": self._id("dr"),
                "status": "final",
                "category": [_coding("http://terminology.hl7.org/CodeSystem/v2-0074", "RAD")],
                "code": {
                    "coding": [
                        {"system": system, "code": code, "display": display}
                        for system, code, display in codes
                    ]
                },
                "subject": self.ref(),
                "effectiveDateTime": self.instant(days_ago),
                "conclusion": conclusion,
            }
        )


def _birth_date(rng: random.Random, as_of: date, low: int, high: int) -> str:
    return (as_of - timedelta(days=rng.randint(low * 365 + 1, high * 365))).isoformat()


def _age(birth: str, as_of: date) -> int:
    born = date.fromisoformat(birth)
    return as_of.year - born.year - ((as_of.month, as_of.day) < (born.month, born.day))


def _run(rng: random.Random, pool: list[str], length: int) -> list[str]:
    """``length`` adjacent levels from ``pool`` (all of it when shorter)."""
    length = min(length, len(pool))
    start = rng.randint(0, len(pool) - length)
    return pool[start : start + length]


def _apart(rng: random.Random, pool: list[str], count: int) -> list[str]:
    """``count`` levels from ``pool``, no two adjacent (fewer when the pool is too short)."""
    count = min(count, (len(pool) + 1) // 2)
    slots = sorted(rng.sample(range(len(pool) - count + 1), count))
    return [pool[slot + offset] for offset, slot in enumerate(slots)]


@dataclass
class _SsrsPlan:
    """What one spinal-metastasis patient gets for SSRS, decided when its conditions are made."""

    scenario: str
    woman_under_60: bool
    mri_regions: list[str] = field(default_factory=list)


@dataclass
class _SsrsPlanner:
    """Draws SSRS scenarios from a random stream of its own (the RELIEVE stream stays as it was).

    Every scenario is used once, on the first patient it fits, before any is drawn by weight, so
    that even a small population covers them all.
    """

    rng: random.Random
    pending: list[str] = field(default_factory=lambda: list(SSRS_SCENARIOS))

    def pick(self, region: str | None, woman_under_60: bool, screenable: bool) -> str:
        fits = [
            name
            for name in SSRS_SCENARIOS
            if (name not in _NEED_WOMAN or woman_under_60)
            and (name not in _NEED_LEVELS or (region is not None and region != "sacral"))
            and (name != "diffuse" or region in ("cervical", "thoracic"))
            and (name != "upper-cervical-only" or region == "cervical")
        ]
        if screenable:
            for name in self.pending:
                if name in fits:
                    self.pending.remove(name)
                    return name
        return self.rng.choices(fits, [SSRS_SCENARIOS[name] for name in fits])[0]

    def levels(self, scenario: str, region: str | None) -> list[str]:
        """The vertebra levels coded on the patient's first spinal metastasis."""
        if region is None or scenario == "region-only":
            return []
        treatable = [level for level in REGION_LEVELS[region] if level in TREATABLE]
        rng = self.rng
        if scenario == "diffuse":
            return _run(rng, REGION_LEVELS[region], rng.randint(6, 8))
        if scenario == "long-site":
            return _run(rng, treatable, 3)
        if scenario == "ssrs-three-sites":
            return _apart(rng, treatable, rng.randint(2, 3))
        if scenario == "upper-cervical-only":
            return rng.choice([["C1"], ["C2"], ["C1", "C2"]])
        if not treatable or (not scenario.startswith("ssrs-") and rng.random() < 0.15):
            return []
        return _run(rng, treatable, 1 if rng.random() < 0.65 else 2)

    def extra_level(self, scenario: str, region: str, taken: list[str]) -> list[str]:
        """One level for a further spinal metastasis, apart from the levels already coded."""
        if scenario == "region-only":
            return []
        near = {
            ORDER[i + step]
            for i in map(ORDER.index, taken)
            for step in (-1, 0, 1)
            if 0 <= i + step < len(ORDER)
        }
        free = [
            level for level in REGION_LEVELS[region] if level in TREATABLE and level not in near
        ]
        return [self.rng.choice(free)] if free else []


def _mri_regions(sites: list[tuple[str | None, list[str]]]) -> list[str]:
    """The MRI regions that cover the treatable part of each (region, levels) metastasis."""
    wanted: list[str] = []
    for region, levels in sites:
        if levels:
            wanted += [
                name
                for name in MRI_REGIONS
                if any(level in TREATABLE and level in REGION_LEVELS[name] for level in levels)
            ]
        elif region in MRI_REGIONS:
            wanted.append(region)
    return [name for name in MRI_REGIONS if name in wanted]


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


def _spinal_scenario(p: _Patient, scenario: str, planner: _SsrsPlanner) -> _SsrsPlan:
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

    # SSRS: the scenario and the vertebra levels, from the planner's own random stream.
    person = p.resources[0]
    woman_under_60 = person["gender"] == "female" and _age(person["birthDate"], p.as_of) < 60
    located = scenario != "bone-metastasis-without-site"
    ssrs = planner.pick(
        region if located else None,
        woman_under_60,
        screenable=located and region != "sacral" and scenario not in ("deceased", "minor"),
    )
    levels = planner.levels(ssrs, region if located else None)
    sites: list[tuple[str | None, list[str]]] = [(region if located else None, levels)]

    if scenario == "bone-metastasis-without-site":
        p.condition(ICD10, "C79.51", "Secondary malignant neoplasm of bone")
    elif rng.random() < 0.5:
        p.condition(
            SCT,
            "94602001",
            "Secondary malignant neoplasm of vertebral column",
            site=REGIONS[region],
            levels=levels,
        )
    else:
        p.condition(
            ICD10,
            "C79.51",
            "Secondary malignant neoplasm of bone",
            site=REGIONS[region],
            levels=levels,
        )
    if scenario == "eligible-two-lesions-one-region":
        more = planner.extra_level(ssrs, region, levels)
        sites.append((region, more))
        p.condition(
            SCT,
            "94602001",
            "Secondary malignant neoplasm of vertebral column",
            site=REGIONS[region],
            levels=more,
        )
    if scenario == "two-regions":
        other = rng.choice([r for r in REGIONS if r != region])
        more = planner.extra_level(ssrs, other, levels)
        sites.append((other, more))
        p.condition(
            SCT,
            "94602001",
            "Secondary malignant neoplasm of vertebral column",
            site=REGIONS[other],
            levels=more,
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

    # An MRI of the region where the metastasis was found (sacrum: the lumbar MRI shows it).
    mri_regions = _mri_regions(sites) or [region if region in MRI_REGIONS else "lumbar"]
    return _SsrsPlan(ssrs, woman_under_60, mri_regions)


def _performance_status(p: _Patient, scenario: str) -> None:
    rng = p.rng
    kps = _coding(LOINC, "89243-0", "Karnofsky Performance Status score")
    ecog = _coding(LOINC, "89247-1", "ECOG Performance Status score")
    if scenario == "no-performance-status":
        if rng.random() < 0.5:  # too old to count
            p.observation(kps, "survey", rng.randint(75, 300), {"valueInteger": 80})
        return
    if scenario in ("ssrs-eligible-ecog", "ecog-2") or (
        scenario == "low-kps" and rng.random() < 0.3
    ):
        grade = {"ssrs-eligible-ecog": rng.randint(0, 1), "ecog-2": 2}.get(scenario, 3)
        value: Resource = (
            {"valueCodeableConcept": _coding(LOINC, ECOG_ANSWERS[grade])}
            if rng.random() < 0.3
            else {"valueInteger": grade}
        )
        p.observation(ecog, "survey", rng.randint(1, 50), value)
        return
    if scenario == "low-kps":
        score = rng.choice([40, 50, 50, 60])
    elif scenario == "kps-70":
        score = 70
    else:
        score = rng.choice([80, 80, 90, 90, 100])
    if rng.random() < 0.3:  # an earlier, different score: the latest decides
        p.observation(kps, "survey", rng.randint(40, 55), {"valueInteger": rng.choice([60, 90])})
    value = (
        {"valueCodeableConcept": _coding(LOINC, KPS_ANSWERS[score])}
        if score in KPS_ANSWERS and rng.random() < 0.2
        else {"valueInteger": score}
    )
    p.observation(kps, "survey", rng.randint(1, 35), value)


def _history_and_physical(p: _Patient, scenario: str) -> None:
    rng = p.rng
    if scenario == "no-history-physical":
        days_ago = rng.randint(75, 400)  # too old to count
        if rng.random() < 0.5:
            return
    else:
        days_ago = rng.randint(1, 50)
    if rng.random() < 0.3:
        p.note(LOINC, "34117-2", "History and physical note", days_ago)
    else:
        p.encounter(days_ago, rng.choice(HP_VISITS))


def _spine_mri(p: _Patient, plan: _SsrsPlan) -> None:
    rng = p.rng
    regions, days_ago = plan.mri_regions, rng.randint(3, 50)
    if plan.scenario == "no-spine-mri":
        if rng.random() < 0.5:
            return
        days_ago = rng.randint(75, 400)  # too old to count
    elif plan.scenario == "mri-other-region":
        regions = [name for name in MRI_REGIONS if name not in regions][:1]
    if len(regions) > 1 and rng.random() < 0.5:  # one report coding every region
        p.report([SPINE_MRI[name][0] for name in regions], days_ago, "Spinal metastatic disease.")
        return
    for name in regions:
        loinc, cpt = SPINE_MRI[name]
        if rng.random() < 0.3:
            p.procedure(*cpt, "completed", days_ago)
        else:
            p.report([loinc], days_ago, f"Metastatic disease of the {name} spine.")


def _cord_compression(p: _Patient, scenario: str) -> None:
    rng = p.rng
    escc = _coding(SSRS, "escc-grade", "Epidural spinal cord compression grade")

    def grade(value: str, days_ago: int) -> None:
        p.observation(escc, "imaging", days_ago, {"valueCodeableConcept": _coding(SSRS, value)})

    if scenario == "cord-compression":
        if rng.random() < 0.5:
            p.condition(
                ICD10, "G95.20", "Cord compression, unspecified", days_ago=rng.randint(2, 30)
            )
        else:
            grade(rng.choice(["2", "3"]), rng.randint(2, 30))
    elif scenario == "ssrs-compression-resolved":
        p.condition(ICD10, "G95.20", "Cord compression, unspecified", days_ago=rng.randint(40, 55))
        grade(rng.choice(["1b", "1c"]), rng.randint(3, 30))
    elif rng.random() < 0.35:
        grade(rng.choice(["0", "1a", "1b", "1c"]), rng.randint(3, 50))


def _pregnancy(p: _Patient, plan: _SsrsPlan) -> None:
    rng = p.rng
    scenario = plan.scenario
    if scenario == "ssrs-hysterectomy":
        if rng.random() < 0.5:
            p.procedure(SCT, "236886002", "Hysterectomy", "completed", rng.randint(400, 6000))
        else:  # a permanent state counts whatever its clinical status
            p.condition(
                ICD10,
                "Z90.710",
                "Acquired absence of both cervix and uterus",
                clinical="inactive",
                days_ago=rng.randint(400, 6000),
            )
        return
    if not plan.woman_under_60:
        return
    urine = _coding(LOINC, "2106-3", "Choriogonadotropin (pregnancy test) [Presence] in Urine")
    serum = _coding(LOINC, "19080-1", "Choriogonadotropin [Units/volume] in Serum or Plasma")
    days_ago = rng.randint(1, 50)
    if scenario == "no-pregnancy-test":
        if rng.random() < 0.5:
            return
        days_ago = rng.randint(75, 400)  # too old to count
    if scenario == "positive-pregnancy-test":
        if rng.random() < 0.5:
            p.observation(
                urine,
                "laboratory",
                days_ago,
                {"valueCodeableConcept": _coding(SCT, "10828004", "Positive")},
            )
        else:
            hcg = {
                "value": rng.randint(200, 5000),
                "unit": "mIU/mL",
                "system": UCUM,
                "code": "m[IU]/mL",
            }
            p.observation(serum, "laboratory", days_ago, {"valueQuantity": hcg})
        return
    form = rng.random()
    if form < 0.4:
        p.observation(
            urine,
            "laboratory",
            days_ago,
            {"valueCodeableConcept": _coding(SCT, "260385009", "Negative")},
        )
    elif form < 0.7:
        hcg = {"comparator": "<", "value": 2, "unit": "mIU/mL", "system": UCUM, "code": "m[IU]/mL"}
        p.observation(serum, "laboratory", days_ago, {"valueQuantity": hcg})
    else:
        p.observation(urine, "laboratory", days_ago, {"valueString": "negative"})


def _ssrs_records(p: _Patient, plan: _SsrsPlan) -> None:
    """The records SSRS reads, beyond the conditions: drawn from ``p.rng``."""
    person = p.resources[0]
    if p.rng.random() < 0.3:
        code = "F" if person["gender"] == "female" else "M"
        person["extension"] = [{"url": BIRTH_SEX, "valueCode": code}]
    _performance_status(p, plan.scenario)
    _history_and_physical(p, plan.scenario)
    _spine_mri(p, plan)
    _cord_compression(p, plan.scenario)
    _pregnancy(p, plan)


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
    planner = _SsrsPlanner(random.Random(f"{seed}:ssrs"))
    identity = random.Random(f"{seed}:identity")
    names, weights = list(SCENARIOS), list(SCENARIOS.values())
    for index in range(patients):
        p = _Patient(f"p{index:07d}", as_of, rng, identity, index)
        plan: _SsrsPlan | None = None
        draw = rng.random()
        if draw < spinal_fraction:
            # Cycle through scenarios first so that even a small population covers them all.
            seen = int(index * spinal_fraction)
            scenario = (
                names[seen % len(names)] if seen < len(names) else rng.choices(names, weights)[0]
            )
            plan = _spinal_scenario(p, scenario, planner)
        elif draw < spinal_fraction + cancer_fraction:
            _cancer_without_spine(p)
        else:
            p.patient(_birth_date(rng, as_of, 0, 95))
        # Long tail: most patients have a modest record, a few have thousands of resources.
        volume = int(rng.lognormvariate(0, 0.9) * median_background)
        _background(p, min(volume, 40 * median_background))
        if plan is not None:
            # After the RELIEVE and routine records, from the SSRS stream: those stay as they were.
            p.rng = planner.rng
            _ssrs_records(p, plan)
        yield from p.resources


def write_population(
    out: Path, patients: int, seed: int, as_of: date, *, clinic_days: int = 0, **options: Any
) -> Counter[str]:
    """Write ``<ResourceType>.ndjson`` files; returns resources written per type. With
    ``clinic_days``, also a clinic schedule of that many days after ``as_of``
    (``service.synth_clinic``)."""
    out.mkdir(parents=True, exist_ok=True)
    handles: dict[str, Any] = {}
    counts: Counter[str] = Counter()
    resources = itertools.chain(
        generate(patients, seed, as_of, **options),
        clinic_schedule(patients, seed, as_of, clinic_days),
    )
    try:
        for resource in resources:
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
