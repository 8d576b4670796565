"""Real processes the integration tests start and stop: Redis, `prm serve`, `prm worker`, `prm beat`."""

from __future__ import annotations

import os
import pty
import select
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import requests

from tests.support.ports import wait_for_port

BIN = Path(sys.executable).parent


class Process:
    """A child in its own process group, its output in a log file the failure message can quote."""

    def __init__(self, name: str, argv: list[str], log_dir: Path, env: dict[str, str] | None = None,
                 cwd: Path | None = None) -> None:
        self.name = name
        self.argv = argv
        self.env = {**os.environ, **(env or {})}
        self.cwd = cwd
        self.log_path = log_dir / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Process:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(self.argv, stdout=log, stderr=subprocess.STDOUT, env=self.env,
                                         cwd=self.cwd, start_new_session=True)
        return self

    def log_tail(self, lines: int = 40) -> str:
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 15.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            os.killpg(self.proc.pid, sig)
            self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=5)
        except ProcessLookupError:
            pass


class RedisServer(Process):
    """A private redis-server on its own port, so stopping it never touches the machine's Redis."""

    def __init__(self, port: int, log_dir: Path) -> None:
        binary = shutil.which("redis-server") or "/usr/bin/redis-server"
        super().__init__(f"redis-{port}", [binary, "--bind", "127.0.0.1", "--port", str(port), "--save", "",
                                           "--appendonly", "no"], log_dir)
        self.port = port
        self.url = f"redis://127.0.0.1:{port}/0"

    def start(self) -> RedisServer:
        super().start()
        wait_for_port(self.port)
        return self


def stop_all(processes: list[Process], redis: RedisServer | None = None,
             tails: dict[str, int] | None = None) -> None:
    """Stop the processes, then Redis; then print each one's log tail (30 lines unless `tails` names it), so a
    failing test shows what they said."""
    for process in processes:
        process.stop()
    if redis is not None:
        redis.stop()
    for process in processes:
        print(f"--- {process.name} ---\n{process.log_tail((tails or {}).get(process.name, 30))}")


def run_prm(*args: str, env: dict[str, str], cwd: Path, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """`prm ARGS` to its end, with only the PRM_* settings given (none inherited from this process)."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("PRM_")}
    return subprocess.run([str(BIN / "prm"), *args], env={**clean, **env}, cwd=cwd, capture_output=True, text=True,
                          input=stdin, timeout=60, check=False)


def run_in_terminal(argv: list[str], env: dict[str, str], cwd: Path, timeout_s: float = 60.0) -> tuple[int, str]:
    """Run `argv` to its end with a pseudo-terminal for its output, as a person at a shell runs it (a progress
    bar draws only on a terminal); its exit code and everything it wrote, carriage returns and all."""
    controller, terminal = pty.openpty()
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=terminal, stderr=terminal, env=env, cwd=cwd,
                            start_new_session=True)
    os.close(terminal)
    written = bytearray()
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            if time.monotonic() > deadline:
                proc.kill()
                raise TimeoutError(f"{argv} still running after {timeout_s} s:\n{written.decode(errors='replace')}")
            ready, _, _ = select.select([controller], [], [], 0.5)
            if not ready:
                continue
            try:
                chunk = os.read(controller, 65536)
            except OSError:  # EIO: every end of the terminal in the child is closed
                break
            if not chunk:
                break
            written += chunk
    finally:
        os.close(controller)
    return proc.wait(timeout=10), written.decode(errors="replace")


def prm_process(name: str, args: list[str], log_dir: Path, env: dict[str, str], cwd: Path) -> Process:
    return Process(name, [str(BIN / "prm"), *args], log_dir, env=env, cwd=cwd)


def wait_http_ok(url: str, timeout_s: float = 30.0, process: Process | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    last = ""
    while time.monotonic() < deadline:
        if process is not None and not process.alive():
            raise RuntimeError(f"{process.name} exited:\n{process.log_tail()}")
        try:
            response = requests.get(url, timeout=2)
            if response.status_code == 200:
                return
            last = f"HTTP {response.status_code}"
        except requests.RequestException as exc:
            last = type(exc).__name__
        time.sleep(0.2)
    tail = process.log_tail() if process else ""
    raise TimeoutError(f"{url} not OK after {timeout_s} s ({last})\n{tail}")


def wait_until(predicate, timeout_s: float, interval_s: float = 0.25, what: str = "condition") -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval_s)
    raise TimeoutError(f"{what} not met after {timeout_s} s")
