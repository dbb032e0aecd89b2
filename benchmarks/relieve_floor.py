"""RELIEVE written by hand in Python over the same facts: the floor for the rule engines.

It exists only to measure how much the data-driven engine costs; the service never uses it.
Its results are checked against the engine's in the benchmark, so the comparison is fair.
"""

from __future__ import annotations

from datetime import date, timedelta
from typing import Any

Result = tuple[str, list[str], str]


def evaluate(facts: dict[str, Any], as_of: date) -> tuple[str, dict[str, Result]]:
    today = as_of.isoformat()
    pain_start = (as_of - timedelta(days=30)).isoformat()
    treatment_start = pain_start
    patient = facts["patient"]
    me = [patient["ref"]]
    out: dict[str, Result] = {}

    if patient["deceased"] or (patient["deceased_date"] and patient["deceased_date"] <= today):
        out["alive"] = ("not_met", me, "deceased")
    else:
        out["alive"] = ("met", me, "alive")
    if not patient["has_birth_date"]:
        out["age"] = ("unknown", [], "no birth date")
    elif patient["age_min"] >= 18:
        out["age"] = ("met", me, f"aged {patient['age_min']:g}")
    elif patient["age_max"] < 18:
        out["age"] = ("not_met", me, f"aged {patient['age_max']:g}")
    else:
        out["age"] = ("unknown", me, "partial birth date")

    conditions = facts["conditions"]
    spinal = [
        c
        for c in conditions
        if c["vertebral_metastasis"] or (c["bone_metastasis"] and c["spine_site"])
    ]
    out["spinal-metastasis"] = (
        ("met", [c["ref"] for c in spinal], "recorded") if spinal else ("not_met", [], "none")
    )
    out["index-site"] = ("unknown", [], "requires clinician review")

    window = [s for s in facts["pain_scores"] if s["date"] and pain_start <= s["date"] <= today]
    typed = [s for s in window if s["pain_type"] != "unspecified"]
    out["pain-type"] = (
        ("met", [s["ref"] for s in typed], "typed") if typed else ("unknown", [], "none")
    )
    scored = [s for s in window if s["has_score"]]
    latest: dict[str, dict[str, Any]] = {}
    for s in scored:
        if s["pain_type"] not in latest or s["instant"] > latest[s["pain_type"]]["instant"]:
            latest[s["pain_type"]] = s
    above = [s for s in latest.values() if s["score"] > 4]
    if not scored:
        out["pain-nrs"] = ("unknown", [], "no score")
    elif above:
        out["pain-nrs"] = ("met", [s["ref"] for s in above], "above")
    else:
        out["pain-nrs"] = ("not_met", [s["ref"] for s in latest.values()], "at most 4")

    counted = [
        t
        for t in facts["treatments"]
        if t["planned"] or (t["completed"] and t["date"] and treatment_start <= t["date"] <= today)
    ]
    local = [t for t in counted if t["stabilization"] or t["decompression"] or t["radiotherapy"]]
    augment = [t for t in counted if t["augmentation"] or t["ablation"]]
    systemic = [t for t in counted if t["systemic"]]
    out["treatment"] = (
        ("met", [t["ref"] for t in local], "planned") if local else ("unknown", [], "none")
    )
    out["consent"] = ("unknown", [], "requires clinician review")

    survival = [e for e in facts["survival_estimates"] if e["has_value"] and e["date"] <= today]
    newest = max((e["instant"] for e in survival), default=None)
    last = [e for e in survival if e["instant"] == newest]
    if not survival:
        out["survival"] = ("unknown", [], "none")
    elif any(e["months"] < 3 for e in last):
        out["survival"] = ("met", [e["ref"] for e in last], "short")
    else:
        out["survival"] = ("not_met", [e["ref"] for e in last], "long")

    regions = {r for c in spinal for r in c["regions"]}
    with_region = [c["ref"] for c in spinal if c["regions"]]
    out["multiple-sites"] = (
        ("unknown", with_region, "several")
        if len(regions) >= 2
        else ("not_met", with_region if regions else [c["ref"] for c in spinal], "one")
    )
    confounders = [c["ref"] for c in conditions if c["confounder"]]
    out["confounding-pain"] = (
        ("met", confounders, "other pain") if confounders else ("not_met", [], "none")
    )
    if augment and not local:
        out["augmentation-only"] = ("met", [t["ref"] for t in augment], "alone")
    else:
        out["augmentation-only"] = (
            "not_met",
            [t["ref"] for t in augment + local] if augment else [],
            "no",
        )
    if systemic and not local and not augment:
        out["systemic-only"] = ("met", [t["ref"] for t in systemic], "alone")
    else:
        out["systemic-only"] = (
            "not_met",
            [t["ref"] for t in systemic + local + augment] if systemic else [],
            "no",
        )

    kinds = {
        "survival": "exclusion",
        "multiple-sites": "exclusion",
        "confounding-pain": "exclusion",
        "augmentation-only": "exclusion",
        "systemic-only": "exclusion",
    }
    manual = {"index-site", "consent"}
    verdict = "candidate"
    for cid, (result, _evidence, _reason) in out.items():
        kind = kinds.get(cid, "inclusion")
        if (kind == "inclusion" and result == "not_met") or (
            kind == "exclusion" and result == "met"
        ):
            return "ineligible", out
        if result == "unknown" and cid not in manual:
            verdict = "potential-candidate"
    return verdict, out
