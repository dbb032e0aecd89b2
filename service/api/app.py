"""The FastAPI application: ``prescreen serve`` runs it with uvicorn."""

from __future__ import annotations

import asyncio
import gc
import logging
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from service import catalog
from service.alerts import Alerter, AlertSettings
from service.api import audit_routes, cds, routes
from service.api.engine import ScreeningService
from service.api.guard import Authenticate, RequestGuard, is_public
from service.api.security import Authenticator, JwksWarmup
from service.fhir.client import RetryPolicy
from service.settings import Settings
from service.state.store import Store, migrate

log = logging.getLogger(__name__)
READINESS_RETRY = RetryPolicy(attempts=1)  # a readiness probe asks once; its caller repeats
SWITCH_INTERVAL_SECONDS = 0.0005


def load_rulesets(settings: Settings) -> dict[str, Any]:
    wanted = [t for t in settings.trials.split(",") if t] or catalog.available_trials(
        settings.rules_dir
    )
    return {trial: catalog.load_trial(trial, settings, check_fields=True) for trial in wanted}


class _Collector:
    """Reads the service's own counters at scrape time: nothing to keep in sync."""

    def __init__(self, service: ScreeningService) -> None:
        self.service = service

    def collect(self) -> Any:
        screenings = CounterMetricFamily(
            "prescreen_screenings", "Patients screened", labels=["trial", "verdict"]
        )
        for (trial, verdict), count in self.service.metrics.screenings.items():
            screenings.add_metric([trial, verdict], count)
        yield screenings
        notes = CounterMetricFamily("prescreen_notifications", "Subscription notifications")
        notes.add_metric([], self.service.metrics.notifications)
        yield notes
        alerts = CounterMetricFamily(
            "prescreen_alerts", "Coordinator alerts", labels=["channel", "outcome"]
        )
        for channel, count in self.service.alerter.sent.items():
            alerts.add_metric([channel, "sent"], count)
        for channel, count in self.service.alerter.failed.items():
            alerts.add_metric([channel, "failed"], count)
        yield alerts
        client = self.service._client
        requests = CounterMetricFamily("prescreen_fhir_requests", "HTTP requests to FHIR")
        errors = CounterMetricFamily("prescreen_fhir_errors", "FHIR requests that failed")
        seconds = GaugeMetricFamily("prescreen_fhir_seconds", "Seconds spent in FHIR requests")
        stats = client.stats if client is not None else None
        requests.add_metric([], stats.requests if stats else 0)
        errors.add_metric([], stats.errors if stats else 0)
        seconds.add_metric([], stats.seconds if stats else 0.0)
        yield from (requests, errors, seconds)


def create_api(settings: Settings) -> FastAPI:
    """The API alone; ``service.web.create_app`` adds the web worklist."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await asyncio.to_thread(migrate, settings.database_url)
        store = Store(settings.database_url)
        alerter = Alerter(
            store,
            AlertSettings(
                webhook_url=settings.webhook_url,
                webhook_secret=(
                    settings.webhook_secret.get_secret_value() if settings.webhook_secret else None
                ),
                smtp_host=settings.smtp_host,
                smtp_port=settings.smtp_port,
                smtp_from=settings.smtp_from,
                smtp_to=tuple(a.strip() for a in settings.smtp_to.split(",") if a.strip()),
                worklist_url=f"{(settings.public_url or '').rstrip('/')}/candidates",
                public_url=settings.public_url,
                lease_seconds=settings.lease_seconds,
            ),
        )
        service = ScreeningService(settings, store, alerter, load_rulesets(settings))
        registry = CollectorRegistry()
        registry.register(_Collector(service))
        app.state.service, app.state.registry = service, registry
        app.state.auth = Authenticator(settings)
        await service.resume_runs()
        service.spawn(service.background())
        # What is loaded by now (rule sets, mappings, the FHIR models, the framework: 170k
        # objects) lives as long as the process. Out of the garbage collector's sight, a full
        # collection no longer walks it: one took 20-130 ms here, and every request in flight
        # (a CDS Hooks call while a chart opens) waits for it.
        gc.collect()
        gc.freeze()
        # The database work of a request runs in a thread, and hands the interpreter back and
        # forth with the event loop several times per transaction: at the default 5 ms a
        # handoff, a CDS Hooks call's jti insert took 15 ms at the median and 140 ms at the
        # tail with 8 calls in flight (profiled), at 0.5 ms 2.5 ms and 30 ms.
        sys.setswitchinterval(SWITCH_INTERVAL_SECONDS)
        try:
            yield
        finally:
            await service.aclose()
            store.close()

    app = FastAPI(
        title="prescreen",
        version="0.1.0",
        description="FHIR clinical-trial eligibility pre-screening: explained verdicts, "
        "ResearchSubject write-back, Subscriptions, CDS Hooks and coordinator alerts.",
        lifespan=lifespan,
    )

    def authenticator_for(request: Request) -> Authenticate | None:
        """What must hold before a request's body is read: valid credentials, for every
        endpoint but the public ones and CDS Hooks (which verifies the EHR's JWT itself)."""
        path = request.url.path
        if is_public(path) or path.startswith("/cds-services"):
            return None
        auth: Authenticator = request.app.state.auth
        return auth.principal

    app.add_middleware(
        RequestGuard,
        max_body_bytes=settings.max_body_bytes,
        authenticator_for=authenticator_for,
    )
    # Added after the guard, so they run before it: signing keys are fetched (asynchronously)
    # before any credential check, and a CORS preflight is answered before anything else.
    app.add_middleware(JwksWarmup)
    app.add_middleware(cds.CdsCors, origins=cds.cors_origins(settings))

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_request: Request, exc: RequestValidationError) -> JSONResponse:
        # FastAPI's default answer quotes the offending input back; it could be patient data.
        errors = [
            {"loc": list(e.get("loc", ())), "msg": str(e.get("msg", "")), "type": e.get("type")}
            for e in exc.errors()
        ]
        return JSONResponse({"detail": errors}, status_code=422)

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    fhir_check: dict[str, Any] = {"at": None, "outcome": "", "running": None}

    async def check_fhir(service: ScreeningService) -> None:
        try:
            client = await service.client()
            await client.get("metadata", kind="readiness", retry=READINESS_RETRY)
            outcome = "ok"
        except Exception as exc:
            outcome = type(exc).__name__
        fhir_check.update(at=time.monotonic(), outcome=outcome, running=None)

    @app.get("/readyz", include_in_schema=False)
    async def readyz(request: Request) -> JSONResponse:
        service: ScreeningService = request.app.state.service
        checks: dict[str, str] = {}
        try:
            await asyncio.to_thread(service.store.ping)
            checks["database"] = "ok"
        except Exception as exc:
            checks["database"] = type(exc).__name__
        # /readyz needs no credentials: without a cache, every probe (or anyone) would make
        # the service send a request to the FHIR server. One check at a time, shared by every
        # call that comes while it runs; one attempt, no retries (a probe asks again anyway).
        checked_at = fhir_check["at"]
        if checked_at is None or time.monotonic() - checked_at >= settings.readiness_cache_seconds:
            running = fhir_check["running"]
            if running is None:
                running = fhir_check["running"] = asyncio.ensure_future(check_fhir(service))
            await asyncio.shield(running)  # a caller gone does not stop the others' check
        checks["fhir"] = fhir_check["outcome"]
        ready = all(v == "ok" for v in checks.values())
        return JSONResponse(checks, status_code=200 if ready else 503)

    @app.get("/metrics", include_in_schema=False)
    async def metrics(request: Request) -> PlainTextResponse:
        return PlainTextResponse(
            generate_latest(request.app.state.registry).decode(),
            media_type="text/plain; version=0.0.4",
        )

    app.include_router(routes.router)
    app.include_router(audit_routes.router)
    app.include_router(cds.router)
    return app
