"""The supervisor starts its child again when it ends by itself, and only then.

Each case runs a real supervisor process over a small Python child that writes what happens to it into a
file, so the signals travel as they do for `prm worker`.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from workers.supervisor import _exit_status

# The child writes "start <pid>" when it starts and "term" when SIGTERM reaches it; with "exit" as its
# argument it ends by itself with status 0 after a short while, as the Celery worker does on a broker error.
CHILD = textwrap.dedent("""
    import os, signal, sys, time
    events = open(sys.argv[1], "a", buffering=1)
    def on_term(signum, frame):
        events.write("term\\n")
        sys.exit(0)
    signal.signal(signal.SIGTERM, on_term)
    events.write(f"start {os.getpid()}\\n")
    time.sleep(0.2 if sys.argv[2] == "exit" else 60)
""")

StartSupervisor = Callable[[str], tuple[subprocess.Popen[bytes], Path]]

SUPERVISOR = textwrap.dedent("""
    import sys
    from workers.supervisor import Backoff, supervise
    child = [sys.executable, "-c", sys.argv[1], sys.argv[2], sys.argv[3]]
    sys.exit(supervise(child, "test child", Backoff(first_s=0.1, max_s=0.4, healthy_after_s=60)))
""")


def events(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def wait_for(predicate: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


@pytest.fixture
def start_supervisor(tmp_path: Path) -> Iterator[StartSupervisor]:
    started: list[subprocess.Popen[bytes]] = []

    def start(mode: str) -> tuple[subprocess.Popen[bytes], Path]:
        log = tmp_path / "events.log"
        proc = subprocess.Popen([sys.executable, "-c", SUPERVISOR, CHILD, str(log), mode],
                                stderr=subprocess.PIPE)
        started.append(proc)
        return proc, log

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_a_child_that_ends_by_itself_is_started_again_with_growing_waits(start_supervisor: StartSupervisor) -> None:
    proc, log = start_supervisor("exit")
    wait_for(lambda: sum(e.startswith("start") for e in events(log)) >= 4)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=10) in (0, 128 + signal.SIGTERM)
    stderr = proc.stderr.read().decode() if proc.stderr else ""
    waits = [line.rsplit("again in ", 1)[1] for line in stderr.splitlines() if "again in" in line]
    assert waits[:3] == ["0.1 s", "0.2 s", "0.4 s"], stderr
    assert "ended by itself with status 0" in stderr


def test_sigterm_stops_the_child_once_and_nothing_starts_again(start_supervisor: StartSupervisor) -> None:
    proc, log = start_supervisor("stay")
    wait_for(lambda: events(log) != [])
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=10) == 0
    time.sleep(0.3)
    assert events(log)[1:] == ["term"]
    assert sum(e.startswith("start") for e in events(log)) == 1


def test_sigint_asks_the_child_for_a_warm_shutdown(start_supervisor: StartSupervisor) -> None:
    proc, log = start_supervisor("stay")
    wait_for(lambda: events(log) != [])
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=10) == 0
    assert events(log)[1:] == ["term"], "SIGINT reaches the child as SIGTERM (warm), not as a second Ctrl-C"


def test_killing_the_supervisor_leaves_no_orphan_child(start_supervisor: StartSupervisor) -> None:
    proc, log = start_supervisor("stay")
    wait_for(lambda: events(log) != [])
    child_pid = int(events(log)[0].split()[1])
    proc.kill()
    proc.wait(timeout=10)
    wait_for(lambda: "term" in events(log))
    wait_for(lambda: not _alive(child_pid))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as stat:  # a zombie waiting for init to reap it has ended
            return stat.read().split(") ", 1)[1][0] != "Z"
    except FileNotFoundError:
        return False


def test_exit_status_of_a_killed_child_is_128_plus_the_signal() -> None:
    assert _exit_status(-signal.SIGKILL) == 128 + signal.SIGKILL
    assert _exit_status(3) == 3
