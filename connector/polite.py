"""PoliteClient: how the sync talks HTTP to one EHR without hurting it: few requests in flight, a per-minute
budget, and retries that wait (Retry-After, else capped exponential backoff with full jitter) and then stop.

Retries live here and only here: the session's own urllib3 retries are switched off, so every wait goes
through the injectable `sleep` and a test can see it. A Retry-After longer than `retry_after_cap_s` is not
slept through: the TransientEhrError carries it so the job can come back later instead of holding a worker.
"""

from __future__ import annotations

import logging
import random
import threading
import time
import uuid
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any, Protocol, TypeVar

import orjson
import requests
from requests.adapters import HTTPAdapter

from connector.errors import outcome_text, raise_for_status, retry_after_seconds
from prm.errors import AuthExpiredError, PermanentEhrError, TransientEhrError

log = logging.getLogger(__name__)

IDEMPOTENT = frozenset({"GET", "HEAD", "DELETE", "OPTIONS"})
RETRY_AFTER_STATUSES = (429, 503)
T = TypeVar("T")
_jitter = random.SystemRandom()


def _short(url: str) -> str:
    """scheme://host/first-segment...: enough to tell requests apart in a log, without ids or queries."""
    head, _, path = url.split("?")[0].partition("://")
    host, _, rest = path.partition("/")
    return f"{head}://{host}/{rest.split('/')[0]}..." if rest else f"{head}://{host}"


class TokenBucket:
    """The per-minute budget: a reservation bucket, so each caller computes its one wait and never polls."""

    def __init__(self, per_minute: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = max(per_minute, 1) / 60.0
        self.capacity = max(1.0, per_minute / 60.0)  # a burst of one second's worth
        self._clock = clock
        self._tokens = self.capacity
        self._stamp = clock()
        self._lock = threading.Lock()

    def reserve(self) -> float:
        """Take one request's token and return how long to wait before sending it (0 when one is ready)."""
        with self._lock:
            now = self._clock()
            self._tokens = min(self.capacity, self._tokens + (now - self._stamp) * self.rate)
            self._stamp = now
            self._tokens -= 1.0
            return 0.0 if self._tokens >= 0 else -self._tokens / self.rate


class Gate(Protocol):
    """Where one connection's limits are kept: in this process (LocalGate), or shared by every worker of the
    deployment (workers.shared_gate), since the EHR counts what our client id sends, not what one process does."""

    def reserve(self) -> float:
        """Take one request's share of the budget; how long to wait before sending it."""
        ...

    def slot(self) -> AbstractContextManager[object]:
        """Held while the request is in flight."""
        ...


class LocalGate:
    """This process's bound on requests in flight and its per-minute budget."""

    def __init__(self, max_in_flight: int = 4, requests_per_minute: int = 1200) -> None:
        self._in_flight = threading.BoundedSemaphore(max(1, max_in_flight))
        self._budget = TokenBucket(requests_per_minute)

    def reserve(self) -> float:
        return self._budget.reserve()

    def slot(self) -> AbstractContextManager[object]:
        return self._in_flight


class PoliteClient:
    """HTTP for one connection: bounded requests in flight, a per-minute request budget, retries that never spin."""

    def __init__(self, session: requests.Session, *, max_in_flight: int = 4, requests_per_minute: int = 1200,
                 max_attempts: int = 6, backoff_base_s: float = 0.5, backoff_cap_s: float = 30.0,
                 retry_after_cap_s: float = 120.0, timeout_s: float = 30.0,
                 sleep: Callable[[float], None] = time.sleep, gate: Gate | None = None) -> None:
        adapter = HTTPAdapter(max_retries=0, pool_maxsize=max(10, max_in_flight))
        session.mount("http://", adapter)  # our retries, not urllib3's: every wait must pass through `sleep`
        session.mount("https://", adapter)
        self.session = session
        self.max_attempts = max(1, max_attempts)
        self.backoff_base_s = backoff_base_s
        self.backoff_cap_s = backoff_cap_s
        self.retry_after_cap_s = retry_after_cap_s
        self.timeout_s = timeout_s
        self.sleep = sleep
        self.gate = gate or LocalGate(max_in_flight, requests_per_minute)

    def backoff_delay(self, attempt: int) -> float:
        """Full jitter (AWS architecture blog): uniform in [0, min(cap, base * 2^(attempt-1))]."""
        return _jitter.uniform(0.0, min(self.backoff_cap_s, self.backoff_base_s * 2 ** max(attempt - 1, 0)))

    def request(self, method: str, url: str, *, headers: dict[str, str] | None = None,
                params: dict[str, str] | list[tuple[str, str]] | None = None, json_body: Any = None,
                stream: bool = False, retry: bool | None = None) -> requests.Response:
        """One logical request; `retry` None means "retry idempotent methods only", True/False force it."""
        return self._run(method, url, lambda response: response, headers=headers, params=params,
                         json_body=json_body, stream=stream, retry=retry)

    def request_json(self, method: str, url: str, *, headers: dict[str, str] | None = None,
                     params: dict[str, str] | list[tuple[str, str]] | None = None, json_body: Any = None,
                     retry: bool | None = None) -> dict[str, Any]:
        """Like request, and the body must be a JSON object; a truncated or garbled body is retried."""
        return self._run(method, url, _json_object, headers=headers, params=params, json_body=json_body,
                         stream=False, retry=retry)

    def _run(self, method: str, url: str, parse: Callable[[requests.Response], T], *,
             headers: dict[str, str] | None, params: dict[str, str] | list[tuple[str, str]] | None,
             json_body: Any, stream: bool, retry: bool | None) -> T:
        method = method.upper()
        attempts = self.max_attempts if (method in IDEMPOTENT if retry is None else retry) else 1
        rid = uuid.uuid4().hex[:8]
        log.debug("EHR request %s: %s %s", rid, method, url.split("?")[0])
        for attempt in range(1, attempts + 1):
            what = "no response"
            try:
                response = self._send(method, url, headers, params, json_body, stream)
                what = f"HTTP {response.status_code}"
                try:
                    return parse(_checked(response))
                except BaseException:
                    response.close()
                    raise
            except requests.RequestException as exc:
                kind = "timed out" if isinstance(exc, requests.Timeout) else "failed in transit"
                error = TransientEhrError(f"{method} {_short(url)} {kind}: {type(exc).__name__}")
                what = f"{what}, {type(exc).__name__}"
            except TransientEhrError as exc:
                error = exc
            if attempt == attempts:
                log.warning("EHR request %s: %s %s gave up after %d attempt(s) (%s)", rid, method, _short(url),
                            attempt, what)
                raise error
            retry_after = error.retry_after_s
            if retry_after is not None and retry_after > self.retry_after_cap_s:
                log.warning("EHR request %s: %s, Retry-After %.0f s exceeds %.0f s; handing back", rid, what,
                            retry_after, self.retry_after_cap_s)
                raise error
            delay = retry_after if retry_after is not None else self.backoff_delay(attempt)
            log.warning("EHR request %s: %s %s attempt %d/%d failed (%s); retrying in %.2f s", rid, method,
                        _short(url), attempt, attempts, what, delay)
            self.sleep(delay)
        raise AssertionError("unreachable")  # pragma: no cover

    def _send(self, method: str, url: str, headers: dict[str, str] | None,
              params: dict[str, str] | list[tuple[str, str]] | None, json_body: Any,
              stream: bool) -> requests.Response:
        wait = self.gate.reserve()
        if wait > 0:
            log.debug("EHR request budget: waiting %.2f s", wait)
            self.sleep(wait)
        with self.gate.slot():  # held until the headers (and, unless streaming, the body) have arrived
            return self.session.request(method, url, headers=headers, params=params, json=json_body,
                                        stream=stream, timeout=self.timeout_s)


def _checked(response: requests.Response) -> requests.Response:
    """The response if usable; TransientEhrError (with Retry-After) to retry; AuthExpired/Permanent to stop."""
    status = response.status_code
    if status == 401:
        detail = outcome_text(response)
        response.close()
        raise AuthExpiredError(f"{response.request.method} {_short(response.url)} -> HTTP 401"
                               + (f": {detail}" if detail else ""), ehr_said=detail)
    if status in (408, 425, 429) or status >= 500:
        retry_after = (retry_after_seconds(response.headers.get("Retry-After"))
                       if status in RETRY_AFTER_STATUSES else None)
        detail = outcome_text(response)
        raise TransientEhrError(f"{response.request.method} {_short(response.url)} -> HTTP {status}"
                                + (f": {detail}" if detail else ""), retry_after, ehr_said=detail)
    return raise_for_status(response)


def _json_object(response: requests.Response) -> dict[str, Any]:
    try:
        body = orjson.loads(response.content)  # FHIR JSON is UTF-8; orjson is ~3x faster than json here
    except ValueError as exc:  # a cut or garbled body: the next attempt may get it whole
        raise TransientEhrError(f"{_short(response.url)}: the body is not complete JSON") from exc
    if not isinstance(body, dict):
        raise PermanentEhrError(f"{_short(response.url)}: the body is JSON but not an object")
    return body
