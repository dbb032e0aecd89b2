"""RELIEVE written by hand in Python over the same facts: the floor for the rule engines.

It exists only to measure how much the data-driven engine costs; the service never uses it.
It follows ``rules/relieve.yaml`` 1.1.0 case by case (derived values, criterion cases in order,
evidence, reasons) with that file's parameters hard-coded, and returns what the engine returns:
evidence sorted and without duplicates, reasons rendered. The benchmark checks every result,
piece of evidence and reason against the engine's, so the comparison is fair.
"""

from __future__ import annotations

from datetime import date, timedelta
from typing import Any

Result = tuple[str, list[str], str]
Record = dict[str, Any]

# The parameters of rules/relieve.yaml 1.1.0.
MIN_AGE_YEARS = 18.0
NRS_OPERATOR = ">"
NRS_THRESHOLD = 4.0
PAIN_WINDOW_DAYS = 30
TREATMENT_WINDOW_DAYS = 30
ONGOING_WINDOW_DAYS = 90
SURVIVAL_WINDOW_DAYS = 90
MIN_SURVIVAL_MONTHS = 3.0

PAIN_TYPE_NAMES = (
    "axial-nontriggered",
    "axial-triggered",
    "radicular-nontriggered",
    "radicular-triggered",
)
ALL_PAIN_TYPES = (*PAIN_TYPE_NAMES, "unspecified")
SPINE_REGIONS = ("cervical", "thoracic", "lumbar", "sacral")
EXCLUSIONS = frozenset(
    ("survival", "multiple-sites", "confounding-pain", "augmentation-only", "systemic-only")
)
MANUAL = frozenset(("index-site", "consent"))

INDEX_SITE: Result = (
    "unknown",
    [],
    "requires clinician review: the treating clinician confirms the index site causes the pain",
)
CONSENT: Result = (
    "unknown",
    [],
    "requires clinician review: ability to consent is assessed in person",
)


def _number(value: float) -> str:
    """A number as the engine writes it in a reason: no spurious decimals, at most two."""
    if isinstance(value, float):
        if value.is_integer():
            return str(int(value))
        return f"{value:.2f}".rstrip("0").rstrip(".")
    return str(value)


def _names(values: list[str]) -> str:
    return ", ".join(values) if values else "none"


def _scores(records: list[Record]) -> str:
    """``[s.pain_types, s.score]`` per record, as the engine formats a list of lists."""
    if not records:
        return "none"
    return ", ".join(f"{_names(s['pain_types'])} {_number(s['score'])}" for s in records)


def _months(records: list[Record]) -> str:
    """``[e.comparator, e.months]`` per record: "< 3", "9" (an empty comparator leaves no gap)."""
    if not records:
        return "none"
    return ", ".join(
        f"{e['comparator']} {_number(e['months'])}" if e["comparator"] else _number(e["months"])
        for e in records
    )


def _refs(records: list[Record]) -> list[str]:
    if len(records) == 1:
        return [records[0]["ref"]]
    return sorted({r["ref"] for r in records})


class _Dates:
    """as_of, the window starts and the fixed reason texts that depend on them."""

    __slots__ = (
        "as_of",
        "augmentation_outdated",
        "nrs_none",
        "nrs_stale",
        "ongoing",
        "pain",
        "pain_type_none",
        "pain_type_stale",
        "survival",
        "survival_stale",
        "systemic_outdated",
        "treatment",
        "treatment_none",
        "treatment_stale",
    )

    def __init__(self, as_of: date) -> None:
        self.as_of = as_of.isoformat()
        self.pain = (as_of - timedelta(days=PAIN_WINDOW_DAYS)).isoformat()
        self.treatment = (as_of - timedelta(days=TREATMENT_WINDOW_DAYS)).isoformat()
        self.ongoing = (as_of - timedelta(days=ONGOING_WINDOW_DAYS)).isoformat()
        self.survival = (as_of - timedelta(days=SURVIVAL_WINDOW_DAYS)).isoformat()
        self.pain_type_stale = (
            f"no NRS pain score in the last {PAIN_WINDOW_DAYS} days (since {self.pain}) "
            "records a pain type; older ones do"
        )
        self.pain_type_none = f"no NRS pain score since {self.pain} records a pain type"
        self.nrs_stale = (
            f"no NRS pain score in the last {PAIN_WINDOW_DAYS} days (since {self.pain}); "
            "older scores are recorded"
        )
        self.nrs_none = f"no NRS pain score recorded since {self.pain}"
        self.treatment_stale = (
            "no stabilization, decompression or radiotherapy planned, ongoing or in the last "
            f"{TREATMENT_WINDOW_DAYS} days (since {self.treatment}); older or outdated ones "
            "are recorded"
        )
        self.treatment_none = (
            f"no planned, ongoing or recent (since {self.treatment}) stabilization, "
            "decompression or radiotherapy recorded"
        )
        self.survival_stale = (
            f"no estimated survival in the last {SURVIVAL_WINDOW_DAYS} days (since "
            f"{self.survival}); older estimates are recorded"
        )
        self.augmentation_outdated = (
            "no cement augmentation or ablation planned, ongoing or in the last "
            f"{TREATMENT_WINDOW_DAYS} days (since {self.treatment})"
        )
        self.systemic_outdated = (
            f"no systemic therapy planned, ongoing or in the last {TREATMENT_WINDOW_DAYS} days "
            f"(since {self.treatment})"
        )


_DATES: dict[date, _Dates] = {}


def _dates(as_of: date) -> _Dates:
    found = _DATES.get(as_of)
    if found is None:
        found = _DATES[as_of] = _Dates(as_of)
    return found


def _counted_treatment(t: Record, d: _Dates) -> bool:
    timing = t["timing"]
    today = d.as_of
    if timing == "planned":
        return True
    if timing == "scheduled":
        return (not t["recorded"] or t["recorded"] <= today) and (
            not t["start"] or t["start"] >= d.treatment
        )
    if timing == "ongoing":
        start = t["start"]
        return not start or d.ongoing <= start <= today
    if timing == "done":
        end: str = t["end"]
        if not end:
            return False
        started: str = t["start"]
        return d.treatment <= end <= today or (end > today and d.treatment <= started <= today)
    if timing == "ordered":
        recorded: str = t["recorded"]
        return d.treatment <= recorded <= today
    if timing == "taken":
        start = t["start"]
        return bool(start) and start <= today and (not t["end"] or t["end"] >= d.treatment)
    return False


def evaluate(facts: dict[str, Any], as_of: date) -> tuple[str, dict[str, Result]]:
    d = _dates(as_of)
    today = d.as_of
    patient = facts["patient"]
    me = [patient["ref"]]
    out: dict[str, Result] = {}

    # alive
    if patient["deceased"]:
        out["alive"] = ("not_met", me, "recorded as deceased")
    elif patient["deceased_date"] and patient["deceased_date"] <= today:
        out["alive"] = ("not_met", me, f"died on {patient['deceased_date']}")
    elif patient["deceased_unusable"] or patient["deceased_date_unusable"]:
        out["alive"] = (
            "unknown",
            me,
            "the deceased flag or date on the patient record could not be read",
        )
    else:
        out["alive"] = ("met", me, "no deceased flag on the patient record")

    # age
    if not patient["has_birth_date"]:
        out["age"] = ("unknown", [], "no birth date recorded")
    elif patient["age_min"] >= MIN_AGE_YEARS:
        age = _number(patient["age_min"])
        out["age"] = ("met", me, f"aged {age} on {today} (minimum 18)")
    elif patient["age_max"] < MIN_AGE_YEARS:
        age = _number(patient["age_max"])
        out["age"] = ("not_met", me, f"aged {age} on {today}, under 18")
    else:
        low, high = _number(patient["age_min"]), _number(patient["age_max"])
        out["age"] = (
            "unknown",
            me,
            f"birth date is partial: aged {low} to {high} on {today}, minimum 18",
        )

    # Derived values: conditions.
    counted_conditions = [
        c
        for c in facts["conditions"]
        if (not c["date"] or c["date"] <= today) and (not c["abated"] or c["abated"] > today)
    ]
    spinal = [
        c
        for c in counted_conditions
        if c["vertebral_metastasis"] or (c["bone_metastasis"] and c["spine_site"])
    ]

    # spinal-metastasis
    if spinal:
        out["spinal-metastasis"] = (
            "met",
            _refs(spinal),
            f"spinal metastasis diagnosis recorded ({len(spinal)})",
        )
    else:
        unlocated = [
            c
            for c in counted_conditions
            if c["bone_metastasis"] and not c["vertebral_metastasis"] and not c["has_coded_site"]
        ]
        if unlocated:
            out["spinal-metastasis"] = (
                "unknown",
                _refs(unlocated),
                "bone metastasis recorded, site not coded: check whether it is in the spine",
            )
        else:
            elsewhere = [
                c
                for c in counted_conditions
                if c["bone_metastasis"] and c["has_coded_site"] and not c["spine_site"]
            ]
            supporting = [c for c in counted_conditions if c["supporting"]]
            if elsewhere:
                out["spinal-metastasis"] = (
                    "not_met",
                    _refs(elsewhere),
                    "bone metastasis recorded, but not at a spine body site",
                )
            elif supporting:
                out["spinal-metastasis"] = (
                    "not_met",
                    _refs(supporting),
                    "no spinal metastasis diagnosis; supporting findings (cord compression, "
                    "collapsed vertebra or pathological fracture) are recorded and may deserve "
                    "a look",
                )
            else:
                out["spinal-metastasis"] = (
                    "not_met",
                    [],
                    "no active spinal metastasis diagnosis recorded",
                )

    out["index-site"] = INDEX_SITE

    # Derived values: pain scores.
    pain_scores = facts["pain_scores"]
    pain_start = d.pain
    window = [s for s in pain_scores if s["date"] and pain_start <= s["date"] <= today]

    # pain-type
    typed = [s for s in window if "unspecified" not in s["pain_types"]]
    if typed:
        types = [t for t in PAIN_TYPE_NAMES if any(t in s["pain_types"] for s in window)]
        out["pain-type"] = (
            "met",
            _refs(typed),
            f"pain type recorded since {pain_start}: {_names(types)}",
        )
    elif any("unspecified" not in s["pain_types"] for s in pain_scores):
        out["pain-type"] = ("unknown", [], d.pain_type_stale)
    else:
        out["pain-type"] = ("unknown", [], d.pain_type_none)

    # pain-nrs. The newest instant of each pain type in the window: a record is the latest of
    # a type it carries when no record of that type in the window is newer.
    if not window:
        if pain_scores:
            out["pain-nrs"] = ("unknown", [], d.nrs_stale)
        else:
            out["pain-nrs"] = ("unknown", [], d.nrs_none)
    else:
        newest: dict[str, str] = {}
        for s in window:
            instant = s["instant"]
            for t in s["pain_types"]:
                if t not in newest or instant > newest[t]:
                    newest[t] = instant
        latest = [s for s in window if any(s["instant"] == newest[t] for t in s["pain_types"])]
        if NRS_OPERATOR == ">=":
            above = [s for s in latest if s["has_score"] and s["score"] >= NRS_THRESHOLD]
        else:
            above = [s for s in latest if s["has_score"] and s["score"] > NRS_THRESHOLD]
        if above:
            out["pain-nrs"] = ("met", _refs(above), f"latest NRS > 4: {_scores(above)}")
        else:
            decided = {
                t
                for s in latest
                if s["has_score"]
                for t in s["pain_types"]
                if s["instant"] == newest[t]
            }
            undecided = [t for t in ALL_PAIN_TYPES if t in newest and t not in decided]
            if undecided:
                out["pain-nrs"] = (
                    "unknown",
                    _refs([s for s in latest if not s["has_score"]]),
                    f"the latest NRS score for {_names(undecided)} is missing or unusable",
                )
            else:
                out["pain-nrs"] = (
                    "not_met",
                    _refs(latest),
                    f"no pain type has a latest NRS > 4: {_scores(latest)}",
                )

    # Derived values: treatments.
    treatments = facts["treatments"]
    local: list[Record] = []
    augment: list[Record] = []
    systemic: list[Record] = []
    for t in treatments:
        if _counted_treatment(t, d):
            if t["stabilization"] or t["decompression"] or t["radiotherapy"]:
                local.append(t)
            if t["augmentation"] or t["ablation"]:
                augment.append(t)
            if t["systemic"]:
                systemic.append(t)

    # treatment
    if local:
        kinds = [
            kind
            for kind in ("stabilization", "decompression", "radiotherapy")
            if any(t[kind] for t in local)
        ]
        out["treatment"] = (
            "met",
            _refs(local),
            f"planned, ongoing or recent: {_names(kinds)}",
        )
    elif any(t["stabilization"] or t["decompression"] or t["radiotherapy"] for t in treatments):
        out["treatment"] = ("unknown", [], d.treatment_stale)
    else:
        out["treatment"] = ("unknown", [], d.treatment_none)

    out["consent"] = CONSENT

    # survival
    estimates = facts["survival_estimates"]
    survival_start = d.survival
    survival = [e for e in estimates if e["date"] and survival_start <= e["date"] <= today]
    if not survival:
        if any(e["date"] and e["date"] <= today for e in estimates):
            out["survival"] = ("unknown", [], d.survival_stale)
        else:
            out["survival"] = ("unknown", [], "no estimated survival recorded")
    else:
        newest_estimate = max(e["instant"] for e in survival)
        last = [e for e in survival if e["instant"] == newest_estimate]
        short = [
            e
            for e in last
            if e["has_value"]
            and (
                (e["comparator"] == "" and e["months"] < MIN_SURVIVAL_MONTHS)
                or (e["comparator"] == "<" and e["months"] <= MIN_SURVIVAL_MONTHS)
                or (e["comparator"] == "<=" and e["months"] < MIN_SURVIVAL_MONTHS)
            )
        ]
        if short:
            out["survival"] = (
                "met",
                _refs(short),
                f"latest estimated survival {_months(short)} months, under 3",
            )
        else:
            unusable = [e for e in last if not e["has_value"]]
            if unusable:
                out["survival"] = (
                    "unknown",
                    _refs(unusable),
                    "the latest estimated survival is missing or unusable",
                )
            else:
                long = [
                    e
                    for e in last
                    if e["months"] >= MIN_SURVIVAL_MONTHS and e["comparator"] in ("", ">", ">=")
                ]
                if long:
                    out["survival"] = (
                        "not_met",
                        _refs(long),
                        f"latest estimated survival {_months(long)} months",
                    )
                else:
                    out["survival"] = (
                        "unknown",
                        _refs(last),
                        "latest estimated survival is a bound that does not decide: "
                        f"{_months(last)} months",
                    )

    # multiple-sites
    regions = [r for r in SPINE_REGIONS if any(r in c["regions"] for c in spinal)]
    if len(regions) >= 2:
        out["multiple-sites"] = (
            "unknown",
            _refs([c for c in spinal if c["regions"]]),
            f"spinal metastases in {_names(regions)}: which are symptomatic needs clinician review",
        )
    elif regions:
        out["multiple-sites"] = (
            "not_met",
            _refs([c for c in spinal if c["regions"]]),
            f"spinal metastases in one region: {regions[0]}",
        )
    else:
        out["multiple-sites"] = (
            "not_met",
            _refs(spinal) if spinal else [],
            "no more than one spine region recorded",
        )

    # confounding-pain
    confounders = [
        c
        for c in counted_conditions
        if c["confounder"] or (c["site_dependent"] and c["visceral_site"])
    ]
    if confounders:
        out["confounding-pain"] = (
            "met",
            _refs(confounders),
            "another pain source is recorded (visceral metastasis)",
        )
    else:
        out["confounding-pain"] = ("not_met", [], "no confounding pain source recorded")

    # augmentation-only
    if augment and not local:
        out["augmentation-only"] = (
            "met",
            _refs(augment),
            "cement augmentation or ablation without surgery or radiotherapy",
        )
    elif augment:
        out["augmentation-only"] = (
            "not_met",
            _refs(augment + local),
            "cement augmentation or ablation together with surgery or radiotherapy",
        )
    elif any(t["augmentation"] or t["ablation"] for t in treatments):
        out["augmentation-only"] = ("not_met", [], d.augmentation_outdated)
    else:
        out["augmentation-only"] = ("not_met", [], "no cement augmentation or ablation recorded")

    # systemic-only
    if systemic and not local and not augment:
        out["systemic-only"] = (
            "met",
            _refs(systemic),
            "systemic therapy without surgery, radiotherapy, augmentation or ablation",
        )
    elif systemic:
        out["systemic-only"] = (
            "not_met",
            _refs(systemic + local + augment),
            "systemic therapy together with a local treatment",
        )
    elif any(t["systemic"] for t in treatments):
        out["systemic-only"] = ("not_met", [], d.systemic_outdated)
    else:
        out["systemic-only"] = ("not_met", [], "no systemic therapy recorded")

    # The verdict: an inclusion not met or an exclusion met excludes; a decidable unknown
    # makes a potential candidate.
    verdict = "candidate"
    for cid, (result, _evidence, _reason) in out.items():
        if result == "not_met":
            if cid not in EXCLUSIONS:
                return "ineligible", out
        elif result == "met":
            if cid in EXCLUSIONS:
                return "ineligible", out
        elif cid not in MANUAL:
            verdict = "potential-candidate"
    return verdict, out
