"""The coordinators' web worklist under ``/ui``: server-rendered pages (Jinja2) with a little
htmx, sign-in by the hospital's OpenID Connect provider or by local users, and decisions written
through the same code path as the API's."""
