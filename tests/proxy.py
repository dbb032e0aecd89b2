"""A FHIR server in front of a real one that refuses what some hospital servers refuse: searches
of some resource types (400, with an OperationOutcome naming the type) and batches (405). The
searches it lets through are the real server's answers, paging links rewritten to itself."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import orjson

from tests.integration.conftest import fhir_get
from tests.integration.servers import free_port


class RefusingProxy:
    def __init__(self, target: str, refuse: set[str]) -> None:
        self.target = target.rstrip("/")
        self.refused: list[str] = []  # the paths it refused
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def _send(self, status: int, content: bytes, content_type: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(content)))
                self.end_headers()
                self.wfile.write(content)

            def _refuse(self, status: int, text: str) -> None:
                proxy.refused.append(self.path)
                outcome = {
                    "resourceType": "OperationOutcome",
                    "issue": [{"severity": "error", "code": "not-supported", "diagnostics": text}],
                }
                self._send(status, orjson.dumps(outcome), "application/fhir+json")

            def do_GET(self) -> None:
                path = self.path.removeprefix("/fhir")
                rtype = path.lstrip("/").split("?")[0].split("/")[0]
                if rtype in refuse:
                    self._refuse(400, f"Resource type {rtype} is not supported by this server")
                    return
                answer = fhir_get(proxy.target + path, timeout=60)
                content = answer.content.replace(proxy.target.encode(), proxy.url.encode())
                self._send(answer.status_code, content, answer.headers.get("content-type", ""))

            def do_POST(self) -> None:
                self._refuse(405, "batch and transaction Bundles are not accepted here")

            def log_message(self, *_args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/fhir"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
