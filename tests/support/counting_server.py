"""A tiny local HTTP server that answers every request with a small JSON object and counts how many requests
it holds at once (the peak), for tests of the bound on requests in flight."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit


class Target(ThreadingHTTPServer):
    """Answers every request with a small JSON object; `?wait=s` holds the answer; counts concurrency."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _TargetHandler)
        self.lock = threading.Lock()
        self.active = 0
        self.peak = 0


class _TargetHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _any(self) -> None:
        server: Target = self.server  # type: ignore[assignment]
        with server.lock:
            server.active += 1
            server.peak = max(server.peak, server.active)
        try:
            length = int(self.headers.get("Content-Length") or 0)
            if length:
                self.rfile.read(length)
            query = parse_qs(urlsplit(self.path).query)
            time.sleep(float(query.get("wait", ["0"])[0]))
            body = json.dumps({"resourceType": "Bundle", "path": urlsplit(self.path).path,
                               "pad": "x" * 200}).encode()
        finally:
            with server.lock:
                server.active -= 1
        self.send_response(200)
        self.send_header("Content-Type", "application/fhir+json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_DELETE = _any


@contextmanager
def counting_server() -> Iterator[Target]:
    server = Target()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


