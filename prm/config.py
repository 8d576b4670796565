"""Settings, frozen and loaded once from PRM_* environment variables (and `.env` via the CLI).

A missing or malformed setting raises ConfigError naming the variable, so start-up can stop with one
clear line instead of a traceback.
"""

from __future__ import annotations

import base64
import binascii
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from prm.clock import Clock, clock_from_setting
from prm.errors import ConfigError


@dataclass(frozen=True)
class Settings:
    """Everything the product reads from its environment."""

    secret_key: str
    encryption_keys: tuple[str, ...]
    instance_dir: Path = Path("instance")
    database_url: str = ""
    redis_url: str | None = None
    public_url: str = "http://127.0.0.1:8000"
    now: str | None = None
    health_check_interval_s: float = 300.0
    sweep_interval_s: float = 5.0
    job_lease_s: float = 120.0
    http_timeout_s: float = 10.0
    embedded_threads: int = 4
    admin_idle_minutes: float = 30.0
    admin_absolute_hours: float = 12.0
    launch_max_hours: float = 12.0  # a sidebar's launch ends this long after it began, whatever its tokens say
    sync_page_size: int = 1000  # a search's `_count`, and the most resources one stored page holds
    sync_prep_helper: str = "on"  # on: a bulk first load parses and checks pages in a helper process | off
    writeback_batch_size: int = 50  # outbox rows per claim, and entries per batch/transaction Bundle
    writeback_bundles_in_flight: int = 2  # Bundles one drain has at the EHR at once (each its own rows)
    writeback_bundle: str = "auto"  # auto (from the capability profile) | batch | transaction | none
    writeback_max_attempts: int = 8  # then the row is dead, for IT to retry or discard
    writeback_fallbacks: str = "Task:Communication"  # what to write when the EHR refuses a type (a:b, ...)
    subscription_check_interval_s: float = 600.0  # how often each EHR's copies of our Subscriptions are checked
    subscription_heartbeat_s: int = 300  # the heartbeat asked of the EHR, so a silent hook shows as silent
    metrics_token: str | None = None  # the bearer token a Prometheus scrape of /metrics sends; None: /metrics is off
    clock: Clock = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.database_url:
            object.__setattr__(self, "database_url", f"sqlite:///{(self.instance_dir / 'prm.db').resolve()}")
        object.__setattr__(self, "clock", clock_from_setting(self.now))

    @property
    def uses_redis(self) -> bool:
        return bool(self.redis_url)

    @property
    def redirect_uri(self) -> str:
        """The one redirect URI registered with every EHR for user launches."""
        return f"{self.public_url}/launch/callback"

    @property
    def launch_url(self) -> str:
        return f"{self.public_url}/launch"


def _number(env: Mapping[str, str], name: str, default: float, minimum: float) -> float:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError as exc:
        raise ConfigError(f"{name} must be a number, got {raw!r}") from exc
    if value < minimum:
        raise ConfigError(f"{name} must be at least {minimum}, got {raw!r}")
    return value


def _choice(env: Mapping[str, str], name: str, default: str, allowed: tuple[str, ...]) -> str:
    value = env.get(name, default).strip().lower()
    if value not in allowed:
        raise ConfigError(f"{name} must be one of {', '.join(allowed)}, got {value!r}")
    return value


def _fallbacks(raw: str) -> str:
    """`Task:Communication` means "where Task writes are refused, write a Communication"; empty: no fallback."""
    for pair in filter(None, (p.strip() for p in raw.split(","))):
        wanted, _, instead = pair.partition(":")
        if not (wanted.isalpha() and instead.isalpha() and wanted[:1].isupper() and instead[:1].isupper()):
            raise ConfigError(f"PRM_WRITEBACK_FALLBACKS must look like Task:Communication, got {pair!r}")
    return raw.strip()


def _fernet_keys(raw: str) -> tuple[str, ...]:
    keys = tuple(k.strip() for k in raw.split(",") if k.strip())
    for key in keys:
        try:
            decoded = base64.urlsafe_b64decode(key.encode())
        except (binascii.Error, ValueError) as exc:
            raise ConfigError("PRM_ENCRYPTION_KEYS holds a key that is not url-safe base64") from exc
        if len(decoded) != 32:
            raise ConfigError(
                "PRM_ENCRYPTION_KEYS keys must be 32 bytes, url-safe base64 (make one with `prm keys new`)"
            )
    return keys


def _url(name: str, raw: str, schemes: tuple[str, ...]) -> str:
    parts = urlsplit(raw)
    if parts.scheme not in schemes or not (parts.netloc or parts.path):
        raise ConfigError(f"{name} must be a URL starting with {' or '.join(s + '://' for s in schemes)}")
    return raw


DEMO_CLOCK_FILE = "demo-clock"  # in the instance directory: the PRM_NOW of the demo that uses its database


def demo_clock(instance_dir: Path) -> str | None:
    """The clock `ehr-sandbox up` runs the demo on, kept beside the demo's database, else None.

    Why: the demo runs on the data set's clock, days behind today. A `prm` command in another shell that did
    not export the printed PRM_NOW read the same database by today's clock: every lag days long, every due
    date days past. Kept with the database, the clock is shared by whoever opens it; PRM_NOW set wins."""
    path = instance_dir / DEMO_CLOCK_FILE
    try:
        value = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ConfigError(f"{path} cannot be read: {exc}") from exc
    try:
        clock_from_setting(value)
    except (ConfigError, ValueError) as exc:
        raise ConfigError(f"{path} does not hold a PRM_NOW value ({exc}): remove it, or start the demo again") from exc
    return value or None


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    """Read PRM_* variables; raise ConfigError naming the first bad one."""
    env = os.environ if env is None else env
    secret = env.get("PRM_SECRET_KEY", "")
    if not secret:
        raise ConfigError("PRM_SECRET_KEY is not set (see .env.example; `scripts/start` writes one)")
    if len(secret) < 32:
        raise ConfigError("PRM_SECRET_KEY must be at least 32 characters")
    keys_raw = env.get("PRM_ENCRYPTION_KEYS", "")
    if not keys_raw:
        raise ConfigError("PRM_ENCRYPTION_KEYS is not set (see .env.example; `prm keys new` makes a key)")
    database_url = env.get("PRM_DATABASE_URL", "")
    if database_url:
        _url("PRM_DATABASE_URL", database_url, ("sqlite", "postgresql", "postgresql+psycopg"))
    redis_url = env.get("PRM_REDIS_URL") or None
    if redis_url:
        _url("PRM_REDIS_URL", redis_url, ("redis", "rediss"))
    public_url = _url("PRM_PUBLIC_URL", env.get("PRM_PUBLIC_URL", "http://127.0.0.1:8000"), ("http", "https"))
    instance_dir = Path(env.get("PRM_INSTANCE_DIR", "instance"))
    return Settings(
        secret_key=secret,
        encryption_keys=_fernet_keys(keys_raw),
        instance_dir=instance_dir,
        database_url=database_url,
        redis_url=redis_url,
        public_url=public_url.rstrip("/"),
        # the demo's clock belongs to the instance's own database, never to one named by PRM_DATABASE_URL
        now=env.get("PRM_NOW") or (None if database_url else demo_clock(instance_dir)),
        health_check_interval_s=_number(env, "PRM_HEALTH_CHECK_INTERVAL_S", 300.0, 1.0),
        sweep_interval_s=_number(env, "PRM_SWEEP_INTERVAL_S", 5.0, 0.2),
        job_lease_s=_number(env, "PRM_JOB_LEASE_S", 120.0, 1.0),
        http_timeout_s=_number(env, "PRM_HTTP_TIMEOUT_S", 10.0, 0.1),
        embedded_threads=int(_number(env, "PRM_EMBEDDED_THREADS", 4, 1)),
        admin_idle_minutes=_number(env, "PRM_ADMIN_IDLE_MINUTES", 30.0, 1.0),
        admin_absolute_hours=_admin_absolute_hours(env),
        launch_max_hours=_number(env, "PRM_LAUNCH_MAX_HOURS", 12.0, 0.01),
        sync_page_size=int(_number(env, "PRM_SYNC_PAGE_SIZE", 1000, 10)),
        sync_prep_helper=_choice(env, "PRM_SYNC_PREP_HELPER", "on", ("on", "off")),
        writeback_batch_size=int(_number(env, "PRM_WRITEBACK_BATCH_SIZE", 50, 1)),
        writeback_bundles_in_flight=int(_number(env, "PRM_WRITEBACK_BUNDLES_IN_FLIGHT", 2, 1)),
        writeback_bundle=_choice(env, "PRM_WRITEBACK_BUNDLE", "auto", ("auto", "batch", "transaction", "none")),
        writeback_max_attempts=int(_number(env, "PRM_WRITEBACK_MAX_ATTEMPTS", 8, 1)),
        writeback_fallbacks=_fallbacks(env.get("PRM_WRITEBACK_FALLBACKS", "Task:Communication")),
        subscription_check_interval_s=_number(env, "PRM_SUBSCRIPTION_CHECK_INTERVAL_S", 600.0, 1.0),
        subscription_heartbeat_s=int(_number(env, "PRM_SUBSCRIPTION_HEARTBEAT_S", 300, 10)),
        metrics_token=_metrics_token(env.get("PRM_METRICS_TOKEN", "")),
    )


def _metrics_token(raw: str) -> str | None:
    """Off when unset; a token short enough to guess would open sync health to anyone who can reach the app."""
    token = raw.strip()
    if token and len(token) < 32:
        raise ConfigError("PRM_METRICS_TOKEN must be at least 32 characters (e.g. `openssl rand -hex 32`)")
    return token or None


def _admin_absolute_hours(env: Mapping[str, str]) -> float:
    """An admin session's hard limit; an idle limit longer than it would never apply, so refuse that."""
    hours = _number(env, "PRM_ADMIN_ABSOLUTE_HOURS", 12.0, 0.1)
    if _number(env, "PRM_ADMIN_IDLE_MINUTES", 30.0, 1.0) > hours * 60:
        raise ConfigError("PRM_ADMIN_IDLE_MINUTES must not exceed PRM_ADMIN_ABSOLUTE_HOURS (in minutes)")
    return hours
