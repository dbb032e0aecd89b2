"""How a patient is named on the pages: name, MRN, age and sex, from what the worklist kept at
the last screening (the mapping's display section), else the FHIR id alone."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

from service.state.models import PatientRecord


def _bounds(birth: str) -> tuple[date, date] | None:
    """The earliest and latest day a FHIR date (YYYY, YYYY-MM, YYYY-MM-DD) can mean."""
    try:
        parts = [int(p) for p in birth.split("-")]
        if len(parts) == 3:
            day = date(parts[0], parts[1], parts[2])
            return day, day
        if len(parts) == 2:
            first = date(parts[0], parts[1], 1)
            following = date(parts[0] + parts[1] // 12, parts[1] % 12 + 1, 1)
            return first, date.fromordinal(following.toordinal() - 1)
        if len(parts) == 1:
            return date(parts[0], 1, 1), date(parts[0], 12, 31)
    except ValueError:
        return None
    return None


def _years(birth: date, today: date) -> int:
    return today.year - birth.year - ((today.month, today.day) < (birth.month, birth.day))


def age_text(birth: str, today: date) -> str:
    """ "67" years on ``today``; "67–68" when the birth date is partial; "" without one."""
    bounds = _bounds(birth) if birth else None
    if bounds is None:
        return ""
    oldest, youngest = _years(bounds[0], today), _years(bounds[1], today)
    if youngest < 0:
        return ""
    return str(oldest) if oldest == youngest else f"{youngest}–{oldest}"


@dataclass(frozen=True)
class Who:
    """What a page says about whom a row or a page is about."""

    patient_id: str
    name: str = ""
    mrn: str = ""
    age: str = ""
    sex: str = ""

    @property
    def label(self) -> str:
        """The name, else the FHIR reference: a link's text."""
        return self.name or f"Patient/{self.patient_id}"

    @property
    def facts(self) -> list[tuple[str, str]]:
        found = [("MRN", self.mrn), ("Age", self.age), ("Sex", self.sex)]
        return [(label, value) for label, value in found if value]

    @property
    def summary(self) -> str:
        """One line under a name: "MRN 00104729 · 67 years · female"."""
        parts = [f"MRN {self.mrn}" if self.mrn else ""]
        parts += [f"{self.age} years" if self.age else "", self.sex]
        return " · ".join(part for part in parts if part)


def who(patient_id: str, record: PatientRecord | None, today: date) -> Who:
    if record is None:
        return Who(patient_id)
    return Who(
        patient_id,
        record.name,
        record.mrn,
        age_text(record.birth_date, today),
        record.sex,
    )
