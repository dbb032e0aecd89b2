"""State of the daily clinic screening: which day's screening ran (one replica at a time, under
a lease; done once), and the alerts sent before a visit (once per trial, patient, appointment
and channel, claimed before sending like the candidate alerts)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlalchemy import or_, update

from service.state.models import ClinicDay, VisitAlert
from service.state.store import AlertLeases, Store, _changed, now


class ClinicStore:
    def __init__(self, store: Store) -> None:
        self.store = store
        self.leases = AlertLeases(store, VisitAlert)

    # --- the day's screening ---------------------------------------------------------------------

    def claim_day(self, day: str, owner: str, lease_seconds: float) -> bool:
        """Take ``day``'s screening for ``owner``: a new day, or one whose screening was left
        unfinished by a replica whose lease has expired (it stopped). False when it is done or
        another replica is at it. One INSERT or one conditional UPDATE: two replicas claiming at
        once cannot both succeed."""
        stamp = now()
        until = stamp + timedelta(seconds=lease_seconds)
        with self.store.session() as session:
            inserted = session.scalar(
                self.store._insert(ClinicDay)
                .values(
                    day=day,
                    state="running",
                    owner=owner,
                    lease_until=until,
                    started_at=stamp,
                    result={},
                )
                .on_conflict_do_nothing(index_elements=["day"])
                .returning(ClinicDay.day)
            )
        if inserted is not None:
            return True
        with self.store.session() as session:
            result = session.execute(
                update(ClinicDay)
                .where(
                    ClinicDay.day == day,
                    ClinicDay.state == "running",
                    or_(ClinicDay.owner == owner, ClinicDay.lease_until < stamp),
                )
                .values(owner=owner, lease_until=until, started_at=stamp)
            )
            return _changed(result) == 1

    def renew_day(self, day: str, owner: str, lease_seconds: float) -> bool:
        with self.store.session() as session:
            result = session.execute(
                update(ClinicDay)
                .where(ClinicDay.day == day, ClinicDay.owner == owner, ClinicDay.state == "running")
                .values(lease_until=now() + timedelta(seconds=lease_seconds))
            )
            return _changed(result) == 1

    def finish_day(self, day: str, owner: str, result: dict[str, Any]) -> None:
        with self.store.session() as session:
            session.execute(
                update(ClinicDay)
                .where(ClinicDay.day == day, ClinicDay.owner == owner)
                .values(state="done", lease_until=None, finished_at=now(), result=result)
            )

    def day(self, day: str) -> ClinicDay | None:
        with self.store.session() as session:
            return session.get(ClinicDay, day)

    # --- alerts before a visit ------------------------------------------------------------------

    def claim_alert(
        self,
        trial: str,
        patient_id: str,
        appointment_id: str,
        appointment_date: str,
        reached: str,
        channel: str,
        lease_seconds: float,
    ) -> int | None:
        """Create the alert row, leased to the caller while it sends; None if it exists (this
        appointment's alert was claimed before, by this run, an earlier one or a replica)."""
        stamp = now()
        with self.store.session() as session:
            alert_id = session.scalar(
                self.store._insert(VisitAlert)
                .values(
                    trial=trial,
                    patient_id=patient_id,
                    appointment_id=appointment_id,
                    appointment_date=appointment_date,
                    reached=reached,
                    channel=channel,
                    state="pending",
                    attempts=0,
                    created_at=stamp,
                    lease_until=stamp + timedelta(seconds=lease_seconds),
                )
                .on_conflict_do_nothing(
                    index_elements=["trial", "patient_id", "appointment_id", "channel"]
                )
                .returning(VisitAlert.id)
            )
            return int(alert_id) if alert_id is not None else None

    def claim_retry(self, alert_id: int, lease_seconds: float) -> bool:
        return self.leases.claim_retry(alert_id, lease_seconds)

    def renew_alert(self, alert_id: int, lease_seconds: float) -> bool:
        return self.leases.renew(alert_id, lease_seconds)

    def mark_alert(self, alert_id: int, state: str) -> None:
        self.leases.mark(alert_id, state)

    def unsent_alerts(self) -> list[VisitAlert]:
        return self.leases.unsent()

    def alerts(self) -> list[VisitAlert]:
        return self.leases.every()
