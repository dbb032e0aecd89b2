"""The files a screening run writes from its verdicts, whichever executor computed them:
each trial's verdicts.ndjson, ResearchSubject.ndjson and ResearchStudy.ndjson, and a
portfolio's overlap files (summary.json, patients.ndjson)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from datetime import date
from typing import Any

from service.research import SUBJECT_STATUSES, research_study, research_subject
from service.ruleset.evaluate import VERDICTS
from service.ruleset.loader import RuleSet
from service.screening import output


def write_overview(
    rulesets: Sequence[RuleSet],
    as_of: date,
    verdicts_by_patient: dict[str, dict[str, str]],
    outputs: output.OutputSet,
) -> dict[str, Any]:
    """A portfolio's own files: summary.json (the overlap) and patients.ndjson."""
    overview = overlap([r.id for r in rulesets], as_of, verdicts_by_patient)
    outputs.json(output.SUMMARY, overview)
    patients_file = outputs.ndjson(PATIENTS)
    for patient_id in sorted(verdicts_by_patient):
        patients_file.write(
            {"patient": f"Patient/{patient_id}", "verdicts": verdicts_by_patient[patient_id]}
        )
    return overview


PATIENTS = "patients.ndjson"
FLAGGED = ("candidate", "potential-candidate")


def overlap(
    trials: list[str], as_of: date, verdicts_by_patient: dict[str, dict[str, str]]
) -> dict[str, Any]:
    """Patients × trials: verdict counts per trial, and how many qualify for several."""
    combinations: Counter[tuple[tuple[str, str], ...]] = Counter(
        tuple(sorted(verdicts.items())) for verdicts in verdicts_by_patient.values()
    )
    return {
        "trials": trials,
        "as_of": as_of.isoformat(),
        "patients": len(verdicts_by_patient),
        "verdicts": {
            trial: {
                v: sum(1 for verdicts in verdicts_by_patient.values() if verdicts.get(trial) == v)
                for v in VERDICTS
            }
            for trial in trials
        },
        "candidates_for_several_trials": sum(
            1
            for verdicts in verdicts_by_patient.values()
            if sum(v == "candidate" for v in verdicts.values()) > 1
        ),
        "flagged_for_several_trials": sum(
            1
            for verdicts in verdicts_by_patient.values()
            if sum(v in FLAGGED for v in verdicts.values()) > 1
        ),
        "combinations": [
            {"verdicts": dict(combination), "patients": count}
            for combination, count in sorted(combinations.items(), key=lambda kv: (-kv[1], kv[0]))
        ],
    }


def write_results(
    ruleset: RuleSet,
    contracts: Iterable[dict[str, Any]],
    as_of: date,
    outputs: output.OutputSet,
    subject_identifier_system: str,
    folder: str = "",
) -> None:
    """verdicts.ndjson, ResearchSubject.ndjson and ResearchStudy.ndjson from verdict lines."""
    files = ResultFiles(ruleset, as_of, outputs, subject_identifier_system, folder)
    for contract in contracts:
        files.add(contract, contract["patient"].removeprefix("Patient/"), contract["verdict"])
    files.close()


class ResultFiles:
    """One trial's verdicts.ndjson and ResearchSubject.ndjson, then its ResearchStudy.ndjson."""

    def __init__(
        self,
        ruleset: RuleSet,
        as_of: date,
        outputs: output.OutputSet,
        subject_identifier_system: str,
        folder: str = "",
    ) -> None:
        self.ruleset, self.as_of, self.outputs, self.folder = ruleset, as_of, outputs, folder
        self.system = subject_identifier_system
        self.verdict_file = outputs.ndjson(f"{folder}{output.VERDICTS}")
        self.subject_file = outputs.ndjson(f"{folder}{output.SUBJECTS}")

    def add(self, line: Any, patient_id: str, verdict: str) -> None:
        """One patient: its verdict line (a contract, or its JSON as an ``orjson.Fragment``)."""
        self.verdict_file.write(line)
        if verdict in SUBJECT_STATUSES:
            self.subject_file.write(
                research_subject(self.ruleset, patient_id, verdict, self.as_of, self.system)
            )

    def close(self) -> None:
        self.outputs.ndjson(f"{self.folder}{output.STUDIES}").write(research_study(self.ruleset))
