"""Every dialog under tests/data/dialogs, replayed against a real server (see tests/dialog.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests import dialog, pbserver

DIALOGS = Path(__file__).parent / "data" / "dialogs"
FILES = sorted(DIALOGS.glob("*/*.dialog"))  # fixtures/ holds the @messages mboxes


@pytest.mark.parametrize("path", FILES, ids=[f"{p.parent.name}/{p.stem}" for p in FILES])
def test_dialog(tmp_path: Path, path: Path) -> None:
    script = dialog.parse(path)
    settings = pbserver.make_settings(tmp_path / "data", script.config)
    for user in ["alice@example.test", *script.users]:
        pbserver.add_user(settings, user)
    with pbserver.RunningServer(settings) as server:
        dialog.load_messages(script, server)
        dialog.Replay(script, server).run()


def test_there_are_dialogs_for_every_protocol() -> None:
    assert {p.parent.name for p in FILES} == {"smtp", "imap", "pop3"}


def test_a_dialog_that_does_not_match_fails(tmp_path: Path) -> None:
    """The harness itself: a wrong expectation is reported with the file line."""
    bad = tmp_path / "smtp" / "wrong.dialog"
    bad.parent.mkdir()
    bad.write_text("S: 220 ...\nC: NOOP\nS: 500 ...\n")
    settings = pbserver.make_settings(tmp_path / "data")
    expected = r"wrong.dialog:3: expected '500 \.\.\.', got '250 2\.0\.0 OK'"
    with pbserver.RunningServer(settings) as server, pytest.raises(AssertionError, match=expected):
        dialog.Replay(dialog.parse(bad), server).run()
