"""A connection's EHR limits shared by every worker on every machine, kept in Redis.

The EHR sees one client id, however many workers sync for it: four workers with four requests in flight each
would be sixteen, and four per-minute budgets four times the one IT set. So where there is Redis (Celery mode)
the bound on requests in flight and the budget are kept there:

- in flight: N slots, each a redis-py `Lock` (SET NX PX, released by token) that expires by itself, so a
  worker killed mid-request frees its slot within the lease. A request that finds every slot taken waits a
  few jittered tens of milliseconds and looks again; after the request timeout it gives up as a transient
  error (the job comes back later).
- budget: a reservation, as the local TokenBucket makes one: one atomic script on Redis's own clock (GCRA)
  tells each request how long to wait, so no caller polls for budget. No Redis client library offers a
  reservation (they answer "not now" and leave the caller to poll), hence the dozen lines of Lua.

When Redis cannot be reached, each process falls back to its own LocalGate and says so in the log: the sync
goes on, bounded per process, rather than failing for a limit that only Redis could share.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager

import redis
from redis.exceptions import LockError, RedisError

from connector.polite import LocalGate
from prm.errors import TransientEhrError

log = logging.getLogger(__name__)
_jitter = random.SystemRandom()
POLL_S = (0.02, 0.08)  # a waiting request looks for a free slot again after this long (uniform)
WARN_EVERY_S = 60.0

# GCRA as a reservation: KEYS[1] holds the theoretical arrival time of the next request (Redis clock, seconds).
# ARGV: seconds per request, burst (requests). Returns the wait, as text (Redis turns Lua numbers into integers).
RESERVE = """
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local wait = tat - now - (burst - 1) * interval
if wait < 0 then wait = 0 end
local next_tat = tat + interval
redis.call('SET', KEYS[1], string.format('%.6f', next_tat), 'PX', math.ceil((next_tat - now) * 1000) + 1000)
return string.format('%.6f', wait)
"""


class RedisGate:
    """One connection's limits for every worker sharing `client` (see the module docstring)."""

    def __init__(self, client: redis.Redis, connection_id: int, *, max_in_flight: int = 4,
                 requests_per_minute: int = 1200, timeout_s: float = 30.0,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.client = client
        self.key = f"prm:ehr:{connection_id}"
        self.slots = max(1, max_in_flight)
        self.interval_s = 60.0 / max(requests_per_minute, 1)
        self.burst = max(1.0, requests_per_minute / 60.0)
        self.timeout_s = timeout_s
        self.slot_ttl_s = 2 * timeout_s + 10  # a request's slot outlives its longest wait for an answer
        self.sleep = sleep
        self.fallback = LocalGate(max_in_flight, requests_per_minute)
        self._reserve = client.register_script(RESERVE)
        self._warned_at = float("-inf")
        self._warn_lock = threading.Lock()

    def reserve(self) -> float:
        try:
            return float(self._reserve(keys=[f"{self.key}:budget"], args=[self.interval_s, self.burst]))
        except RedisError as exc:
            self._degraded(exc)
            return self.fallback.reserve()

    def slot(self) -> AbstractContextManager[object]:
        return self._slot()

    @contextmanager
    def _slot(self) -> Iterator[object]:
        try:
            held = self._take()
        except RedisError as exc:
            self._degraded(exc)
            held = None
        if held is None:
            with self.fallback.slot():
                yield None
            return
        try:
            yield held
        finally:
            self._give_back(held)

    def _take(self) -> redis.lock.Lock:
        """A free slot, waiting for one until the request timeout."""
        give_up_at = time.monotonic() + self.timeout_s
        while True:
            for index in _jitter.sample(range(self.slots), self.slots):
                lock = self.client.lock(f"{self.key}:slot:{index}", timeout=self.slot_ttl_s, thread_local=False)
                if lock.acquire(blocking=False):
                    return lock
            if time.monotonic() >= give_up_at:
                raise TransientEhrError(f"all {self.slots} request slots for the EHR stayed taken for "
                                        f"{self.timeout_s:.0f} s (other workers are syncing it)")
            self.sleep(_jitter.uniform(*POLL_S))

    def _give_back(self, lock: redis.lock.Lock) -> None:
        try:
            lock.release()
        except LockError:  # it expired while the request ran (longer than slot_ttl_s): it is free already
            log.warning("an EHR request slot (%s) expired before its request ended", lock.name)
        except RedisError as exc:  # Redis went away mid-request: the slot expires by itself
            self._degraded(exc)

    def _degraded(self, exc: RedisError) -> None:
        with self._warn_lock:
            now = time.monotonic()
            if now - self._warned_at < WARN_EVERY_S:
                return
            self._warned_at = now
        log.warning("Redis unreachable (%s): EHR limits for %s are kept per process until it is back",
                    type(exc).__name__, self.key)
