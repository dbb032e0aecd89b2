"""The state of Bulk Data exports into one folder, kept in ``<folder>/export.json``.

It is saved after every step (kick-off, manifest, each file started and finished), so a run that
stops anywhere (killed, server lost, laptop closed) is resumed by the next run with the same
request: it polls the same status URL, or downloads only the files not finished, continuing a
partial file where it stopped. An export's files stay listed after it finished: an incremental
(``_since``) export adds its files beside them, a full one replaces them.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import orjson

from service.errors import SourceError
from service.fhir.bulk.plan import ExportRequest
from service.private_files import private_folder, write_private

STATE_FILE = "export.json"
ERRORS_FOLDER = "errors"
DELETED_FOLDER = "deleted"  # an incremental export's lists of deleted resources (Bundles)
FileKind = Literal["output", "error", "referenced", "deleted"]
# running: kicked off or downloading; downloaded: every file is here, the consumer (a screening)
# has not finished; finished: consumed (and deleted on the server unless kept); expired: the
# server no longer has it, its files are dropped at the next run.
JobPhase = Literal["running", "downloaded", "finished", "expired"]


def utc_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class ExportFile:
    """One file of an export: an output, error or deleted file of the manifest, or the
    resources prescreen read by id because the files reference them."""

    kind: FileKind
    type: str
    index: int
    url: str | None = None
    count: int | None = None
    done: bool = False
    bytes: int = 0
    encoding: str = "identity"  # the Content-Encoding stored on disk (gzip is kept gzipped)
    etag: str | None = None
    last_modified: str | None = None

    @property
    def stem(self) -> str:
        # Error and deleted files go in folders of their own: the NDJSON reader never reads
        # them as resources.
        folder = {"error": ERRORS_FOLDER, "deleted": DELETED_FOLDER}.get(self.kind)
        prefix = f"{folder}/" if folder else ""
        return f"{prefix}{self.type}.{self.index}"

    @property
    def name(self) -> str:
        """Where the finished file lives: ``<Type>.<n>.ndjson`` (the reader's naming)."""
        return f"{self.stem}.ndjson" + (".gz" if self.encoding == "gzip" else "")

    @property
    def part_name(self) -> str:
        """Where it grows while downloading: a name the NDJSON reader never picks up."""
        return f"{self.stem}.part"

    def as_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "type": self.type,
            "index": self.index,
            "url": self.url,
            "count": self.count,
            "done": self.done,
            "bytes": self.bytes,
            "encoding": self.encoding,
            "etag": self.etag,
            "last_modified": self.last_modified,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ExportFile:
        return cls(
            kind=data["kind"],
            type=str(data["type"]),
            index=int(data["index"]),
            url=data.get("url"),
            count=data.get("count"),
            done=bool(data.get("done")),
            bytes=int(data.get("bytes") or 0),
            encoding=str(data.get("encoding") or "identity"),
            etag=data.get("etag"),
            last_modified=data.get("last_modified"),
        )


@dataclass
class ExportJob:
    request: ExportRequest
    kicked_off: str = field(default_factory=utc_now)
    status_url: str | None = None
    phase: JobPhase = "running"
    manifest: dict[str, Any] | None = None
    files: list[ExportFile] = field(default_factory=list)
    referenced_done: bool = False
    deleted: bool = False
    type_filter: str = ""  # whether _typeFilter was sent, and why
    notes: list[str] = field(default_factory=list)
    method: str = "GET"  # the kick-off's method (POST for a server that refuses GET)
    # Types asked for that this export does not carry, with why (refused at the kick-off, not
    # granted by the token's scopes, a manifest entry prescreen could not read): the
    # screening treats them as lost sources.
    lost: dict[str, str] = field(default_factory=dict)
    deletions_done: bool = False  # its deleted resources removed from the earlier exports
    deleted_patients: list[str] = field(default_factory=list)  # Patients it lists as deleted
    unreadable_errors: int = 0  # error entries of the manifest without a usable URL

    @property
    def asked_types(self) -> set[str]:
        """The types the request asked for before any was dropped."""
        return {*self.request.types, *self.lost}

    @property
    def requires_token(self) -> bool:
        return bool((self.manifest or {}).get("requiresAccessToken"))

    def as_json(self) -> dict[str, Any]:
        return {
            "request": self.request.as_json(),
            "kicked_off": self.kicked_off,
            "status_url": self.status_url,
            "phase": self.phase,
            "manifest": self.manifest,
            "files": [f.as_json() for f in self.files],
            "referenced_done": self.referenced_done,
            "deleted": self.deleted,
            "type_filter": self.type_filter,
            "notes": self.notes,
            "method": self.method,
            "lost": self.lost,
            "deletions_done": self.deletions_done,
            "deleted_patients": self.deleted_patients,
            "unreadable_errors": self.unreadable_errors,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ExportJob:
        return cls(
            request=ExportRequest.from_json(data["request"]),
            kicked_off=str(data.get("kicked_off", "")),
            status_url=data.get("status_url"),
            phase=data.get("phase", "running"),
            manifest=data.get("manifest"),
            files=[ExportFile.from_json(f) for f in data.get("files", [])],
            referenced_done=bool(data.get("referenced_done")),
            deleted=bool(data.get("deleted")),
            type_filter=str(data.get("type_filter", "")),
            notes=list(data.get("notes", [])),
            method=str(data.get("method") or "GET"),
            lost={str(k): str(v) for k, v in (data.get("lost") or {}).items()},
            deletions_done=bool(data.get("deletions_done")),
            deleted_patients=[str(p) for p in data.get("deleted_patients") or []],
            unreadable_errors=int(data.get("unreadable_errors") or 0),
        )


def _folder_of(kind: FileKind) -> str:
    return kind if kind in ("error", "deleted") else ""


@dataclass
class ExportState:
    """Every export whose files are in the folder, oldest first, for one FHIR server."""

    folder: Path
    base_url: str
    jobs: list[ExportJob] = field(default_factory=list)

    @property
    def current(self) -> ExportJob | None:
        return self.jobs[-1] if self.jobs else None

    def next_index(self, resource_type: str, kind: FileKind) -> int:
        used = [
            f.index
            for job in self.jobs
            for f in job.files
            if f.type == resource_type and _folder_of(f.kind) == _folder_of(kind)
        ]
        return max(used, default=0) + 1

    def save(self) -> None:
        private_folder(self.folder)
        document = {"base_url": self.base_url, "jobs": [job.as_json() for job in self.jobs]}
        path = self.folder / STATE_FILE
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        write_private(tmp, orjson.dumps(document, option=orjson.OPT_INDENT_2) + b"\n")
        tmp.replace(path)

    def drop(self, job: ExportJob) -> None:
        """Forget a job and remove its files (finished and partial)."""
        for file in job.files:
            for name in (file.name, file.part_name):
                with contextlib.suppress(FileNotFoundError):
                    (self.folder / name).unlink()
        self.jobs.remove(job)

    @classmethod
    def load(cls, folder: Path, base_url: str) -> ExportState:
        """The saved state, or a new one (also when the saved one is of another server: its
        jobs cannot be resumed or deleted with this server's credentials)."""
        path = folder / STATE_FILE
        if not path.is_file():
            return cls(folder, base_url)
        data = orjson.loads(path.read_bytes())
        state = cls(folder, base_url, [ExportJob.from_json(job) for job in data.get("jobs", [])])
        if data.get("base_url") != base_url:
            for job in list(state.jobs):
                state.drop(job)
        return state


def export_notes(folder: Path) -> tuple[dict[str, str], frozenset[str]]:
    """What the exports whose files are in the folder lack: the resource types they lost (with
    why; the first reason given for a type is kept) and the Patients incremental exports list
    as deleted."""
    path = folder / STATE_FILE
    try:
        data = orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError) as exc:
        # What the export lost cannot be known: screening it would be judging blind.
        raise SourceError(
            f"{path} cannot be read ({type(exc).__name__}): it says what the Bulk Data export "
            "in this folder lacks; restore it or export again"
        ) from exc
    lost: dict[str, str] = {}
    deleted: set[str] = set()
    for job in data.get("jobs", []) if isinstance(data, dict) else []:
        for rtype, why in (job.get("lost") or {}).items():
            lost.setdefault(str(rtype), str(why))
        deleted.update(str(pid) for pid in job.get("deleted_patients") or [])
    return lost, frozenset(deleted)
