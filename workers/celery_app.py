"""The Celery application: Redis carries wake-ups (ids only, JSON); beat wakes the sweeper.

With no PRM_REDIS_URL nothing here connects anywhere: the embedded runner calls the same task
functions in-process (workers.embedded).
"""

from __future__ import annotations

from celery import Celery

from prm.config import Settings

app = Celery("fhir_prm", include=["workers.tasks"])
app.conf.update(
    task_serializer="json",
    accept_content=["json"],
    result_serializer="json",
    task_ignore_result=True,
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    worker_prefetch_multiplier=1,
    worker_hijack_root_logger=False,
    broker_connection_retry_on_startup=True,
    broker_transport_options={"visibility_timeout": 3600},
    timezone="UTC",
    enable_utc=True,
)


def configure(settings: Settings) -> Celery:
    """Point the app at the settings' Redis and schedule the sweeper every PRM_SWEEP_INTERVAL_S.

    Idempotent: a task building its context inside a worker must not reconfigure the broker the
    worker is already connected to (changing it under a live connection pool breaks publishing).
    """
    if app.conf.broker_url == settings.redis_url and "sweep-due-work" in (app.conf.beat_schedule or {}):
        return app
    app.conf.update(
        broker_url=settings.redis_url,
        beat_schedule={
            "sweep-due-work": {"task": "prm.sweep_due_work", "schedule": settings.sweep_interval_s},
        },
        beat_schedule_filename=str(settings.instance_dir / "celerybeat-schedule"),
    )
    return app
