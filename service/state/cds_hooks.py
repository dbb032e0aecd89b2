"""CDS Hooks state: JWTs already presented (replay protection that holds across replicas, since
every replica shares the database), the cards returned, and the feedback clinicians gave."""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import delete, insert, select
from sqlalchemy.exc import IntegrityError

from service.state.models import CdsCard, CdsFeedback, CdsTokenUse
from service.state.store import Store, now


@dataclass(frozen=True)
class IssuedCard:
    uuid: str
    trial: str
    patient_id: str


@dataclass(frozen=True)
class FeedbackReport:
    """One entry of a feedback request; ``outcome_at`` is naive UTC like every stored time."""

    card_uuid: str
    outcome: str
    accepted_suggestions: tuple[str, ...]
    override_reason: dict[str, Any] | None
    outcome_at: datetime


class UnknownCardsError(Exception):
    """Feedback about cards this service did not return to that EHR."""

    def __init__(self, uuids: Sequence[str]) -> None:
        self.uuids = tuple(uuids)
        super().__init__(f"{len(self.uuids)} unknown card(s)")


# Expired tokens (refused by their signature check anyway) are deleted at most this often.
PRUNE_EVERY_SECONDS = 60.0


def token_key(issuer: str, jti: str) -> str:
    # jti is unique per issuer only; hashing gives a fixed-length key whatever the EHR sends.
    return hashlib.sha256(f"{issuer}\x00{jti}".encode()).hexdigest()


class CdsStore:
    """Kept by the service for its lifetime (it remembers when it last pruned old tokens)."""

    def __init__(self, store: Store, clock: Callable[[], float] = time.monotonic) -> None:
        self.store = store
        self._clock = clock
        self._pruned_at: float | None = None
        self._pruning = threading.Lock()

    def _prune_due(self) -> bool:
        """Whether to delete the expired tokens now (it is noted that it was done)."""
        with self._pruning:
            moment = self._clock()
            if self._pruned_at is not None and moment - self._pruned_at < PRUNE_EVERY_SECONDS:
                return False
            self._pruned_at = moment
            return True

    def first_use(self, issuer: str, jti: str, expires_at: datetime) -> bool:
        """Remember a token until it expires; False if it was presented before (a replay).

        One INSERT, the unique key deciding: a clinician waits for it. Expired rows go at most
        once a minute, in the same transaction."""
        key = token_key(issuer, jti)
        try:
            with self.store.writing() as connection:
                if self._prune_due():
                    connection.execute(delete(CdsTokenUse).where(CdsTokenUse.expires_at < now()))
                connection.execute(insert(CdsTokenUse).values(key=key, expires_at=expires_at))
        except IntegrityError:
            return False
        return True

    def record_cards(self, issuer: str, cards: Sequence[IssuedCard]) -> None:
        if not cards:
            return
        stamp = now()
        rows = [
            {
                "uuid": card.uuid,
                "trial": card.trial,
                "patient_id": card.patient_id,
                "issuer": issuer,
                "issued_at": stamp,
            }
            for card in cards
        ]
        with self.store.writing() as connection:
            connection.execute(insert(CdsCard), rows)

    def record_feedback(self, issuer: str, reports: Sequence[FeedbackReport]) -> int:
        """Store the reports; how many were new (a report sent again is kept once). Nothing
        is stored if any report names a card this service did not return to this issuer."""
        wanted = {report.card_uuid for report in reports}
        with self.store.session() as session:
            cards = {
                card.uuid: card
                for card in session.scalars(
                    select(CdsCard).where(CdsCard.uuid.in_(wanted), CdsCard.issuer == issuer)
                )
            }
        unknown = sorted(wanted - set(cards))
        if unknown:
            raise UnknownCardsError(unknown)
        received = now()
        stored = 0
        for report in reports:
            card = cards[report.card_uuid]
            try:
                with self.store.session() as session:
                    session.add(
                        CdsFeedback(
                            card_uuid=report.card_uuid,
                            trial=card.trial,
                            patient_id=card.patient_id,
                            outcome=report.outcome,
                            accepted_suggestions=list(report.accepted_suggestions),
                            override_reason=report.override_reason,
                            outcome_at=report.outcome_at,
                            received_at=received,
                        )
                    )
                    session.flush()
                stored += 1
            except IntegrityError:
                continue  # the same report again: CDS clients may send feedback more than once
        return stored

    def feedback(self, trial: str | None = None) -> list[CdsFeedback]:
        query = select(CdsFeedback).order_by(CdsFeedback.id)
        if trial:
            query = query.where(CdsFeedback.trial == trial)
        with self.store.session() as session:
            return list(session.scalars(query))
