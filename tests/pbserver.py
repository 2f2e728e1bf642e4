"""Run a real Pillarbox for tests: a data dir made by ``init``, a server on free ports.

``make_settings`` writes a dev-profile data dir with every listener on 127.0.0.1 port 0
(the kernel picks free ports, so parallel tests never collide) and applies config overrides.
The expensive material (CA, server certificate, DKIM keys) is made once per test process
and copied, so a test pays milliseconds, not a key generation.

``RunningServer`` runs the real ``app.Server`` in a background thread with its own event
loop, so tests drive it with ordinary blocking clients (smtplib, imaplib, imapclient) or
their own asyncio loop, over real sockets. ``SubprocessServer`` runs ``pillarbox serve``
as a separate process, for signals, restarts and kill -9.
"""

from __future__ import annotations

import asyncio
import atexit
import functools
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pillarbox import config
from pillarbox.auth.passwords import hash_password
from pillarbox.cli.init import PROD_LISTEN, InitOptions, initialize
from pillarbox.config import Settings
from pillarbox.store.accounts import open_accounts

# PILLARBOX_TEST_MAILSTORE=memory: every RunningServer keeps mail in pillarbox.memstore
# instead of Maildir + SQLite (issue 18: the IMAP and POP3 suites prove the store seam);
# =postgresql: in pillarbox.pgmail, its index in a database of this process's own test
# PostgreSQL (tests/pg.py), one database per data dir (issue 16); =postgresql-s3: the same
# with the bodies in S3 (a moto server, tests/s3server.py). Read here only; tests
# that need the SQLite files are marked ``on_disk`` and skipped then.
MAILSTORE = os.environ.get("PILLARBOX_TEST_MAILSTORE", "maildir")
DOMAIN = "example.test"
HOSTNAME = "mail.example.test"
PASSWORD = "correct horse battery"


# -- tiny TOML writer (tomllib only reads) --------------------------------------------------


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str | Path):
        text = str(value)
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {value!r} as TOML")


def dump_toml(data: Mapping[str, Any]) -> str:
    lines = [f"{k} = {_toml_value(v)}" for k, v in data.items() if not isinstance(v, dict)]
    for key, table in data.items():
        if isinstance(table, dict):
            lines.append(f"\n[{key}]")
            lines += [f"{k} = {_toml_value(v)}" for k, v in table.items()]
    return "\n".join(lines) + "\n"


def merge(base: dict[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    result = dict(base)
    for key, value in overrides.items():
        if isinstance(value, Mapping) and isinstance(result.get(key), dict):
            result[key] = merge(result[key], value)
        else:
            result[key] = value
    return result


# -- data dirs -------------------------------------------------------------------------------


@functools.cache
def _template(domains: tuple[str, ...], hostname: str) -> Path:
    """One initialised data dir per test process and domain set, copied by each test."""
    root = Path(os.environ.get("PYTEST_TMPDIR_ROOT", "/tmp")) / (
        f"pillarbox-template-{os.getpid()}-{abs(hash((domains, hostname)))}"
    )
    if root.exists():
        shutil.rmtree(root)
    listen = {name: "127.0.0.1:0" for name in PROD_LISTEN}
    initialize(
        InitOptions(data_dir=root, domains=domains, hostname=hostname, dev=True, listen=listen)
    )
    return root


def intake_workers() -> int:
    """Port 25 in the test process unless ``PILLARBOX_TEST_INTAKE_WORKERS=N`` says to run
    it in N intake workers: a worker's log lines go to its stderr, not to the test's
    handlers, and most tests read the log. tests/test_smtp_intake.py runs the workers."""
    return int(os.environ.get("PILLARBOX_TEST_INTAKE_WORKERS", "0"))


def make_settings(
    data_dir: Path,
    overrides: Mapping[str, Any] | None = None,
    *,
    domains: tuple[str, ...] = (DOMAIN,),
    hostname: str = HOSTNAME,
) -> Settings:
    """A fresh data dir at ``data_dir`` with config ``overrides`` merged in; its settings.

    Listeners default to 127.0.0.1:0; pass ``{"listen": {"imap": ""}}`` to disable one.
    """
    shutil.copytree(_template(domains, hostname), data_dir, dirs_exist_ok=True)
    config_path = data_dir / "pillarbox.toml"
    raw = tomllib.loads(config_path.read_text())
    raw = merge(raw, {"smtp": {"intake_workers": intake_workers()}})
    raw = merge(raw, overrides or {})
    config_path.write_text(dump_toml(raw))
    return config.load(config_path)


def add_user(settings: Settings, address: str, password: str = PASSWORD) -> str:
    accounts = open_accounts(settings)
    try:
        return accounts.add_user(address, hash_password(password))
    finally:
        accounts.close()


def add_alias(settings: Settings, alias: str, *targets: str) -> None:
    accounts = open_accounts(settings)
    try:
        accounts.add_alias(alias, targets)
    finally:
        accounts.close()


# -- in-process server -----------------------------------------------------------------------


class RunningServer:
    """The real server in a background thread; see the module docstring."""

    def __init__(self, settings: Settings, *, mail_store: str = ""):
        """``mail_store`` "maildir", "memory", "postgresql" or "postgresql-s3"; by default
        ``MAILSTORE``."""
        from pillarbox.app import Server

        self.settings = settings
        self.loop = asyncio.new_event_loop()
        self.server = Server(settings, **_store_factory(mail_store or MAILSTORE, settings))
        self.addresses: dict[str, tuple[str, int]] = {}
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        self.call(self._start())

    async def _start(self) -> None:
        self.addresses = await self.server.start()

    def call(self, coro: Any, timeout: float = 30.0) -> Any:
        """Run a coroutine on the server's loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def port(self, listener: str) -> int:
        return self.addresses[listener][1]

    def deliver(self, user: str, folder: str, data: bytes) -> None:
        """``data`` into ``user``'s ``folder`` through the store's own delivery (no trace
        fields), as local delivery stores mail; works on either store."""
        store = self.server.ctx.services.mail_store
        assert store is not None, "no mail store running"
        self.call(store.deliver(user, folder, [data]))

    def stop(self) -> None:
        if self.loop.is_running():
            try:
                self.call(self.server.stop())
            finally:
                self.loop.call_soon_threadsafe(self.loop.stop)
                self._thread.join(10)
                self.loop.close()

    def __enter__(self) -> RunningServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def on_memory() -> bool:
    """Whether this run keeps mail elsewhere than Maildir + SQLite (see ``MAILSTORE``):
    in memory or in PostgreSQL."""
    return MAILSTORE != "maildir"


def _store_factory(kind: str, settings: Settings) -> dict[str, Any]:
    if kind == "maildir":
        return {}
    if kind == "memory":
        from pillarbox.memstore.store import make_memory_store

        return {"store_factory": make_memory_store}
    if kind == "postgresql":
        from pillarbox.pgmail.store import make_pg_store

        dsn = _mail_database(settings.data_dir)
        return {"store_factory": lambda ctx: make_pg_store(ctx, dsn)}
    if kind == "postgresql-s3":
        from pillarbox.pgmail.store import make_pg_store

        dsn = _mail_database(settings.data_dir)
        return {"store_factory": lambda ctx: make_pg_store(ctx, dsn, _s3_blobs(settings))}
    raise ValueError(
        f"mail store {kind!r}: maildir, memory, postgresql or postgresql-s3"
        " (PILLARBOX_TEST_MAILSTORE)"
    )


# -- bodies in S3 (PILLARBOX_TEST_MAILSTORE=postgresql-s3) ---------------------------------------
# One moto S3 server per test process (tests/s3server.py), a bucket per data dir (a restarted
# server finds its bodies again), the bodies behind the real read cache in the data dir.
_s3_server: Any = None
_s3_buckets: dict[Path, str] = {}


def _s3_blobs(settings: Settings) -> Any:
    import dataclasses

    from pillarbox.blobs.configured import open_blobs
    from tests.s3server import S3Server, store_table

    global _s3_server
    if _s3_server is None:
        _s3_server = S3Server()
    bucket = _s3_buckets.get(settings.data_dir)
    if bucket is None:
        bucket = _s3_buckets[settings.data_dir] = _s3_server.bucket()
    table = store_table(_s3_server, bucket, settings.data_dir)
    table["s3_secret_key_file"] = Path(table["s3_secret_key_file"])
    store = dataclasses.replace(settings.store, backend="postgresql", **table)
    return open_blobs(store, settings.data_dir)


# -- the PostgreSQL mail store's databases -----------------------------------------------------
# One test cluster per process, started at the first server that needs it; a database per
# data dir, so a test that restarts its server finds its mail again. The oldest are dropped
# once there are more than _KEPT_DATABASES (a restart comes within a test, long before).
_KEPT_DATABASES = 16
_pg_cluster: Any = None
_pg_databases: dict[Path, str] = {}  # data dir -> database name


def _mail_database(data_dir: Path) -> str:
    """The dsn of ``data_dir``'s database (made the first time)."""
    global _pg_cluster
    import psycopg

    from tests import pg

    if _pg_cluster is None:
        reason = pg.available()
        if reason is not None:
            import pytest

            pytest.skip(reason)
        cluster = pg.running_server()  # stopped (and its data dir removed) at exit
        _pg_cluster = cluster.__enter__()
        atexit.register(cluster.__exit__, None, None, None)
    if data_dir not in _pg_databases:
        name = f"mail_{os.getpid()}_{len(_pg_databases)}_{time.monotonic_ns()}"
        with psycopg.connect(_pg_cluster.dsn(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}" TEMPLATE template0')
            while len(_pg_databases) >= _KEPT_DATABASES:
                oldest = _pg_databases.pop(next(iter(_pg_databases)))
                conn.execute(f'DROP DATABASE IF EXISTS "{oldest}" WITH (FORCE)')
        _pg_databases[data_dir] = name
    return str(_pg_cluster.dsn(_pg_databases[data_dir]))


# -- subprocess server -----------------------------------------------------------------------

_LISTENING = re.compile(
    r"event=listening listener=(\w+) address=(?:\[([0-9a-f:]+)\]|([\d.]+)):(\d+)"
)


class SubprocessServer:
    """``pillarbox serve`` as a child process; ``addresses`` parsed from its log."""

    def __init__(self, settings: Settings, *, wait: float = 15.0):
        assert settings.source is not None
        # A child process has the real store: a test using one must be marked on_disk.
        assert not on_memory(), "SubprocessServer in the memory-store run: mark the test on_disk"
        self.settings = settings
        self.log_path = settings.data_dir / "serve.log"
        self._log = open(self.log_path, "ab")  # noqa: SIM115 (closed in stop)
        # A restart appends to the same log: only what this process writes counts.
        self._log_start = self._log.tell()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pillarbox", "--config", str(settings.source), "serve"],
            stdout=self._log,
            stderr=self._log,
            cwd=settings.data_dir,
        )
        self.addresses: dict[str, tuple[str, int]] = {}
        self._wait_started(wait)

    def _wait_started(self, wait: float) -> None:
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            text = self.log()
            if "event=started" in text:
                # A listener on several addresses: the first one, as Server.start returns.
                self.addresses = {}
                for name, host6, host4, port in _LISTENING.findall(text):
                    self.addresses.setdefault(name, (host6 or host4, int(port)))
                return
            if self.proc.poll() is not None:
                raise RuntimeError(f"pillarbox serve exited {self.proc.returncode}:\n{text}")
            time.sleep(0.05)
        raise RuntimeError("pillarbox serve did not start:\n" + self.log())

    def port(self, listener: str) -> int:
        return self.addresses[listener][1]

    def log(self) -> str:
        """What this process has logged (not earlier runs in the same file)."""
        with open(self.log_path, "rb") as f:
            f.seek(self._log_start)
            return f.read().decode(errors="replace")

    def send_signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._log.close()
        return self.proc.returncode

    def __enter__(self) -> SubprocessServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
