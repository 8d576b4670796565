"""Settings: every bad setting is named in one line; defaults give the embedded SQLite file."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from prm.config import load_settings
from prm.errors import ConfigError
from tests.support.settings import TEST_KEY, TEST_SECRET

BASE = {"PRM_SECRET_KEY": TEST_SECRET, "PRM_ENCRYPTION_KEYS": TEST_KEY}


def test_defaults_are_the_embedded_sqlite_file_and_no_redis(tmp_path: Path) -> None:
    settings = load_settings({**BASE, "PRM_INSTANCE_DIR": str(tmp_path)})
    assert settings.database_url == f"sqlite:///{(tmp_path / 'prm.db').resolve()}"
    assert settings.uses_redis is False
    assert settings.metrics_token is None, "/metrics is off until IT sets a token"
    assert settings.redirect_uri == "http://127.0.0.1:8000/launch/callback"


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({}, "PRM_SECRET_KEY"),
        ({"PRM_SECRET_KEY": "short"}, "PRM_SECRET_KEY"),
        ({"PRM_ENCRYPTION_KEYS": ""}, "PRM_ENCRYPTION_KEYS"),
        ({"PRM_ENCRYPTION_KEYS": "not-a-key"}, "PRM_ENCRYPTION_KEYS"),
        ({"PRM_DATABASE_URL": "mysql://x"}, "PRM_DATABASE_URL"),
        ({"PRM_REDIS_URL": "http://127.0.0.1:6379"}, "PRM_REDIS_URL"),
        ({"PRM_PUBLIC_URL": "127.0.0.1:8000"}, "PRM_PUBLIC_URL"),
        ({"PRM_SWEEP_INTERVAL_S": "soon"}, "PRM_SWEEP_INTERVAL_S"),
        ({"PRM_HEALTH_CHECK_INTERVAL_S": "0"}, "PRM_HEALTH_CHECK_INTERVAL_S"),
        ({"PRM_NOW": "2026-11-20T12:00:00"}, "time zone"),
        ({"PRM_NOW": "yesterday"}, "ISO 8601"),
        ({"PRM_WRITEBACK_BUNDLE": "zip"}, "PRM_WRITEBACK_BUNDLE"),
        ({"PRM_WRITEBACK_BATCH_SIZE": "0"}, "PRM_WRITEBACK_BATCH_SIZE"),
        ({"PRM_WRITEBACK_BUNDLES_IN_FLIGHT": "0"}, "PRM_WRITEBACK_BUNDLES_IN_FLIGHT"),
        ({"PRM_WRITEBACK_FALLBACKS": "Task->Communication"}, "PRM_WRITEBACK_FALLBACKS"),
        ({"PRM_METRICS_TOKEN": "guessable"}, "PRM_METRICS_TOKEN"),
    ],
)
def test_a_bad_setting_is_named(env: dict[str, str], named: str) -> None:
    merged = {**BASE, **env} if env else {}
    with pytest.raises(ConfigError) as caught:
        load_settings(merged)
    assert named in str(caught.value)
    assert "\n" not in str(caught.value)


def test_postgres_and_redis_urls_are_accepted() -> None:
    settings = load_settings({**BASE, "PRM_DATABASE_URL": "postgresql://prm:prm@127.0.0.1/prm",
                              "PRM_REDIS_URL": "redis://127.0.0.1:6379/0"})
    assert settings.uses_redis
    assert settings.database_url.startswith("postgresql://")


def test_prm_now_freezes_the_clock() -> None:
    settings = load_settings({**BASE, "PRM_NOW": "2026-11-20T12:00:00Z"})
    assert settings.clock() == datetime(2026, 11, 20, 12, tzinfo=UTC)
    assert settings.clock() == settings.clock()


def test_the_demos_clock_kept_beside_its_database_is_shared_unless_prm_now_says_otherwise(tmp_path: Path) -> None:
    """`ehr-sandbox up` keeps its clock in the instance directory: a `prm` command in another shell reads the
    demo's database on the demo's clock, not today's. PRM_NOW wins; a database named elsewhere ignores it."""
    instance = {**BASE, "PRM_INSTANCE_DIR": str(tmp_path)}
    assert load_settings(instance).now is None, "no demo: today's clock"
    (tmp_path / "demo-clock").write_text("2026-11-20T12:00:00Z\n", encoding="utf-8")
    assert load_settings(instance).clock() == datetime(2026, 11, 20, 12, tzinfo=UTC)
    assert load_settings({**instance, "PRM_NOW": "2026-11-21T08:00:00Z"}).clock() == datetime(2026, 11, 21, 8,
                                                                                               tzinfo=UTC)
    elsewhere = {**instance, "PRM_DATABASE_URL": "postgresql+psycopg://prm:prm@127.0.0.1:5432/prm"}
    assert load_settings(elsewhere).now is None, "not the demo's database"
    (tmp_path / "demo-clock").write_text("next tuesday\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="demo-clock does not hold a PRM_NOW value"):
        load_settings(instance)


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"PRM_ADMIN_IDLE_MINUTES": "half an hour"}, "PRM_ADMIN_IDLE_MINUTES"),
        ({"PRM_ADMIN_IDLE_MINUTES": "0"}, "PRM_ADMIN_IDLE_MINUTES"),
        ({"PRM_ADMIN_ABSOLUTE_HOURS": "-1"}, "PRM_ADMIN_ABSOLUTE_HOURS"),
        ({"PRM_ADMIN_IDLE_MINUTES": "90", "PRM_ADMIN_ABSOLUTE_HOURS": "1"}, "PRM_ADMIN_IDLE_MINUTES"),
    ],
)
def test_admin_session_limits_are_validated(env: dict[str, str], named: str) -> None:
    with pytest.raises(ConfigError, match=named):
        load_settings({**BASE, **env})
    defaults = load_settings(BASE)
    assert (defaults.admin_idle_minutes, defaults.admin_absolute_hours) == (30.0, 12.0)
