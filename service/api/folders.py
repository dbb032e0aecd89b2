"""Which folders of the service host an API caller may have screened (``POST /runs``, NDJSON).

A caller names a path on the host; without a limit, anyone with the ``runs`` scope could make the
service read any folder it can. Only folders at or below the configured roots are allowed, after
resolving symbolic links and ``..``; a missing folder and a forbidden one get the same answer, so
the API does not reveal what exists on the host.
"""

from __future__ import annotations

from pathlib import Path

from service.ndjson_files import NdjsonFile, discover

OUTSIDE_ROOTS = "outside-allowed-folders"  # the input issue of a file that links out


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
    if _within(folder, roots_of(roots_setting)):
        return folder if folder.is_dir() else None
    return None


def _within(path: Path, roots: list[Path]) -> bool:
    return any(path == root or root in path.parents for root in roots)


def files_within_roots(folder: Path, roots_setting: str) -> tuple[list[NdjsonFile], list[str]]:
    """The NDJSON files of a folder whose real place (links resolved) lies under a configured
    root, and the names of those that do not: a link inside an allowed folder must not let a
    run read a file elsewhere on the host."""
    roots = roots_of(roots_setting)
    inside: list[NdjsonFile] = []
    outside: list[str] = []
    for file in discover(folder):
        try:
            real = file.path.resolve(strict=True)
        except (OSError, RuntimeError):
            outside.append(file.path.name)
            continue
        if _within(real, roots):
            inside.append(file)
        else:
            outside.append(file.path.name)
    return inside, outside
