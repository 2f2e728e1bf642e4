"""A Maildir written by Dovecot is served over IMAP with its UIDs, flags and keywords."""

from __future__ import annotations

import shutil

import pytest

from pillarbox.config import Settings
from pillarbox.store.maildir import user_maildir
from tests import pbserver
from tests.imaphelp import ALICE, login
from tests.test_store_index import dovecot_maildir

pytestmark = pytest.mark.on_disk  # serves a Maildir Dovecot wrote


def test_dovecot_maildir_over_imap(settings: Settings) -> None:
    pbserver.add_user(settings, ALICE)
    root = user_maildir(settings.mail_dir, ALICE)
    shutil.rmtree(root, ignore_errors=True)
    dovecot_maildir(root)
    with pbserver.RunningServer(settings) as server, login(server) as c:
        typ, data = c.select("INBOX")
        assert (typ, data) == ("OK", [b"3"])
        assert c.response("UIDVALIDITY")[1] == [b"1600000000"]
        _, data = c.uid("FETCH", "1:*", "(FLAGS)")
        flags = [d.decode() for d in data]
        # First session on a new index: every message is \\Recent (RFC 3501 §2.3.2).
        assert flags[0] == "1 (UID 7 FLAGS (\\Recent \\Seen \\Flagged $Forwarded))"
        assert flags[1] == "2 (UID 12 FLAGS (\\Recent Work))"
        assert flags[2].startswith("3 (UID 20 FLAGS (\\Recent")
        _, data = c.fetch("1", "(BODY.PEEK[TEXT])")
        assert data[0][1] == b"line one\r\nline two\r\n"  # LF on disk, CRLF on the wire
        _, listed = c.list()
        names = {x.rsplit(b" ", 1)[1].strip(b'"') for x in listed}
        assert {b"INBOX", b"Sent", b"Lists/Python"} <= names
        assert c.select("Sent")[1] == [b"1"]
        _, data = c.uid("FETCH", "2", "(FLAGS)")
        assert data[0] == b"1 (UID 2 FLAGS (\\Recent \\Seen \\Answered))"
        # A flag set over IMAP lands in the file name where Dovecot and mutt read it.
        c.select("INBOX")
        c.uid("STORE", "12", "+FLAGS", "(\\Answered $Forwarded)")
    names = sorted(p.name for p in (root / "cur").iterdir())
    assert any(n.startswith("1600000002.M2P1.old,S=40:2,Rab") for n in names), names
