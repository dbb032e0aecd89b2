"""Who the screened patients are (name, MRN, birth date, sex), read from their Patient
resources by the mapping's display section while a screening reads them: for the service's
worklist, never for the rules or the offline outputs.

Where a Patient turns up more than once (versions of one record), the details are those of the
copy the mapper screens: the highest version, else the latest update, else the last one read.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import date
from typing import Any

from service.mapping.display import DisplayReader, PatientDetails
from service.mapping.mapper import Mapper
from service.mapping.resources import version_of
from service.screening.source import (
    NO_NOTES,
    Collector,
    Copies,
    IssueLog,
    SourceNotes,
    add_copy,
    current_copy,
)


class DetailsKeeper:
    """Keeps the current copy's details of every Patient it is shown."""

    def __init__(self, reader: DisplayReader | None, mrn_system: str = "") -> None:
        self.reader = reader
        self.mrn_system = mrn_system
        self._copies: dict[str, Copies] = {}
        self._order = 0

    def see(self, resource: Any) -> None:
        if self.reader is None or not isinstance(resource, dict):
            return
        if resource.get("resourceType") != "Patient":
            return
        patient_id = resource.get("id")
        if not isinstance(patient_id, str) or not patient_id:
            return
        self._order += 1
        try:
            details = self.reader.read(resource, self.mrn_system)
        except Exception:  # an odd record costs its details, never the screening
            details = PatientDetails()
        version, updated = version_of(resource)
        self._copies[patient_id] = add_copy(
            self._copies.get(patient_id), (version, updated, self._order, details)
        )

    def details(self) -> dict[str, PatientDetails]:
        found: dict[str, PatientDetails] = {}
        for patient_id, copies in self._copies.items():
            found[patient_id] = current_copy(copies)[3]
        return found


def details_of(
    resources: Iterable[Any], reader: DisplayReader | None, mrn_system: str = ""
) -> dict[str, PatientDetails]:
    """The details of every Patient among resources already in memory."""
    keeper = DetailsKeeper(reader, mrn_system)
    for resource in resources:
        keeper.see(resource)
    return keeper.details()


class DetailsCollector(Collector):
    """A Collector that also keeps the details of each Patient it reads (a few strings per
    patient: the service's NDJSON runs)."""

    def __init__(
        self,
        mapper: Mapper,
        as_of: date,
        issues: IssueLog,
        notes: SourceNotes = NO_NOTES,
        mrn_system: str = "",
    ) -> None:
        super().__init__(mapper, as_of, issues, notes)
        self.keeper = DetailsKeeper(mapper.display, mrn_system)

    def add_resource(self, resource: Any, where: str, line: int | Callable[[], int]) -> None:
        super().add_resource(resource, where, line)
        self.keeper.see(resource)
