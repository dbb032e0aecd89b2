"""``prescreen serve``: the whole web application (``service.web``: the API and the worklist)
under uvicorn. A module of its own beside ``web.py``, which imports FastAPI at its top: the
command line loads it only when the service starts."""

from __future__ import annotations

import argparse

from service.console import EXIT_OK, settings_for


def register_serve(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    serve = sub.add_parser("serve", parents=[common], help="run the HTTP service")
    serve.add_argument("--host", help="listen address (PRESCREEN_HOST, default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="listen port (PRESCREEN_PORT, default 8000)")
    serve.set_defaults(func=cmd_serve)


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    settings = settings_for(args)
    from service.web import create_app

    uvicorn.run(
        create_app(settings),
        host=args.host or settings.host,
        port=args.port or settings.port,
        log_level=settings.log_level.lower(),
        access_log=False,  # request lines carry patient ids in paths and queries
    )
    return EXIT_OK
