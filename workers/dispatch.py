"""How a wake-up reaches a worker: through Redis with Celery, or a thread pool in this process.

Both call the same task functions; both may fail to deliver (Redis down, process ending), which is
safe because the work itself is a database row the sweeper finds again.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol

from prm.config import Settings
from prm.errors import loggable_traceback

log = logging.getLogger(__name__)


class Dispatcher(Protocol):
    def enqueue(self, task_name: str, *args: int) -> None:
        """Deliver a wake-up for `task_name` with id arguments; raise if it cannot be handed over."""


class CeleryDispatcher:
    """Sends the task through the broker without waiting: a down Redis fails fast, the sweeper retries."""

    def enqueue(self, task_name: str, *args: int) -> None:
        from workers.celery_app import app

        app.send_task(task_name, args=list(args), retry=False)


class InProcessDispatcher:
    """Runs the task body on a small thread pool in this process (the embedded default)."""

    def __init__(self, threads: int) -> None:
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="prm-task")

    def enqueue(self, task_name: str, *args: int) -> None:
        import workers.tasks  # noqa: F401  (registers the tasks on the app)
        from workers.celery_app import app

        task = app.tasks[task_name]
        self._pool.submit(self._run, task_name, task.run, args)

    @staticmethod
    def _run(task_name: str, body: object, args: tuple[int, ...]) -> None:
        try:
            body(*args)  # type: ignore[operator]
        except Exception as exc:
            log.error("in-process task %s%s failed; its row stays due for the sweeper: %s", task_name, args,
                      loggable_traceback(exc))

    def shutdown(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


def dispatcher_for(settings: Settings) -> Dispatcher:
    if settings.uses_redis:
        from workers.celery_app import configure

        configure(settings)
        return CeleryDispatcher()
    return InProcessDispatcher(settings.embedded_threads)
