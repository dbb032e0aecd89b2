"""The whole web application: the API (``service.api``) with the coordinators' worklist
(``service.ui``) mounted under ``/ui``. Composed here, above both, so that the API does not
import the pages built on it."""

from __future__ import annotations

from fastapi import FastAPI

from service.api.app import create_api
from service.settings import Settings, get_settings


def create_app(settings: Settings) -> FastAPI:
    app = create_api(settings)
    if settings.ui_mode != "off":
        # The web worklist: its own cookie session and error pages, under /ui.
        from service.ui.app import create_ui

        app.mount("/ui", create_ui(app, settings))
    return app


def app_factory() -> FastAPI:
    """For ``uvicorn --factory service.web:app_factory``."""
    return create_app(get_settings())
