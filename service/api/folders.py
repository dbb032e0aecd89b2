"""Which folders of the service host an API caller may have screened (``POST /runs``, NDJSON).

A caller names a path on the host; without a limit, anyone with the ``runs`` scope could make the
service read any folder it can. Only folders at or below the configured roots are allowed, after
resolving symbolic links and ``..``; a missing folder and a forbidden one get the same answer, so
the API does not reveal what exists on the host.
"""

from __future__ import annotations

from pathlib import Path


def roots_of(setting: str) -> list[Path]:
    return [Path(part.strip()).resolve() for part in setting.split(",") if part.strip()]


def allowed_ndjson_folder(requested: str | None, roots_setting: str) -> Path | None:
    """The resolved folder when it exists and lies under a configured root, else None."""
    if not requested or "\x00" in requested:
        return None
    try:
        folder = Path(requested).resolve()
    except (OSError, RuntimeError, ValueError):
        return None
    for root in roots_of(roots_setting):
        if folder == root or root in folder.parents:
            return folder if folder.is_dir() else None
    return None
