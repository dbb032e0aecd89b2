"""The access audit: who viewed which patient's page, recorded which decision, exported which
list, when and from where; read by administrators, and sent on to the FHIR server as
AuditEvents when that is configured (``service.api.audit_sender``).

Recording is one short INSERT on the request's path; sending is never on it: a row waits as
``pending`` and a background loop claims it (``fhir_next_at`` as a lease, so two replicas never
send the same row at once), sends it and marks it ``sent``, or records the error's kind and
when to try again. After ``GIVE_UP_AFTER`` tries it is ``failed`` and stays listed as such.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from service.state.models import AccessEvent
from service.state.store import now

VIEW, DECISION, EXPORT = "view", "decision", "export"
ACTIONS = (VIEW, DECISION, EXPORT)
PENDING, SENT, FAILED = "pending", "sent", "failed"
GIVE_UP_AFTER = 24  # tries; the waits between them grow to an hour (about a day in all)
CLAIM_SECONDS = 120.0  # a sending replica's hold on a row


def retry_wait(tries: int) -> timedelta:
    """After ``tries`` failed tries: 10 s, 20 s, 40 s … up to an hour."""
    return timedelta(seconds=min(10.0 * 2 ** max(tries - 1, 0), 3600.0))


@dataclass(frozen=True)
class AuditPage:
    rows: list[AccessEvent]
    total: int


class AuditLog:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._sessions = sessionmaker(engine, expire_on_commit=False)

    @contextmanager
    def session(self) -> Iterator[Session]:
        with self._sessions.begin() as session:
            yield session

    def record(
        self,
        user_name: str,
        action: str,
        via: str,
        *,
        patient_id: str = "",
        trial: str = "",
        detail: dict[str, Any] | None = None,
        client_address: str = "",
        to_fhir: bool = False,
    ) -> int:
        """One access; ``to_fhir``: it waits to be sent as an AuditEvent."""
        stamp = now()
        event = AccessEvent(
            at=stamp,
            user_name=user_name[:128],
            action=action,
            via=via,
            patient_id=patient_id,
            trial=trial,
            detail=detail or {},
            client_address=client_address[:64],
            fhir_state=PENDING if to_fhir else "",
            fhir_tries=0,
            fhir_next_at=stamp if to_fhir else None,
            fhir_error="",
            uuid=str(uuid.uuid4()),
        )
        with self.session() as session:
            session.add(event)
            session.flush()
            return int(event.id)

    def page(
        self,
        *,
        user_name: str = "",
        patient_id: str = "",
        action: str = "",
        offset: int = 0,
        limit: int = 50,
    ) -> AuditPage:
        """Newest first, filtered by person, patient and action (each optional, exact)."""
        query = select(AccessEvent)
        if user_name:
            query = query.where(AccessEvent.user_name == user_name)
        if patient_id:
            query = query.where(AccessEvent.patient_id == patient_id)
        if action:
            query = query.where(AccessEvent.action == action)
        with self.session() as session:
            total = session.scalar(select(func.count()).select_from(query.subquery())) or 0
            rows = session.scalars(
                query.order_by(AccessEvent.id.desc()).offset(offset).limit(limit)
            )
            return AuditPage(list(rows), int(total))

    # --- sending to the FHIR server ---------------------------------------------------------

    def claim_due(self, limit: int = 50) -> list[AccessEvent]:
        """Pending rows whose time has come, each taken for ``CLAIM_SECONDS`` by one
        conditional UPDATE (another replica's claim of the same row fails)."""
        stamp = now()
        claimed = []
        with self.session() as session:
            due = list(
                session.scalars(
                    select(AccessEvent)
                    .where(AccessEvent.fhir_state == PENDING, AccessEvent.fhir_next_at <= stamp)
                    .order_by(AccessEvent.id)
                    .limit(limit)
                )
            )
        for event in due:
            with self.session() as session:
                result = session.execute(
                    update(AccessEvent)
                    .where(
                        AccessEvent.id == event.id,
                        AccessEvent.fhir_state == PENDING,
                        AccessEvent.fhir_next_at == event.fhir_next_at,
                    )
                    .values(fhir_next_at=stamp + timedelta(seconds=CLAIM_SECONDS))
                )
                if getattr(result, "rowcount", 0) == 1:
                    claimed.append(event)
        return claimed

    def mark_sent(self, event_id: int) -> None:
        with self.session() as session:
            session.execute(
                update(AccessEvent)
                .where(AccessEvent.id == event_id)
                .values(
                    fhir_state=SENT,
                    fhir_tries=AccessEvent.fhir_tries + 1,
                    fhir_next_at=None,
                    fhir_error="",
                )
            )

    def mark_failed(self, event_id: int, error_kind: str) -> None:
        """A failed try: tried again later, or ``failed`` for good after ``GIVE_UP_AFTER``."""
        with self.session() as session:
            tries = (
                session.scalar(select(AccessEvent.fhir_tries).where(AccessEvent.id == event_id))
                or 0
            ) + 1
            final = tries >= GIVE_UP_AFTER
            session.execute(
                update(AccessEvent)
                .where(AccessEvent.id == event_id)
                .values(
                    fhir_state=FAILED if final else PENDING,
                    fhir_tries=tries,
                    fhir_next_at=None if final else now() + retry_wait(tries),
                    fhir_error=error_kind[:64],
                )
            )

    def fhir_states(self) -> dict[str, int]:
        """Rows per sending state (for the admin page and the metrics)."""
        with self.session() as session:
            return {
                state: int(count)
                for state, count in session.execute(
                    select(AccessEvent.fhir_state, func.count())
                    .where(AccessEvent.fhir_state != "")
                    .group_by(AccessEvent.fhir_state)
                )
            }
