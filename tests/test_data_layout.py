"""The data layout's version and the upgrade from the previous release: a data dir as the
previous release left it (no layout stamp, the accounts schema before send-as grants)
starts under this release with every user, alias and message intact, and a data dir
from a newer release is refused before anything is opened."""

from __future__ import annotations

import imaplib
import sqlite3
import ssl
import subprocess
import sys
from pathlib import Path

import pytest

from pillarbox.config import Settings
from pillarbox.store.layout import LAYOUT_FILE, LAYOUT_VERSION, LayoutError, ensure_layout
from tests import pbserver

ALICE = "alice@example.test"


def as_previous_release(settings: Settings) -> None:
    """Undo what this release added: the layout stamp and accounts migration 2."""
    (settings.data_dir / LAYOUT_FILE).unlink(missing_ok=True)
    conn = sqlite3.connect(settings.database_path)
    with conn:
        conn.execute("DROP TABLE send_as")
        conn.execute("UPDATE schema_versions SET version = 1 WHERE component = 'accounts'")
    conn.close()


def accounts_version(settings: Settings) -> int:
    conn = sqlite3.connect(settings.database_path)
    try:
        row = conn.execute(
            "SELECT version FROM schema_versions WHERE component = 'accounts'"
        ).fetchone()
        return int(row[0])
    finally:
        conn.close()


def test_fresh_dir_is_stamped(tmp_path: Path) -> None:
    assert ensure_layout(tmp_path / "new") == LAYOUT_VERSION
    assert (tmp_path / "new" / LAYOUT_FILE).read_text() == f"{LAYOUT_VERSION}\n"


def test_previous_release_upgrades_in_place(tmp_path: Path) -> None:
    settings = pbserver.make_settings(tmp_path / "data", {})
    pbserver.add_user(settings, ALICE)
    pbserver.add_alias(settings, "sales@example.test", ALICE)
    as_previous_release(settings)
    assert accounts_version(settings) == 1

    with pbserver.RunningServer(settings) as server:
        context = ssl.create_default_context(cafile=str(settings.tls.ca))
        with imaplib.IMAP4_SSL("127.0.0.1", server.port("imaps"), ssl_context=context) as imap:
            assert imap.login(ALICE, pbserver.PASSWORD)[0] == "OK"
        assert settings.source is not None
        granted = subprocess.run(
            [sys.executable, "-m", "pillarbox", "--config", str(settings.source),
             "user", "sendas", "add", ALICE, "@partner.test"],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        assert granted.returncode == 0, granted.stderr
        aliases = subprocess.run(
            [sys.executable, "-m", "pillarbox", "--config", str(settings.source), "alias",
             "list"],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
    assert "sales@example.test -> alice@example.test" in aliases.stdout
    assert accounts_version(settings) == 2
    assert (settings.data_dir / LAYOUT_FILE).read_text().strip() == str(LAYOUT_VERSION)


def test_newer_layout_is_refused_before_anything_opens(tmp_path: Path) -> None:
    settings = pbserver.make_settings(tmp_path / "data", {})
    (settings.data_dir / LAYOUT_FILE).write_text(f"{LAYOUT_VERSION + 1}\n")
    with pytest.raises(LayoutError, match="newer Pillarbox"):
        ensure_layout(settings.data_dir)
    assert settings.source is not None
    serve = subprocess.run(
        [sys.executable, "-m", "pillarbox", "--config", str(settings.source), "serve"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert serve.returncode == 1 and "newer Pillarbox" in serve.stderr
    (settings.data_dir / LAYOUT_FILE).write_text("garbage\n")
    with pytest.raises(LayoutError, match="not a version"):
        ensure_layout(settings.data_dir)
