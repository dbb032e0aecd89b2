"""The web worklist as an application mounted at ``/ui`` of the service.

Its own middleware (the session cookie, security headers) and error pages apply to ``/ui`` only;
the API keeps its JSON errors and needs no cookie.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import jinja2
from fastapi import FastAPI, HTTPException, Request, Response
from fastapi.responses import RedirectResponse
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.sessions import SessionMiddleware

from service.settings import Settings
from service.state.signin import SignInPolicy
from service.state.worklist import DRAFT_HOURS
from service.ui import audit_page, auth, overview_pages, pages, research_page
from service.ui.evidence import Displays
from service.ui.passwords import PasswordChecker
from service.ui.vocabulary import DecisionReasons

log = logging.getLogger(__name__)

HERE = Path(__file__).resolve().parent
COOKIE = "prescreen_ui"

# Scripts and styles come from /ui/static only; the pages cannot be framed by another site.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
    "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'self'"
)


def _oauth_client(settings: Settings) -> Any:
    if settings.ui_mode != "oidc":
        return None
    if not (settings.oidc_issuer and settings.oidc_client_id):
        raise ValueError("PRESCREEN_UI_MODE=oidc needs PRESCREEN_OIDC_ISSUER and _CLIENT_ID")
    from authlib.integrations.starlette_client import OAuth

    oauth = OAuth()
    secret = settings.oidc_client_secret
    oauth.register(
        "hospital",
        client_id=settings.oidc_client_id,
        client_secret=secret.get_secret_value() if secret else None,
        server_metadata_url=(
            f"{settings.oidc_issuer.rstrip('/')}/.well-known/openid-configuration"
        ),
        client_kwargs={"scope": settings.oidc_scope, "code_challenge_method": "S256"},
    )
    return oauth.create_client("hospital")


@jinja2.pass_context
def _path_for(context: dict[str, Any], name: str, /, **params: Any) -> str:
    """Links as paths, not absolute URLs: right behind a TLS proxy that rewrites nothing."""
    request: Request = context["request"]
    return request.url_for(name, **params).path


def create_ui(parent: FastAPI, settings: Settings) -> FastAPI:
    """The /ui application; ``parent`` is the service, whose state holds the screening service."""
    ui = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)
    ui.state.parent = parent
    ui.state.settings = settings
    templates = Jinja2Templates(directory=HERE / "templates")
    templates.env.globals["url_for"] = _path_for
    ui.state.templates = templates
    ui.state.displays = Displays.load(settings.mappings_dir)
    ui.state.reasons = DecisionReasons.load(settings.decision_reasons)
    ui.state.oauth = _oauth_client(settings)
    # Kept until a trial's rows change: its funnel, whom each step ruled out, the feasibility
    # counts of the worklist.
    ui.state.funnels = {}
    ui.state.ruled_out = {}
    ui.state.feasibility = {}
    ui.state.passwords = PasswordChecker(settings.password_hash_concurrency)
    ui.state.sign_in_policy = SignInPolicy(
        failures_allowed=settings.sign_in_failures_allowed,
        window_seconds=settings.sign_in_window_seconds,
        longest_wait_seconds=settings.sign_in_longest_wait_seconds,
    )
    ui.include_router(pages.router)
    ui.include_router(overview_pages.router)
    ui.include_router(audit_page.router)
    ui.include_router(research_page.router)
    ui.mount("/static", StaticFiles(directory=HERE / "static"), name="static")

    @ui.exception_handler(auth.NotSignedInError)
    async def sign_in_first(request: Request, _exc: auth.NotSignedInError) -> Response:
        if request.method == "GET":
            path = request.url.path + (f"?{request.url.query}" if request.url.query else "")
            request.session[auth.NEXT] = path
        login = request.url_for("login").path
        if request.headers.get("hx-request") == "true":
            # A part of a page asked by htmx: the whole page goes to the sign-in (a 303 would
            # be followed by the request and the sign-in page swapped in as the part).
            return Response(status_code=204, headers={"HX-Redirect": login})
        return RedirectResponse(login, status_code=303)

    @ui.exception_handler(StarletteHTTPException)
    async def error_page(request: Request, exc: StarletteHTTPException) -> Response:
        person = await auth.current_person(request, pages._store(request))
        return pages.render(
            request,
            "error.html",
            person,
            status_code=exc.status_code,
            page="error",
            detail=exc.detail if isinstance(exc, HTTPException) else "Not found.",
            code=exc.status_code,
        )

    @ui.middleware("http")
    async def security_headers(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        # Decided before routing: a mount rewrites the scope's root_path on the way in.
        static = request.url.path.startswith(f"{request.scope.get('root_path', '')}/static/")
        response = await call_next(request)
        if not static:
            # Pages may show patient data: never kept by the browser or a proxy.
            response.headers["Cache-Control"] = "no-store"
            response.headers["Pragma"] = "no-cache"
        response.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "same-origin"
        return response

    secret = settings.session_secret
    ui.add_middleware(
        SessionMiddleware,
        secret_key=secret.get_secret_value() if secret else secrets.token_urlsafe(32),
        session_cookie=COOKIE,
        # The sign-in ends with its database row (PRESCREEN_SESSION_HOURS); the cookie outlives
        # it by the time a kept decision is kept, so that a form sent after the sign-in expired
        # is still recognised as this browser's own and kept (drafts.py).
        max_age=int((settings.session_hours + DRAFT_HOURS) * 3600),
        path="/ui",
        same_site="lax",
        https_only=(settings.public_url or "").startswith("https://"),
    )
    return ui
