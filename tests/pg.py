"""A private PostgreSQL server for the tests: real binaries, a temporary data dir, loopback.

``PgServer`` runs Debian's ``initdb`` and ``pg_ctl`` (``/usr/lib/postgresql/*/bin``, or
the directory in ``$PILLARBOX_PG_BIN``, or ``pg_ctl`` on PATH) on a data dir under the
system temp dir, listening on 127.0.0.1 at a port outside the ephemeral range (see
tests/ports.py) and on a unix socket in the same dir. ``initdb`` refuses to run as root,
so under root every PostgreSQL process runs as ``nobody`` (``setpriv``, which needs no PAM
session, unlike ``runuser``) and the dir is given to it.

One server per test process (the ``pg_server`` fixture is session-scoped, and xdist runs
a session per worker); every test gets its own database (``pg_dsn``), created from
``template0`` in milliseconds and dropped after, so tests never see each other's rows.

The server trades durability for speed (``fsync = off``): the tests kill Pillarbox
nodes, never the database, and a lost test cluster is simply made again.

Without the binaries, ``available()`` says why and the fixtures skip with that reason.
"""

from __future__ import annotations

import contextlib
import glob
import itertools
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

from tests.ports import free_port

SUPERUSER = "postgres"
_UNPRIVILEGED = "nobody"
_database_numbers = itertools.count(1)


def find_bin_dir() -> Path | None:
    """Where ``initdb``/``pg_ctl`` live, newest major version first; None if absent."""
    configured = os.environ.get("PILLARBOX_PG_BIN")
    candidates = [configured] if configured else []
    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=_major, reverse=True)
    on_path = shutil.which("pg_ctl")
    if on_path:
        candidates.append(str(Path(on_path).parent))
    for candidate in candidates:
        path = Path(candidate)
        if (path / "initdb").is_file() and (path / "pg_ctl").is_file():
            return path
    return None


def _major(path: str) -> int:
    version = Path(path).parent.name
    return int(version) if version.isdigit() else 0


def available() -> str | None:
    """None when a test server can be started here, else the reason it cannot."""
    if find_bin_dir() is None:
        return (
            "PostgreSQL server binaries not found (install Debian's postgresql package or "
            "set PILLARBOX_PG_BIN)"
        )
    try:
        import psycopg  # noqa: F401
    except ImportError as exc:
        return f"the psycopg driver cannot be imported: {exc}"
    return None


class PgServer:
    """One running PostgreSQL cluster; see the module docstring."""

    def __init__(self, bin_dir: Path) -> None:
        self.bin_dir = bin_dir
        self.root = Path(tempfile.mkdtemp(prefix="pillarbox-pg-"))
        self.data_dir = self.root / "data"
        self.port = free_port()
        self._as_user: list[str] = []
        if os.geteuid() == 0:
            entry = pwd.getpwnam(_UNPRIVILEGED)
            os.chown(self.root, entry.pw_uid, entry.pw_gid)
            self._as_user = [
                "setpriv", f"--reuid={entry.pw_uid}", f"--regid={entry.pw_gid}",
                "--clear-groups", "--",
            ]  # fmt: skip

    def _run(self, *args: str) -> None:
        env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"}
        subprocess.run(
            [*self._as_user, *args], check=True, capture_output=True, env=env, cwd=self.root
        )

    def start(self) -> None:
        self._run(
            str(self.bin_dir / "initdb"), "-D", str(self.data_dir), "-U", SUPERUSER,
            "--auth=trust", "--encoding=UTF8", "--no-instructions", "--no-sync",
        )  # fmt: skip
        options = " ".join(
            [
                "-c listen_addresses=127.0.0.1",
                f"-c port={self.port}",
                f"-c unix_socket_directories={self.root}",
                "-c fsync=off -c full_page_writes=off -c synchronous_commit=off",
                "-c max_connections=200",
            ]
        )
        self._run(
            str(self.bin_dir / "pg_ctl"), "-D", str(self.data_dir), "-l",
            str(self.root / "server.log"), "-o", options, "-w", "-t", "60", "start",
        )  # fmt: skip

    def stop(self) -> None:
        with contextlib.suppress(subprocess.CalledProcessError):
            self._run(str(self.bin_dir / "pg_ctl"), "-D", str(self.data_dir), "-m", "fast",
                      "-w", "stop")  # fmt: skip
        shutil.rmtree(self.root, ignore_errors=True)

    def dsn(self, database: str = "postgres") -> str:
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    @contextlib.contextmanager
    def database(self) -> Iterator[str]:
        """A fresh, empty database for one test; its dsn. Dropped afterwards."""
        import psycopg

        name = f"test_{os.getpid()}_{next(_database_numbers)}"
        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}" TEMPLATE template0')
        try:
            yield self.dsn(name)
        finally:
            with psycopg.connect(self.dsn(), autocommit=True) as conn:
                # Nodes a test killed may still hold sessions for a moment.
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def log(self) -> str:
        with contextlib.suppress(OSError):
            return (self.root / "server.log").read_text(errors="replace")
        return ""


@contextlib.contextmanager
def running_server() -> Iterator[PgServer]:
    bin_dir = find_bin_dir()
    assert bin_dir is not None
    server = PgServer(bin_dir)
    try:
        server.start()
        yield server
    finally:
        server.stop()
