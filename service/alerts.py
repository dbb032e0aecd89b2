"""Telling coordinators: a signed JSON webhook and an e-mail, once per new or upgraded candidate.

Exactly once per (trial, patient, status reached, channel): a patient flagged by two trials is
alerted once for each, since each trial has its own coordinators. An alert row (unique on that
key) is claimed before sending, and a failed delivery is retried later rather than re-claimed.
A delivery holds a lease on its row while in flight and until its outcome is recorded (renewed
until then; the outcome's write is retried while the database fails), and a retry first claims
that lease: a slow webhook is not sent again by the retry loop, nor by another replica's. The
webhook carries ``X-Prescreen-Event`` (the claim id, for receivers that de-duplicate) and
``X-Prescreen-Signature: sha256=<hex>``, an HMAC of the body with the shared secret.
Messages name the trial, the status and the patient reference, never clinical details.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import hmac
import logging
import smtplib
from collections.abc import Callable
from dataclasses import dataclass
from email.message import EmailMessage
from typing import Any

import httpx
import orjson

from service.errors import error_kind
from service.links import patient_page_url
from service.state.clinic import ClinicStore
from service.state.leases import kept
from service.state.store import CandidateChange, Store

log = logging.getLogger(__name__)

# A candidate alerts when it first appears, and again when it is upgraded.
ALERTING = {
    None: {"candidate", "potential-candidate"},
    "potential-candidate": {"candidate"},
    "ineligible": {"candidate", "potential-candidate"},
}
ATTEMPTS = 5  # deliveries tried per alert, the first one included
RECORD_ATTEMPTS = 6  # writes of a delivery's outcome tried before giving up
RECORD_PAUSE_SECONDS = 0.2  # the first pause between two of them (doubling)


@dataclass(frozen=True)
class AlertSettings:
    webhook_url: str | None
    webhook_secret: str | None
    smtp_host: str | None
    smtp_port: int
    smtp_from: str
    smtp_to: tuple[str, ...]
    worklist_url: str
    # The service's public URL: alerts link to the web worklist's page for the patient.
    public_url: str | None = None
    # How long a delivery's claim holds unless renewed (PRESCREEN_LEASE_SECONDS in the service).
    lease_seconds: float = 30.0


def signature(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


class Alerter:
    def __init__(self, store: Store, settings: AlertSettings) -> None:
        self.store = store
        self.clinic = ClinicStore(store)
        self.settings = settings
        self.sent: dict[str, int] = {"webhook": 0, "email": 0}
        self.failed: dict[str, int] = {"webhook": 0, "email": 0}

    @property
    def channels(self) -> list[str]:
        channels = []
        if self.settings.webhook_url:
            channels.append("webhook")
        if self.settings.smtp_host and self.settings.smtp_to:
            channels.append("email")
        return channels

    async def consider(self, change: CandidateChange) -> None:
        if change.current not in ALERTING.get(change.previous, set()):
            return
        for channel in self.channels:
            alert_id = await asyncio.to_thread(
                self.store.claim_alert,
                change.trial,
                change.patient_id,
                change.current,
                channel,
                self.settings.lease_seconds,
            )
            if alert_id is not None:
                await self._deliver(
                    alert_id, channel, change.trial, change.patient_id, change.current
                )

    async def consider_visit(
        self, trial: str, patient_id: str, appointment_id: str, day: str, status: str
    ) -> None:
        """A candidate (or potential one) with an appointment on ``day``: told once per
        (trial, patient, appointment, channel), whatever its earlier alerts were."""
        if status not in ALERTING[None]:
            return
        for channel in self.channels:
            alert_id = await asyncio.to_thread(
                self.clinic.claim_alert,
                trial,
                patient_id,
                appointment_id,
                day,
                status,
                channel,
                self.settings.lease_seconds,
            )
            if alert_id is not None:
                await self._deliver_visit(
                    alert_id, channel, trial, patient_id, appointment_id, day, status
                )

    async def retry_unsent(self) -> None:
        """Send again what failed (or what a stopped replica left in flight), never an alert
        whose delivery is still under way here or elsewhere."""
        for alert in await asyncio.to_thread(self.store.unsent_alerts):
            if alert.attempts >= ATTEMPTS:
                continue
            claimed = await asyncio.to_thread(
                self.store.claim_retry, alert.id, self.settings.lease_seconds
            )
            if claimed:
                await self._deliver(
                    alert.id, alert.channel, alert.trial, alert.patient_id, alert.reached
                )
        for visit in await asyncio.to_thread(self.clinic.unsent_alerts):
            if visit.attempts >= ATTEMPTS:
                continue
            claimed = await asyncio.to_thread(
                self.clinic.claim_retry, visit.id, self.settings.lease_seconds
            )
            if claimed:
                await self._deliver_visit(
                    visit.id,
                    visit.channel,
                    visit.trial,
                    visit.patient_id,
                    visit.appointment_id,
                    visit.appointment_date,
                    visit.reached,
                )

    def _payload(
        self, event: str, alert_id: int, trial: str, patient_id: str, status: str
    ) -> dict[str, Any]:
        payload = {
            "event": event,
            "id": str(alert_id),
            "trial": trial,
            "patient": f"Patient/{patient_id}",
            "status": status,
            "worklist": self.settings.worklist_url,
        }
        page = patient_page_url(self.settings.public_url, trial, patient_id)
        if page is not None:
            payload["page"] = page
        return payload

    async def _deliver_visit(
        self,
        alert_id: int,
        channel: str,
        trial: str,
        patient_id: str,
        appointment_id: str,
        day: str,
        status: str,
    ) -> None:
        payload = self._payload("prescreen.visit", alert_id, trial, patient_id, status)
        payload["appointment"] = f"Appointment/{appointment_id}"
        payload["appointment_date"] = day
        renew = functools.partial(self.clinic.renew_alert, alert_id, self.settings.lease_seconds)
        mark = functools.partial(self.clinic.mark_alert, alert_id)
        await self._send(alert_id, channel, payload, renew, mark)

    async def _deliver(
        self, alert_id: int, channel: str, trial: str, patient_id: str, status: str
    ) -> None:
        payload = self._payload("prescreen.candidate", alert_id, trial, patient_id, status)
        renew = functools.partial(self.store.renew_alert, alert_id, self.settings.lease_seconds)
        mark = functools.partial(self.store.mark_alert, alert_id)
        await self._send(alert_id, channel, payload, renew, mark)

    async def _send(
        self,
        alert_id: int,
        channel: str,
        payload: dict[str, Any],
        renew: Callable[[], bool],
        mark: Callable[[str], None],
    ) -> None:
        # The lease is held until the outcome is recorded, not only while sending: a delivery
        # whose "sent" could not be written yet must not look unsent to another replica.
        async with kept(renew, self.settings.lease_seconds):
            try:
                if channel == "webhook":
                    await self._webhook(alert_id, payload)
                else:
                    await asyncio.to_thread(self._email, payload)
            except Exception as exc:
                log.warning("alert %s over %s failed: %s", alert_id, channel, error_kind(exc))
                self.failed[channel] += 1
                outcome = "failed"
            else:
                self.sent[channel] += 1
                outcome = "sent"
            await self._record(alert_id, outcome, mark)

    async def _record(self, alert_id: int, outcome: str, mark: Callable[[str], None]) -> None:
        """Write a delivery's outcome, trying again while the database fails (a delivered
        alert recorded as unsent would be delivered again)."""
        for attempt in range(RECORD_ATTEMPTS):
            try:
                await asyncio.to_thread(mark, outcome)
                return
            except Exception as exc:
                if attempt + 1 == RECORD_ATTEMPTS:
                    log.warning(
                        "alert %s: its outcome (%s) could not be recorded (%s); if it was sent, "
                        "it may be sent again with the same X-Prescreen-Event",
                        alert_id,
                        outcome,
                        error_kind(exc),
                    )
                    raise
                await asyncio.sleep(min(RECORD_PAUSE_SECONDS * 2**attempt, 10.0))

    async def _webhook(self, alert_id: int, payload: dict[str, Any]) -> None:
        assert self.settings.webhook_url is not None
        body = orjson.dumps(payload)
        headers = {"Content-Type": "application/json", "X-Prescreen-Event": str(alert_id)}
        if self.settings.webhook_secret:
            headers["X-Prescreen-Signature"] = signature(self.settings.webhook_secret, body)
        async with httpx.AsyncClient(timeout=10) as client:
            response = await client.post(self.settings.webhook_url, content=body, headers=headers)
        response.raise_for_status()

    def _email(self, payload: dict[str, Any]) -> None:
        message = EmailMessage()
        visit = payload.get("appointment_date")
        message["Subject"] = (
            f"[prescreen] {payload['trial']}: {payload['status']} coming on {visit}"
            if visit
            else f"[prescreen] {payload['trial']}: new {payload['status']}"
        )
        message["From"] = self.settings.smtp_from
        message["To"] = ", ".join(self.settings.smtp_to)
        message["X-Prescreen-Event"] = payload["id"]
        message.set_content(
            (
                f"A {payload['status']} for {payload['trial']} has an appointment on {visit} "
                f"({payload['appointment']}).\n"
                if visit
                else f"A patient is now a {payload['status']} for {payload['trial']}.\n"
            )
            + f"Patient: {payload['patient']}\nWorklist: {payload['worklist']}\n"
            + (f"Open: {payload['page']}\n" if "page" in payload else "")
        )
        assert self.settings.smtp_host is not None
        with smtplib.SMTP(self.settings.smtp_host, self.settings.smtp_port, timeout=10) as smtp:
            smtp.send_message(message)
