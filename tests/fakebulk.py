"""A small Bulk Data server on 127.0.0.1 for the tests: the behaviours of servers nobody here
wrote that broke prescreen, on demand.

It serves one set of resources (NDJSON lines by type) as a patient-, group- or system-level
export. Like the SMART reference server, its CapabilityStatement lists only the types it has and
a kick-off whose ``_type`` names another is refused with 400, the first such type named in the
OperationOutcome. Options: refuse GET kick-offs (POST only), an incremental (``_since``) export
with a ``deleted`` list, answers to the status URL given in advance (``Retry-After: 0``...),
manifest entries to add as they are (malformed ones).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

NDJSON = "application/fhir+ndjson"


@dataclass
class Reply:
    """A canned answer of the status URL (before the manifest)."""

    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""


@dataclass
class FakeBulkServer:
    data: dict[str, list[bytes]]  # type -> NDJSON lines of the full export
    get_allowed: bool = True
    # The incremental export: lines by type, and Type/id of deleted resources.
    changes: dict[str, list[bytes]] = field(default_factory=dict)
    deleted: list[str] = field(default_factory=list)
    status_replies: list[Reply] = field(default_factory=list)
    extra_outputs: list[Any] = field(default_factory=list)  # added to the manifest as they are
    kickoffs: list[tuple[str, dict[str, list[str]]]] = field(default_factory=list)
    polls: int = 0
    port: int = 0  # 0: any free port (a fixed one keeps the base URL of a folder's exports)
    base_url: str = ""
    _job: dict[str, Any] = field(default_factory=dict)

    # --- what it answers ----------------------------------------------------------------------

    def capability_statement(self) -> dict[str, Any]:
        return {
            "resourceType": "CapabilityStatement",
            "status": "active",
            "kind": "instance",
            "fhirVersion": "4.0.1",
            "format": ["json"],
            "rest": [
                {
                    "mode": "server",
                    "resource": [{"type": t} for t in sorted(self.data)],
                    "operation": [
                        {
                            "name": "export",
                            "definition": "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/"
                            "patient-export",
                        }
                    ],
                }
            ],
        }

    def kick_off(self, method: str, params: dict[str, list[str]]) -> tuple[int, dict[str, Any]]:
        self.kickoffs.append((method, params))
        if method == "GET" and not self.get_allowed:
            return 405, outcome("this server takes the kick-off by POST only")
        types = [t for value in params.get("_type", []) for t in value.split(",") if t]
        for rtype in types:
            if rtype not in self.data:
                return 400, outcome(
                    f'The requested resource type "{rtype}" is not available on this server'
                )
        since = bool(params.get("_since"))
        source = self.changes if since else self.data
        chosen = [t for t in sorted(source) if not types or t in types]
        self._job = {"types": chosen, "since": since}
        return 202, {}

    def manifest(self) -> dict[str, Any]:
        since = self._job["since"]
        source = self.changes if since else self.data
        output: list[Any] = [
            {"type": t, "url": f"{self.base_url}/files/{'delta' if since else 'full'}/{t}"}
            for t in self._job["types"]
            if source.get(t)
        ]
        output += self.extra_outputs
        manifest: dict[str, Any] = {
            "transactionTime": "2026-06-15T00:00:00Z",
            "request": f"{self.base_url}/Patient/$export",
            "requiresAccessToken": False,
            "output": output,
            "error": [],
        }
        if since and self.deleted:
            manifest["deleted"] = [{"type": "Bundle", "url": f"{self.base_url}/files/deleted"}]
        return manifest

    def file(self, path: str) -> bytes | None:
        if path == "/fhir/files/deleted":
            bundles = [
                {
                    "resourceType": "Bundle",
                    "type": "transaction",
                    "entry": [{"request": {"method": "DELETE", "url": ref}}],
                }
                for ref in self.deleted
            ]
            return b"".join(json.dumps(b).encode() + b"\n" for b in bundles)
        _, _, kind, rtype = path.rsplit("/", 3)
        source = self.changes if kind == "delta" else self.data
        lines = source.get(rtype)
        return None if lines is None else b"".join(line.rstrip(b"\n") + b"\n" for line in lines)


def outcome(text: str) -> dict[str, Any]:
    return {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": "processing", "diagnostics": text}],
    }


def _handler(server: FakeBulkServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *_args: Any) -> None:
            pass

        def _send(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
            self.send_response(status)
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _json(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
            content = json.dumps(body).encode() if body else b""
            self._send(
                status, content, {"Content-Type": "application/fhir+json", **(headers or {})}
            )

        def _kick_off(self, method: str, params: dict[str, list[str]]) -> None:
            status, body = server.kick_off(method, params)
            location = {"Content-Location": f"{server.base_url}/status/1"} if status == 202 else {}
            self._json(status, body, location)

        def do_GET(self) -> None:
            parts = urlsplit(self.path)
            if parts.path == "/fhir/metadata":
                self._json(200, server.capability_statement())
            elif parts.path.endswith("/$export"):
                self._kick_off("GET", parse_qs(parts.query))
            elif parts.path == "/fhir/status/1":
                server.polls += 1
                if server.status_replies:
                    reply = server.status_replies.pop(0)
                    self._send(reply.status, reply.body, reply.headers)
                else:
                    self._json(200, server.manifest())
            elif parts.path.startswith("/fhir/files/"):
                content = server.file(parts.path)
                if content is None:
                    self._json(404, outcome("no such file"))
                else:
                    self._send(200, content, {"Content-Type": NDJSON})
            else:
                self._json(404, outcome("not found"))

        def do_POST(self) -> None:
            parts = urlsplit(self.path)
            length = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(length) or b"{}")
            if not parts.path.endswith("/$export") or body.get("resourceType") != "Parameters":
                self._json(400, outcome("expected a Parameters resource"))
                return
            params: dict[str, list[str]] = {}
            for parameter in body.get("parameter", []):
                value = next(v for k, v in parameter.items() if k.startswith("value"))
                params.setdefault(parameter["name"], []).append(str(value))
            self._kick_off("POST", params)

        def do_DELETE(self) -> None:
            self._send(202, b"")

    return Handler


class _Quiet(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that stops reading (a size bound) is what some tests do


@contextmanager
def serving(server: FakeBulkServer) -> Iterator[FakeBulkServer]:
    """Start it on 127.0.0.1 (a free port unless ``server.port``); stopped on every path."""
    http = _Quiet(("127.0.0.1", server.port), _handler(server))
    server.base_url = f"http://127.0.0.1:{http.server_address[1]}/fhir"
    thread = threading.Thread(target=http.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        http.shutdown()
        http.server_close()
        thread.join(timeout=10)
