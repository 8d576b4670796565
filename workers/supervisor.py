"""Keep a Celery process running: the Celery worker can end by itself after a broker restart.

Seen here with Celery 5.7 and kombu 5.7 on Redis: when Redis restarts twice within a second or two, the
consumer's reconnect fails inside kombu (it restores unacknowledged messages on a channel whose connection
is already gone). The worker logs "Unrecoverable error" and exits with status 0, and nothing consumes the
queue until somebody starts it again. A process manager (systemd, Kubernetes) would restart it, but the
default one-machine setup has none. So `prm worker` and `prm beat` run the Celery process as a child, and
start it again whenever it ends without having been asked to stop.

Signals: SIGTERM and SIGINT ask the child for a warm shutdown (SIGTERM, which Celery treats as warm however
often it comes); SIGQUIT is passed on as it is (cold). The child also gets SIGTERM if this process dies
(Linux parent-death signal), so killing the supervisor never leaves an orphan worker behind.
"""

from __future__ import annotations

import ctypes
import logging
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from types import FrameType

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1
_STOP_SIGNALS = {signal.SIGTERM: signal.SIGTERM, signal.SIGINT: signal.SIGTERM, signal.SIGQUIT: signal.SIGQUIT}


@dataclass(frozen=True)
class Backoff:
    """How long to wait before starting the child again: doubling from `first_s` up to `max_s`.

    A child that ran at least `healthy_after_s` counts as healthy, and the wait starts over from `first_s`;
    a child that keeps dying at once is started less and less often, never in a tight loop.
    """

    first_s: float = 1.0
    max_s: float = 30.0
    healthy_after_s: float = 60.0


def _die_with_parent() -> None:
    """In the child before exec: ask Linux to send it SIGTERM when the supervisor dies."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


def _exit_status(returncode: int) -> int:
    """A shell's way to report a child killed by a signal: 128 + the signal's number."""
    return 128 - returncode if returncode < 0 else returncode


class Supervisor:
    """Runs `argv` until asked to stop, starting it again each time it ends by itself."""

    def __init__(self, argv: Sequence[str], name: str, backoff: Backoff = Backoff()) -> None:
        self.argv = list(argv)
        self.name = name
        self.backoff = backoff
        self._stop_signal: int | None = None
        self._child: subprocess.Popen[bytes] | None = None

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        self._stop_signal = signum
        self._pass_on()

    def _pass_on(self) -> None:
        child = self._child
        if self._stop_signal is not None and child is not None and child.poll() is None:
            child.send_signal(_STOP_SIGNALS.get(signal.Signals(self._stop_signal), signal.SIGTERM))

    def _sleep_unless_stopped(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while self._stop_signal is None and time.monotonic() < deadline:
            time.sleep(min(0.1, max(0.0, deadline - time.monotonic())))

    def run(self) -> int:
        """Run until a stop signal; returns the last child's exit status (128 + signal if it was killed)."""
        previous = {sig: signal.signal(sig, self._on_signal) for sig in _STOP_SIGNALS}
        try:
            delay = self.backoff.first_s
            while True:
                started = time.monotonic()
                self._child = subprocess.Popen(self.argv, preexec_fn=_die_with_parent)  # noqa: S603 (our own argv)
                self._pass_on()  # a stop signal that came while the child was being started
                status = _exit_status(self._child.wait())
                if self._stop_signal is not None:
                    return status
                ran_s = time.monotonic() - started
                if ran_s >= self.backoff.healthy_after_s:
                    delay = self.backoff.first_s
                log.error("%s ended by itself with status %s after %.1f s; starting it again in %.1f s",
                          self.name, status, ran_s, delay)
                self._sleep_unless_stopped(delay)
                if self._stop_signal is not None:
                    return status
                delay = min(delay * 2, self.backoff.max_s)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def supervise(argv: Sequence[str], name: str, backoff: Backoff = Backoff()) -> int:
    """Run `argv` under a Supervisor; the exit status to leave with."""
    return Supervisor(argv, name, backoff).run()
