"""A helper process that parses, checks and maps bulk pages for a worker (workers/page_prep.py), so a first
load uses a second core: the worker downloads and stores pages while the helper prepares the next ones.

Started with subprocess, not multiprocessing: Celery's prefork children are daemonic, and multiprocessing
forbids daemonic processes children of their own. It speaks over its stdin and stdout in length-prefixed
pickle frames; both ends are this module and the pipes are private to the two processes, so unpickling
trusts nothing from outside. `Inline` does the same work in the worker's own process (PRM_SYNC_PREP_HELPER=0).

    python -m workers.prep_helper Patient Encounter   # what the worker starts; reads frames until stdin closes
"""

from __future__ import annotations

import contextlib
import fcntl
import gc
import logging
import pickle
import queue
import struct
import subprocess
import sys
import threading
import traceback
from collections import deque
from collections.abc import Collection
from types import TracebackType
from typing import IO, Any, Protocol

from fhir_mappings import r4_schema
from prm.errors import TransientEhrError
from workers.page_prep import PreparedPage, Target, prepare_lines

log = logging.getLogger(__name__)
FRAME = struct.Struct(">Q")
Lines = list[tuple[int, bytes]]


class Preparer(Protocol):
    """Pages go in with `submit` and come back, prepared (and encoded for `target`, when set), from `result` in
    the same order."""

    target: Target | None

    def submit(self, resource_type: str, lines: Lines) -> None: ...

    def result(self) -> PreparedPage: ...

    def ready(self) -> bool:
        """`result()` would not wait: the oldest page is prepared (or preparing it is this process's job)."""

    def warm(self) -> None:
        """Compile this process's edge checks now, in the background (once; later calls do nothing)."""

    def __enter__(self) -> Preparer: ...

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 trace: TracebackType | None) -> None: ...


class Inline:
    """Prepare in this process (no helper): for small loads and where a second process is not wanted."""

    def __init__(self, resource_types: Collection[str] = (), target: Target | None = None) -> None:
        self.target = target
        self._waiting: deque[tuple[str, Lines]] = deque()
        self._warmup = Warmup(resource_types)

    def submit(self, resource_type: str, lines: Lines) -> None:
        self._waiting.append((resource_type, lines))

    def result(self) -> PreparedPage:
        return prepare_lines(*self._waiting.popleft(), self.target)

    def ready(self) -> bool:
        return True

    def warm(self) -> None:
        self._warmup.start()

    def __enter__(self) -> Inline:
        return self

    def __exit__(self, *_: object) -> None:
        self._waiting.clear()


class Helper:
    """The helper process. A feeder thread writes requests and a reader thread collects results, so neither side
    ever blocks on a full pipe while the other waits for it, and the worker can see whether a result is in."""

    def __init__(self, resource_types: Collection[str] = (), target: Target | None = None) -> None:
        """`resource_types`: the helper compiles their edge checks as it starts (while the EHR still writes the
        export), not on the first page of each. `target`: pages come back encoded for it."""
        self.target = target
        self._warmup = Warmup(resource_types)  # this process prepares pages too, whenever the helper is behind
        self._process = subprocess.Popen([sys.executable, "-m", "workers.prep_helper", *resource_types],  # noqa: S603 (our streams' type names)
                                         stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        if self._process.stdin is None or self._process.stdout is None:
            raise RuntimeError("the page helper started without pipes")
        self._stdin, self._stdout = self._process.stdin, self._process.stdout
        for pipe in (self._stdin, self._stdout):
            widen(pipe)
        self._requests: queue.Queue[bytes | None] = queue.Queue()
        self._results: queue.Queue[bytes | None] = queue.Queue()  # frames; None once the helper's output ends
        self._feeder = threading.Thread(target=self._feed, name="prep-feeder", daemon=True)
        self._reader = threading.Thread(target=self._read, name="prep-reader", daemon=True)
        self._feeder.start()
        self._reader.start()

    def _feed(self) -> None:
        try:
            while (request := self._requests.get()) is not None:
                write_frame(self._stdin, request)
        except OSError:  # the helper died; result() reports it
            log.warning("page helper stopped taking pages")
        finally:
            with contextlib.suppress(OSError):  # already closed by a helper that died
                self._stdin.close()

    def _read(self) -> None:
        try:
            while (frame := read_frame(self._stdout)) is not None:
                self._results.put(frame)
        except (OSError, ValueError):  # the pipe closed under us: the helper is gone
            log.warning("page helper output ended")
        finally:
            self._results.put(None)

    def submit(self, resource_type: str, lines: Lines) -> None:
        self._requests.put(pickle.dumps((resource_type, lines, self.target), protocol=pickle.HIGHEST_PROTOCOL))

    def ready(self) -> bool:
        return not self._results.empty()

    def warm(self) -> None:
        self._warmup.start()

    def result(self) -> PreparedPage:
        frame = self._results.get()
        if frame is None:
            self._results.put(None)  # every later call reports it too
            raise TransientEhrError(f"the page helper exited (code {self._process.poll()})")
        outcome, value = pickle.loads(frame)  # noqa: S301 - our own helper, over our own pipe
        if outcome != "ok":
            raise RuntimeError(f"the page helper failed:\n{value}")
        page: PreparedPage = value
        return page

    def __enter__(self) -> Helper:
        return self

    def __exit__(self, kind: type[BaseException] | None, *_: object) -> None:
        if kind is not None:  # the load failed: pages may be unread, so the helper could be blocked writing
            self._process.kill()
        self._requests.put(None)
        self._feeder.join(timeout=10)
        try:
            self._process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        self._reader.join(timeout=10)  # the helper has exited, so its output has ended
        self._stdout.close()


def preparer(use_helper: bool, resource_types: Collection[str], target: Target | None = None) -> Preparer:
    """A helper process, or this process. The helper compiles the edge checks of `resource_types` as it starts;
    this process compiles them when `warm()` is called (a bulk load calls it once the EHR is writing the
    export), else on each type's first page. Pages come back encoded for `target` when one is given."""
    if use_helper:
        return Helper(resource_types, target)
    return Inline(resource_types, target)


class Warmup:
    """Compiles this process's edge checks on a background thread, once, when started.

    Why not at once: compiling holds the GIL for a few hundred milliseconds (the R4 schema is parsed), and a
    worker that compiled while it kicked off an export sent its first status poll ~0.6 s late; every later
    poll, and so the manifest, came as late. Started between polls, it takes time from a thread that sleeps."""

    def __init__(self, resource_types: Collection[str]) -> None:
        self._resource_types = list(resource_types)
        self.thread: threading.Thread | None = None

    def start(self) -> None:
        if self.thread is None:
            self.thread = threading.Thread(target=r4_schema.prepare, args=(self._resource_types,),
                                           name="prep-compile", daemon=True)
            self.thread.start()


PIPE_BYTES = 1 << 20  # a page's frame in one write (Linux lets any process widen a pipe to 1 MiB)


def widen(pipe: IO[bytes]) -> None:
    """Make the pipe hold a whole page (~0.8 MB of Encounters) instead of 64 KiB. Why: the worker's feeder and
    reader threads need the GIL for every chunk they move, and while the worker's own thread prepares a page
    each waits up to the switch interval (5 ms) for it: a page in 64 KiB chunks reached the helper ~13 waits
    late, and the helper sat idle half of a bulk load. Where the system does not allow it, the pipe stays as
    it is (slower, not wrong)."""
    set_size = getattr(fcntl, "F_SETPIPE_SZ", None)
    if set_size is None:
        return
    try:
        fcntl.fcntl(pipe.fileno(), set_size, PIPE_BYTES)
    except OSError as exc:
        log.info("pipe to the page helper left at its size: %s", exc)


def write_frame(stream: IO[bytes], payload: bytes) -> None:
    stream.write(FRAME.pack(len(payload)))
    stream.write(payload)
    stream.flush()


def read_frame(stream: IO[bytes]) -> bytes | None:
    head = stream.read(FRAME.size)
    if len(head) < FRAME.size:
        return None
    (size,) = FRAME.unpack(head)
    body = stream.read(size)
    return body if len(body) == size else None


def main() -> None:
    """Prepare pages until stdin closes. The arguments are resource types whose edge checks to compile first.
    Objects from start-up are frozen: collections walk only the page."""
    r4_schema.prepare(sys.argv[1:])
    gc.freeze()
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    while (frame := read_frame(stdin)) is not None:
        resource_type, lines, target = pickle.loads(frame)  # noqa: S301 - from the worker that started us
        reply: tuple[str, Any]
        try:
            reply = ("ok", prepare_lines(resource_type, lines, target))
        except Exception:  # a bug, not bad data (prepare_lines sets bad resources aside): the worker raises it
            reply = ("error", traceback.format_exc())
        write_frame(stdout, pickle.dumps(reply, protocol=pickle.HIGHEST_PROTOCOL))


if __name__ == "__main__":
    main()
