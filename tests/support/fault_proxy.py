"""A fault-injecting HTTP proxy for tests: real sockets, real status codes, real cut connections.

FaultProxy forwards every request (method, path, query, headers, body) to a target and streams the answer
back unchanged, except where a fault added with `add_fault` matches: it can answer a status of its own (with
Retry-After and a body), wait first, cut the body after N bytes, drop the connection without answering, or
forward and then lose the answer (the EHR acted; the client never hears it).
Faults match in the order added, each for `times` requests, on a regex searched in the path and query.

To put it in front of the sandbox EHR, let the proxy own the EHR's public port: `FaultyEhr` starts a
SandboxStack whose config.port (and so iss, discovery, token endpoint, sekmet's next links and bulk URLs) is
the proxy's port, while the EHR app binds another (`SandboxConfig.bind_port`). Every URL the EHR hands out
then leads back through the proxy:

    with FaultyEhr(SandboxConfig(port=0, fhir_internal_port=0, clients=[...])) as ehr:
        ehr.proxy.add_fault(r"/fhir/Encounter\\?", status=429, retry_after="3")
        ... FhirReader(ehr.iss, ...) ...
        assert ("GET", "/fhir/Encounter", 429) in ehr.proxy.hits
"""

from __future__ import annotations

import http.client
import re
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

from ehr_sandbox.config import SandboxConfig
from ehr_sandbox.stack import SandboxStack
from tests.support.ports import free_port

HOP_BY_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailers",
              "transfer-encoding", "upgrade", "server", "date"}
CHUNK = 64 * 1024


@dataclass
class Fault:
    pattern: re.Pattern[str]
    times: int
    method: str | None = None
    status: int | None = None
    retry_after: str | None = None
    delay_s: float | None = None
    truncate_body_at: int | None = None
    drop_connection: bool = False
    lose_answer: bool = False
    body: bytes | None = None
    before: Callable[[], None] | None = None  # run before forwarding (e.g. change the EHR's data mid-sync)

    def matches(self, method: str, target: str) -> bool:
        return self.times > 0 and (self.method is None or self.method == method) and bool(
            self.pattern.search(target))


class FaultProxy:
    """A threaded HTTP proxy on 127.0.0.1:`port` (0 = any free port) in front of `target` (scheme://host:port)."""

    def __init__(self, target: str, port: int = 0) -> None:
        parts = urlsplit(target)
        self.target_host = parts.hostname or "127.0.0.1"
        self.target_port = parts.port or 80
        self.port = port or free_port()
        self.hits: list[tuple[str, str, int]] = []  # (method, path without query, status; 0 = dropped)
        self.arrivals: list[tuple[float, str, str]] = []  # (time.monotonic(), method, path and query) as each came
        self._faults: list[Fault] = []
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def add_fault(self, path_regex: str, times: int = 1, method: str | None = None, status: int | None = None,
                  retry_after: str | None = None, delay_s: float | None = None, truncate_body_at: int | None = None,
                  drop_connection: bool = False, lose_answer: bool = False, body: str | bytes | None = None,
                  before: Callable[[], None] | None = None) -> Fault:
        """Status and/or body: answer that instead of forwarding (status 200 when only a body is given).
        Otherwise forward, after `delay_s`, cutting the body at `truncate_body_at` bytes (the Content-Length
        still promises all of it); `drop_connection` closes the socket without a word; `lose_answer` forwards
        (the EHR acts) and then closes the socket before a byte of its answer."""
        fault = Fault(re.compile(path_regex), times, method.upper() if method else None, status, retry_after,
                      delay_s, truncate_body_at, drop_connection, lose_answer,
                      body.encode() if isinstance(body, str) else body, before)
        with self._lock:
            self._faults.append(fault)
        return fault

    def clear(self) -> None:
        """Forget faults, hits and arrivals."""
        with self._lock:
            self._faults.clear()
            self.hits.clear()
            self.arrivals.clear()

    def take(self, method: str, target: str) -> Fault | None:
        with self._lock:
            for fault in self._faults:
                if fault.matches(method, target):
                    fault.times -= 1
                    return fault
        return None

    def arrived(self, method: str, target: str) -> None:
        with self._lock:
            self.arrivals.append((time.monotonic(), method, target))

    def record(self, method: str, target: str, status: int) -> None:
        with self._lock:
            self.hits.append((method, target.split("?")[0], status))

    def count(self, method: str, path_regex: str, status: int | None = None) -> int:
        """How many recorded hits match; for assertions on retries."""
        pattern = re.compile(path_regex)
        with self._lock:
            return sum(1 for m, p, s in self.hits
                       if m == method and pattern.search(p) and (status is None or s == status))

    def start(self) -> FaultProxy:
        server = ThreadingHTTPServer(("127.0.0.1", self.port), self.handler())
        server.daemon_threads = True
        server.proxy = self  # type: ignore[attr-defined]
        server.handle_error = lambda request, client_address: None  # type: ignore[method-assign]
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name=f"fault-proxy-{self.port}", daemon=True)
        self._thread.start()
        return self

    @staticmethod
    def handler() -> type[BaseHTTPRequestHandler]:
        """The request handler class; a subclass with faults of its own returns its own."""
        return _Handler

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _handle(self) -> None:
        proxy: FaultProxy = self.server.proxy  # type: ignore[attr-defined]
        method = self.command
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        proxy.arrived(method, self.path)
        fault = proxy.take(method, self.path)
        try:
            if fault is not None and fault.before is not None:
                fault.before()
            if fault is not None and fault.delay_s:
                time.sleep(fault.delay_s)
            if fault is not None and fault.drop_connection:
                proxy.record(method, self.path, 0)
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)
                return
            if fault is not None and (fault.status is not None or fault.body is not None):
                self._answer(proxy, fault)
                return
            self._forward(proxy, method, body, fault.truncate_body_at if fault else None,
                          lose_answer=fault is not None and fault.lose_answer)
        except (BrokenPipeError, ConnectionResetError, OSError):
            self.close_connection = True  # the client gave up (a timeout test): nothing to tell it

    def _answer(self, proxy: FaultProxy, fault: Fault) -> None:
        status = fault.status or 200
        payload = fault.body if fault.body is not None else (
            b'{"resourceType":"OperationOutcome","issue":[{"severity":"error","code":"transient",'
            b'"diagnostics":"injected fault"}]}')
        proxy.record(self.command, self.path, status)
        self.send_response(status)
        self.send_header("Content-Type", "application/fhir+json")
        self.send_header("Content-Length", str(len(payload)))
        if fault.retry_after is not None:
            self.send_header("Retry-After", fault.retry_after)
        self.end_headers()
        self.wfile.write(payload)

    def _forward(self, proxy: FaultProxy, method: str, body: bytes | None, truncate_at: int | None,
                 lose_answer: bool = False) -> None:
        upstream = http.client.HTTPConnection(proxy.target_host, proxy.target_port, timeout=300)
        try:
            upstream.putrequest(method, self.path, skip_host=True, skip_accept_encoding=True)
            for name, value in self.headers.items():  # Host too: the EHR sees what the client sent
                if name.lower() not in HOP_BY_HOP:
                    upstream.putheader(name, value)
            upstream.endheaders(body)
            response = upstream.getresponse()
            proxy.record(method, self.path, response.status)
            if lose_answer:
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)
                return
            self.send_response(response.status)
            length = response.getheader("Content-Length")
            for name, value in response.getheaders():
                if name.lower() not in HOP_BY_HOP:
                    self.send_header(name, value)
            if length is None or truncate_at is not None:
                self.send_header("Connection", "close")
                self.close_connection = True
            self.end_headers()
            sent = 0
            while method != "HEAD":
                chunk = response.read(CHUNK)
                if not chunk:
                    break
                if truncate_at is not None and sent + len(chunk) >= truncate_at:
                    self.wfile.write(chunk[:max(truncate_at - sent, 0)])
                    self.wfile.flush()
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                self.wfile.write(chunk)
                sent += len(chunk)
        finally:
            upstream.close()

    do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = _handle


class FaultyEhr:
    """A SandboxStack behind a FaultProxy that owns its public port, so every URL the EHR gives leads back
    through the proxy. Ports of 0 in `config` are picked free."""

    def __init__(self, config: SandboxConfig, **stack_options: Any) -> None:
        config.port = config.port or free_port()
        config.bind_port = config.bind_port or free_port()
        self.stack = SandboxStack(config, **stack_options)
        self.proxy = FaultProxy(f"http://127.0.0.1:{config.bind_port}", port=config.port)

    @property
    def iss(self) -> str:
        return self.stack.iss

    @property
    def ehr_url(self) -> str:
        return self.stack.ehr_url

    def start(self) -> FaultyEhr:
        self.stack.start()
        try:
            self.proxy.start()
        except BaseException:
            self.stack.stop()
            raise
        return self

    def stop(self) -> None:
        self.proxy.stop()
        self.stack.stop()

    def __enter__(self) -> FaultyEhr:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
