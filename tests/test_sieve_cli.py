"""``pillarbox sieve ...`` on a real data dir (the same database the server reads)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pillarbox.cli import main
from pillarbox.config import Settings
from pillarbox.store.sieve_scripts import SieveScripts
from tests import pbserver

ALICE = "alice@example.test"


def cli(settings: Settings, *words: str) -> int:
    return main(["--config", str(settings.data_dir / "pillarbox.toml"), "sieve", *words])


@pytest.fixture
def alice(settings: Settings) -> Settings:
    pbserver.add_user(settings, ALICE)
    return settings


def test_put_list_get_activate_delete(
    alice: Settings, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    script = tmp_path / "filters.sieve"
    script.write_text('require "fileinto";\nfileinto "Later";\n')
    assert cli(alice, "put", "Alice@Example.test", str(script), "--activate") == 0
    assert cli(alice, "put", ALICE, str(script), "--name", "spare") == 0
    capsys.readouterr()
    assert cli(alice, "list", ALICE) == 0
    assert capsys.readouterr().out.splitlines()[:2] == ["filters  (active)", "spare"]
    assert cli(alice, "get", ALICE) == 0
    assert capsys.readouterr().out == script.read_text()
    assert cli(alice, "delete", ALICE, "filters") == 1  # the active one
    assert "active" in capsys.readouterr().err
    assert cli(alice, "activate", ALICE, "--none") == 0
    assert cli(alice, "delete", ALICE, "filters") == 0
    scripts = SieveScripts(alice.database_path)
    try:
        assert scripts.list(ALICE) == [("spare", False)] and scripts.active(ALICE) is None
    finally:
        scripts.close()


def test_a_bad_script_is_refused_with_line_and_column(
    alice: Settings, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    script = tmp_path / "bad.sieve"
    script.write_text('require "fileinto";\nif header :contains "subject" "x" {\n  fileinto;\n}\n')
    assert cli(alice, "put", ALICE, str(script)) == 1
    assert f"{script}:3:3: " in capsys.readouterr().err
    scripts = SieveScripts(alice.database_path)
    try:
        assert scripts.list(ALICE) == []  # nothing stored
    finally:
        scripts.close()


def test_unknown_user_and_missing_script(
    alice: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli(alice, "list", "nobody@example.test") == 1
    assert "no user" in capsys.readouterr().err
    assert cli(alice, "get", ALICE, "nope") == 1
    assert cli(alice, "activate", ALICE, "nope") == 1
    assert "no script" in capsys.readouterr().err
