"""Settings for tests: fixed keys, the data set's frozen "now", and any overrides."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prm.config import Settings

DATASET_NOW = "2026-11-20T12:00:00Z"
TEST_SECRET = "test-secret-key-that-is-long-enough-0123456789"
TEST_KEY = "u2jvqRk3oMXNU3cNRBQUXtOUjX4-wW3AnOXdmZtRVPU="
METRICS_TOKEN = "metrics-token-0123456789-abcdefghijklmnop"  # what the tests' Prometheus scrape sends


def make_settings(database_url: str, instance_dir: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "secret_key": TEST_SECRET, "encryption_keys": (TEST_KEY,), "instance_dir": instance_dir,
        "database_url": database_url, "now": DATASET_NOW,
    }
    values.update(overrides)
    return Settings(**values)


def env_for(database_url: str, instance_dir: Path, **extra: str) -> dict[str, str]:
    """The PRM_* environment for a subprocess (`prm serve`, `prm worker`, ...)."""
    env = {
        "PRM_SECRET_KEY": TEST_SECRET, "PRM_ENCRYPTION_KEYS": TEST_KEY, "PRM_DATABASE_URL": database_url,
        "PRM_INSTANCE_DIR": str(instance_dir), "PRM_NOW": DATASET_NOW,
    }
    env.update(extra)
    return env
