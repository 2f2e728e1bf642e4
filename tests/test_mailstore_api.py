"""The neutral mail-store API (issue #18): every MailboxError code the store raises reaches
an IMAP client as its response code, over a real socket to the real server, and a POP3
client as a plain -ERR. (That the store implements the Protocols is checked by mypy: see
``_conforms`` at the end of pillarbox/store/mailbox.py.)"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from pillarbox.imap.backend import response_code
from pillarbox.mailstore import errors
from pillarbox.mailstore.errors import MailboxError
from tests import pbserver
from tests.imaphelp import ALICE, Raw, message

BIG = message("big", body="x" * 3000 + "\r\n")

# code -> (commands run first, the command the store refuses with that code)
TRIGGERS: dict[str, tuple[list[bytes], bytes]] = {
    errors.NONEXISTENT: ([], b"SELECT Nowhere"),
    errors.TRYCREATE: ([b"SELECT INBOX"], b"COPY 1 Nowhere"),
    errors.ALREADYEXISTS: ([b"CREATE Projects"], b"CREATE Projects"),
    errors.CANNOT: ([], b"DELETE INBOX"),
    errors.USEATTR: ([], b"CREATE Odd (USE (\\Important))"),
    errors.OVERQUOTA: ([b"SELECT INBOX"], b"COPY 1:* INBOX"),
}


@pytest.fixture(scope="module")
def quota_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[pbserver.RunningServer]:
    data = Path(tmp_path_factory.mktemp("mailstore")) / "data"
    settings = pbserver.make_settings(data, {"store": {"quota": "8K"}})
    pbserver.add_user(settings, ALICE)
    with pbserver.RunningServer(settings) as server:
        raw = Raw(server)
        try:
            raw.login()
            for _ in range(2):  # 2 x 3 KB of 8 KB: one more copy of both passes the quota
                raw.send(b"a APPEND INBOX {%d+}\r\n%s\r\n" % (len(BIG), BIG))
                assert raw.until(b"a")[-1].startswith(b"a OK")
        finally:
            raw.close()
        yield server


def test_every_code_has_an_imap_response_code() -> None:
    assert {response_code(MailboxError(code, "x")) for code in errors.CODES} == {
        "NONEXISTENT",
        "TRYCREATE",
        "ALREADYEXISTS",
        "CANNOT",
        "OVERQUOTA",
        "USEATTR",
        "",
    }
    assert set(TRIGGERS) == set(errors.CODES) - {errors.NONE}, "a code without a wire test"


@pytest.mark.parametrize("code", sorted(TRIGGERS))
def test_store_error_code_on_the_wire(quota_server: pbserver.RunningServer, code: str) -> None:
    setup, refused = TRIGGERS[code]
    raw = Raw(quota_server)
    try:
        raw.login()
        for i, command in enumerate(setup):
            raw.cmd(b"s%d" % i, command)
        reply = raw.cmd(b"x", refused)[-1]
        assert reply.startswith(b"x NO [%s] " % code.encode()), reply
    finally:
        raw.close()


def test_fetch_flags_batch_with_a_gap_and_keywords(server: pbserver.RunningServer) -> None:
    """The narrow FETCH FLAGS path: UIDs with a gap come as a list (without one, as a
    range), keywords per UID, modseqs only when MODSEQ is asked for."""
    raw = Raw(server)
    try:
        raw.login()
        raw.cmd(b"c", b"CREATE Gaps")
        for i in range(4):
            body = message(f"gap {i}")
            raw.send(b"a%d APPEND Gaps {%d+}\r\n%s\r\n" % (i, len(body), body))
            assert raw.until(b"a%d" % i)[-1].startswith(b"a%d OK" % i)
        raw.cmd(b"s", b"SELECT Gaps")
        raw.cmd(b"d", b"UID STORE 2 +FLAGS.SILENT (\\Deleted)")
        raw.cmd(b"e", b"EXPUNGE")
        raw.cmd(b"k", b"UID STORE 3 +FLAGS.SILENT ($Work \\Flagged)")
        lines = raw.cmd(b"f", b"UID FETCH 1:* (FLAGS)")
        assert lines[-1].startswith(b"f OK"), lines
        fetched = [line for line in lines if line.startswith(b"* ") and b" FETCH (" in line]
        assert fetched == [
            b"* 1 FETCH (UID 1 FLAGS (\\Recent))\r\n",
            b"* 2 FETCH (UID 3 FLAGS (\\Recent \\Flagged $Work))\r\n",
            b"* 3 FETCH (UID 4 FLAGS (\\Recent))\r\n",
        ], lines
        modseqs = [line for line in raw.cmd(b"m", b"UID FETCH 3:4 (MODSEQ)") if b"MODSEQ (" in line]
        assert len(modseqs) == 2 and all(b"MODSEQ (" in line for line in modseqs), modseqs
        top = [int(line.split(b"MODSEQ (")[1].split(b")")[0]) for line in modseqs]
        assert top[0] > top[1], "UID 3 was changed after UID 4 was appended"
    finally:
        raw.close()
