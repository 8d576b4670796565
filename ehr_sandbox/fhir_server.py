"""Runs a real FHIR R4 server (sekmet-fhir) as a child process on a throwaway db, loaded from a cached template."""
from __future__ import annotations

import contextlib
import gzip
import hashlib
import importlib.metadata
import json
import logging
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType

import requests

from ehr_sandbox.topics import TOPICS

log = logging.getLogger(__name__)

DEFAULT_DATASET = Path(__file__).parent / "data" / "sandbox"
TYPE_ORDER = ["Organization", "Location", "Practitioner", "PractitionerRole", "Patient", "RelatedPerson",
              "Appointment", "Encounter"]
CONFIG = """\
# throwaway sekmet-fhir server started by ehr_sandbox.fhir_server
base_url: {base_url}
host: 127.0.0.1
port: {port}
data_dir: {workdir}/data
db_path: {db}
own_private_key_path: {workdir}/keys/sekmet_private.pem
log_inbound: false
simulator:
  enabled: false
validation:
  inbound: strict
"""


class FhirServerError(RuntimeError):
    """The FHIR server did not start, or refused the data set."""


def sekmet_executable() -> str:
    candidate = Path(sys.executable).parent / "sekmet"
    if candidate.exists():
        return str(candidate)
    found = shutil.which("sekmet")
    if not found:
        raise FhirServerError("the `sekmet` command (pip install sekmet-fhir==0.1.1) is not installed")
    return found


def default_cache_dir() -> Path:
    env = os.environ.get("EHR_SANDBOX_CACHE")
    if env:
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "fhir-prm" / "ehr_sandbox"


def dataset_bundles(data_dir: Path) -> Iterator[bytes]:
    """Transaction bundles of the data set: the prepared bundles/ files, else built from the NDJSON files."""
    bundle_dir = data_dir / "bundles"
    files = sorted(bundle_dir.glob("*.json*")) if bundle_dir.is_dir() else []
    if files:
        for f in files:
            raw = f.read_bytes()
            yield gzip.decompress(raw) if f.suffix == ".gz" else raw
        return
    entries: list[str] = []
    for rtype in TYPE_ORDER:  # 500 entries a bundle; linked Patients may straddle, which sekmet does not mind
        path = data_dir / f"{rtype}.ndjson"
        if not path.exists():
            continue
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                rid = json.loads(line)["id"]
                entries.append(f'{{"resource":{line},"request":{{"method":"PUT","url":"{rtype}/{rid}"}}}}')
            if len(entries) >= 500:
                yield _bundle(entries)
                entries = []
    if entries:
        yield _bundle(entries)


def _bundle(entries: list[str]) -> bytes:
    return ('{"resourceType":"Bundle","type":"transaction","entry":[' + ",".join(entries) + "]}").encode()


def dataset_key(data_dir: Path) -> str:
    """Content hash of the data set plus the sekmet version (stored resources carry no base URL)."""
    h = hashlib.sha256(importlib.metadata.version("sekmet-fhir").encode())
    for f in sorted(p for p in data_dir.rglob("*") if p.is_file() and (p.suffix in (".ndjson", ".gz", ".json"))):
        h.update(str(f.relative_to(data_dir)).encode())
        h.update(f.read_bytes())
    return h.hexdigest()[:24]


STATE_KEY = "dataset.key"  # in a state directory: which data set (and sekmet) its database was made from


class FhirServer:
    """sekmet serve on 127.0.0.1:<internal_port>, every URL it writes pointing at `public_base` (the EHR proxy)."""

    def __init__(self, internal_port: int, public_base: str, dataset: str | Path | None = None,
                 cache_dir: str | Path | None = None, use_cache: bool = True, startup_timeout_s: float = 30.0,
                 state_dir: str | Path | None = None):
        """`state_dir`: keep the FHIR database there from one start to the next (a demo's writes stay, as in a
        real EHR), started again from the data set only when the data set changed; None: a throwaway one."""
        self.internal_port = internal_port
        self.public_base = public_base.rstrip("/")
        self.dataset = Path(dataset) if dataset else None
        self.cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
        self.use_cache = use_cache
        self.state_dir = Path(state_dir).resolve() if state_dir else None  # sekmet runs with it as its cwd
        self.startup_timeout_s = startup_timeout_s
        self.workdir: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_fh: object = None
        self._empty = True

    @property
    def internal_url(self) -> str:
        return f"http://127.0.0.1:{self.internal_port}/fhir"

    @property
    def db_path(self) -> Path:
        if self.workdir is None:
            raise FhirServerError("the FHIR server is not started")
        return self.workdir / "sekmet.db"

    # ---------------- lifecycle ----------------

    def start(self) -> FhirServer:
        """Start with an empty database, or loaded with `dataset` (from the template cache when it exists); with
        a state directory, with the database kept there when it holds the same data set."""
        state_key = None  # the data set's hash: computed once a start, as hashing reads every file of it
        if self.state_dir is not None:
            state_key = self._data_key()
            self.workdir = self._kept_or_emptied(self.state_dir, state_key)
        else:
            self.workdir = Path(tempfile.mkdtemp(prefix="ehr-sandbox-fhir-"))
        (self.workdir / "settings.yaml").write_text(CONFIG.format(
            base_url=self.public_base, port=self.internal_port, workdir=self.workdir, db=self.db_path))
        if self.dataset is not None and self._empty:
            template = self._template(self.dataset)
            if template is not None:
                self._seed(template)
        self._spawn()
        if self.dataset is not None and self._empty:
            self.load(self.dataset)
        if state_key is not None:
            (self.workdir / STATE_KEY).write_text(state_key)
        return self

    def _kept_or_emptied(self, state: Path, state_key: str) -> Path:
        """The state directory, its database kept when it was made from this data set (and this sekmet); else
        emptied, so the data set is loaded afresh: what the demo wrote to the old one is gone."""
        state.mkdir(parents=True, exist_ok=True)
        key_file = state / STATE_KEY
        kept = key_file.exists() and key_file.read_text().strip() == state_key
        if kept and (state / "sekmet.db").exists():
            self._empty = False
            return state
        if (state / "sekmet.db").exists():
            log.warning("the sandbox EHR's data set changed: %s starts again from it", state)
        for name in ("sekmet.db", "sekmet.db-wal", "sekmet.db-shm", STATE_KEY):
            (state / name).unlink(missing_ok=True)
        return state

    def _data_key(self) -> str:
        return dataset_key(self.dataset) if self.dataset is not None else "empty"

    def load(self, data_dir: str | Path = DEFAULT_DATASET) -> None:
        """Load a data set (transaction bundles of PUTs, so reloading is idempotent); cache a template after."""
        data_dir = Path(data_dir)
        template = self._template(data_dir) if self._empty else None
        if template is not None:  # same result as loading, in ~1 s instead of ~9 s
            self._kill()
            self._seed(template)
            self._spawn()
            return
        t0 = time.monotonic()
        with requests.Session() as http:
            for n, body in enumerate(dataset_bundles(data_dir), 1):
                resp = http.post(self.internal_url, data=body, timeout=300, headers={
                    "Content-Type": "application/fhir+json", "Accept": "application/fhir+json",
                    "Prefer": "return=minimal"})
                if resp.status_code != 200:
                    raise FhirServerError(f"bundle {n} of {data_dir}: HTTP {resp.status_code} {resp.text[:1000]}")
        log.info("loaded %s in %.1fs", data_dir, time.monotonic() - t0)
        if self._empty and self.use_cache:
            self._save_template(data_dir)
        self._empty = False

    def stop(self) -> None:
        self._kill()
        if self.workdir is not None and self.state_dir is None:
            shutil.rmtree(self.workdir, ignore_errors=True)
        self.workdir = None
        self._empty = True

    def __enter__(self) -> FhirServer:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def log_tail(self, lines: int = 30) -> str:
        path = self.workdir / "sekmet.log" if self.workdir else None
        if path is None or not path.exists():
            return ""
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    # ---------------- internals ----------------

    def _spawn(self) -> None:
        if self.workdir is None:
            raise FhirServerError("the FHIR server is not started")
        env = {k: v for k, v in os.environ.items() if not k.startswith("SEKMET_")}
        log_fh = open(self.workdir / "sekmet.log", "ab")  # noqa: SIM115 - closed in _kill
        self._log_fh = log_fh
        # its own process group: stop() kills the whole group, whatever sekmet forks
        self._proc = subprocess.Popen(
            [sekmet_executable(), "serve", "--config", str(self.workdir / "settings.yaml")],
            cwd=self.workdir, env=env, stdout=log_fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True)
        deadline = time.monotonic() + self.startup_timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise FhirServerError(f"sekmet exited with {self._proc.returncode}:\n{self.log_tail()}")
            try:
                if requests.get(f"{self.internal_url}/metadata", timeout=2).status_code == 200:
                    self._install_topics()
                    return
            except requests.RequestException:
                pass
            time.sleep(0.1)
        self._kill()
        raise FhirServerError(f"sekmet did not answer {self.internal_url}/metadata within "
                              f"{self.startup_timeout_s:.0f}s; log tail:\n{self.log_tail()}")

    def _install_topics(self) -> None:
        """PUT the sandbox's own Subscription topics (the same ids every time, so restarts change nothing)."""
        for basic in TOPICS:
            response = requests.put(f"{self.internal_url}/Basic/{basic['id']}", json=basic, timeout=30,
                                    headers={"Content-Type": "application/fhir+json", "Prefer": "return=minimal"})
            if response.status_code not in (200, 201):
                raise FhirServerError(f"the sandbox topic {basic['id']} was refused: HTTP {response.status_code} "
                                      f"{response.text[:500]}")

    def _kill(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=5)
            except ProcessLookupError:
                pass
        if proc is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):  # stragglers a fork left
                os.killpg(proc.pid, signal.SIGKILL)
        fh, self._log_fh = self._log_fh, None
        if fh is not None:
            fh.close()  # type: ignore[attr-defined]

    def _template(self, data_dir: Path) -> Path | None:
        if not self.use_cache:
            return None
        path = self.cache_dir / f"sekmet-{dataset_key(data_dir)}.sqlite"
        return path if path.exists() else None

    def _seed(self, template: Path) -> None:
        shutil.copyfile(template, self.db_path)
        self._empty = False

    def _save_template(self, data_dir: Path) -> None:
        """sqlite's online backup: a consistent copy while sekmet keeps running (WAL included)."""
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        final = self.cache_dir / f"sekmet-{dataset_key(data_dir)}.sqlite"
        tmp = final.with_suffix(f".{os.getpid()}.tmp")
        src = sqlite3.connect(self.db_path)
        dst = sqlite3.connect(tmp)
        try:
            src.backup(dst)
            dst.execute("PRAGMA journal_mode=DELETE")
        finally:
            dst.close()
            src.close()
        os.replace(tmp, final)  # atomic: parallel test runs never see half a template
