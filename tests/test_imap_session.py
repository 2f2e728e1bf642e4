"""IMAP end to end: real clients (imaplib, imapclient, raw TLS) against the real server."""

from __future__ import annotations

import base64
import imaplib
import re
import socket
import time

import pytest

from tests import pbserver
from tests.imaphelp import ALICE, BOB, TIMEOUT, Raw, imaps, login, message, tls_context

MULTIPART = (
    b"From: Carol <carol@example.org>\r\n"
    b"To: alice@example.test\r\n"
    b"Subject: parts\r\n"
    b"MIME-Version: 1.0\r\n"
    b'Content-Type: multipart/mixed; boundary="b1"\r\n'
    b"\r\n"
    b"--b1\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"Content-Transfer-Encoding: quoted-printable\r\n"
    b"\r\n"
    b"caf=C3=A9\r\n"
    b"--b1\r\n"
    b"Content-Type: application/octet-stream\r\n"
    b"Content-Transfer-Encoding: base64\r\n"
    b"\r\n"
    b"AAECAw==\r\n"
    b"--b1--\r\n"
)


def test_starttls_required_before_login(server: pbserver.RunningServer) -> None:
    client = imaplib.IMAP4("127.0.0.1", server.port("imap"), timeout=TIMEOUT)
    try:
        assert "STARTTLS" in client.capabilities and "LOGINDISABLED" in client.capabilities
        assert "AUTH=PLAIN" not in client.capabilities
        with pytest.raises(imaplib.IMAP4.error, match="PRIVACYREQUIRED"):
            client.login(ALICE, pbserver.PASSWORD)
        client.starttls(ssl_context=tls_context(server.settings))
        assert "AUTH=PLAIN" in client.capabilities and "LOGINDISABLED" not in client.capabilities
        typ, _ = client.login(ALICE, pbserver.PASSWORD)
        assert typ == "OK"
        assert "MOVE" in client.capabilities or "MOVE" in client.capability()[1][0].decode()
    finally:
        client.logout()


def test_authentication_paths(server: pbserver.RunningServer) -> None:
    raw = Raw(server)
    try:
        assert raw.greeting.startswith(b"* OK [CAPABILITY IMAP4rev1")
        assert raw.cmd(b"a", b"SELECT INBOX")[-1].startswith(b"a BAD")
        assert b"AUTHENTICATIONFAILED" in raw.cmd(b"b", b'LOGIN alice@example.test "wrong"')[-1]
        raw.send(b"c AUTHENTICATE PLAIN\r\n")
        assert raw.line() == b"+ \r\n"
        raw.send(b"*\r\n")
        assert raw.until(b"c")[-1].startswith(b"c BAD")
        assert raw.cmd(b"d", b"AUTHENTICATE CRAM-MD5")[-1].startswith(b"d NO")
        ir = base64.b64encode(b"\0alice@example.test\0" + pbserver.PASSWORD.encode())
        lines = raw.cmd(b"e", b"AUTHENTICATE PLAIN " + ir)
        assert lines[-1].startswith(b"e OK [CAPABILITY IMAP4rev1"), lines
        assert raw.cmd(b"f", b"LOGIN x y")[-1].startswith(b"f BAD")  # already authenticated
    finally:
        raw.close()
    raw = Raw(server)
    try:
        raw.send(b"g AUTHENTICATE LOGIN\r\n")
        assert raw.line() == b"+ " + base64.b64encode(b"Username:") + b"\r\n"
        raw.send(base64.b64encode(ALICE.encode()) + b"\r\n")
        assert raw.line() == b"+ " + base64.b64encode(b"Password:") + b"\r\n"
        raw.send(base64.b64encode(pbserver.PASSWORD.encode()) + b"\r\n")
        assert raw.until(b"g")[-1].startswith(b"g OK")
    finally:
        raw.close()


def test_fetch_items(server: pbserver.RunningServer) -> None:
    with login(server) as c:
        plain = message("plain one")
        c.append("INBOX", r"(\Flagged)", '"07-Feb-1994 21:52:25 -0800"', plain)
        c.append("INBOX", None, None, MULTIPART)
        c.select("INBOX")
        typ, data = c.fetch("1", "(FLAGS INTERNALDATE RFC822.SIZE UID)")
        assert typ == "OK"
        line = data[0].decode()
        assert 'INTERNALDATE "' in line and " 8-Feb-1994 05:52:25 +0000" in line
        assert f"RFC822.SIZE {len(plain)}" in line and "\\Flagged" in line
        _, data = c.fetch("1", "(BODY.PEEK[])")
        assert data[0][1] == plain  # byte-exact
        _, data = c.fetch("1", "(FLAGS)")
        assert b"\\Seen" not in data[0]
        _, data = c.fetch("1", "(BODY[HEADER.FIELDS (SUBJECT TO)] BODY[]<0.4>)")
        assert data[0][1] == b"To: Alice <alice@example.test>\r\nSubject: plain one\r\n\r\n"
        assert data[1][0].endswith(b"BODY[]<0> {4}") and data[1][1] == b"From"
        _, data = c.fetch("1", "(FLAGS)")
        assert b"\\Seen" in data[0]  # BODY[] without PEEK sets \Seen
        _, data = c.fetch("2", "(BODYSTRUCTURE)")
        assert (
            data[0]
            .decode()
            .startswith(
                '2 (BODYSTRUCTURE (("TEXT" "PLAIN" ("charset" "utf-8") NIL NIL '
                '"QUOTED-PRINTABLE" 9 1 NIL NIL NIL NIL)'
            )
        )
        assert (
            data[0]
            .decode()
            .endswith('"BASE64" 8 NIL NIL NIL NIL) "MIXED" ("boundary" "b1") NIL NIL NIL))')
        )
        _, data = c.fetch("2", "(BODY.PEEK[1] BODY.PEEK[2.MIME] BINARY.PEEK[1] BINARY.SIZE[2])")
        parts = {
            item[0].split(b" ")[-2].lstrip(b"("): item[1]
            for item in data
            if isinstance(item, tuple)
        }
        assert parts[b"BODY[1]"] == b"caf=C3=A9"
        assert parts[b"BODY[2.MIME]"].startswith(b"Content-Type: application/octet-stream")
        assert parts[b"BINARY[1]"] == "café".encode()
        assert b"BINARY.SIZE[2] 4" in b"".join(x if isinstance(x, bytes) else x[0] for x in data)
        _, data = c.fetch("1:2", "(ENVELOPE)")
        assert b'"plain one"' in data[0] and b'("Carol" NIL "carol" "example.org")' in data[1]
        _, data = c.fetch("2", "(RFC822.HEADER RFC822.TEXT)")
        assert data[0][1].endswith(b"\r\n\r\n") and data[1][1].startswith(b"--b1")
        _, data = c.uid("FETCH", "1:*", "(FLAGS)")
        assert [re.findall(rb"UID (\d+)", d)[0] for d in data] == [b"1", b"2"]
        with pytest.raises(imaplib.IMAP4.error):
            c.fetch("5", "(FLAGS)")  # beyond EXISTS: BAD
        with pytest.raises(imaplib.IMAP4.error):
            c.fetch("1", "(BODY[HEADER.FIELDS ()])")  # syntax: BAD


def test_search_keys(server: pbserver.RunningServer) -> None:
    with login(server) as c:
        c.append("INBOX", r"(\Seen)", '"01-Jan-2020 10:00:00 +0000"', message("alpha", "x" * 10))
        c.append("INBOX", r"(\Answered $Work)", None, message("Beta Ünïcode", "needle\r\n"))
        c.append("INBOX", r"(\Deleted)", None, message("gamma", X_Custom="Special"))
        c.select("INBOX")

        def search(*criteria: str) -> list[int]:
            typ, data = c.search(None, *criteria)
            assert typ == "OK"
            return [int(x) for x in data[0].split()]

        assert search("ALL") == [1, 2, 3]
        assert search("SEEN") == [1]
        assert search("UNSEEN") == [2, 3]
        assert search("ANSWERED") == [2] and search("DELETED") == [3]
        assert search("KEYWORD", "$Work") == [2] and search("UNKEYWORD", "$Work") == [1, 3]
        assert search("SUBJECT", "BETA") == [2]
        assert search("FROM", "bob@example.org") == [1, 2, 3]
        assert search("HEADER", "X-Custom", "special") == [3]
        assert search("HEADER", "X-Custom", '""') == [3]
        assert search("BODY", "needle") == [2] and search("TEXT", "gamma") == [3]
        assert search("BEFORE", "1-Jan-2021") == [1] and search("SINCE", "1-Jan-2021") == [2, 3]
        assert search("SENTON", "7-Feb-1994") == [1, 2, 3]
        assert search("LARGER", "200") == [] or search("SMALLER", "10000") == [1, 2, 3]
        assert search("NOT", "SEEN", "NOT", "DELETED") == [2]
        assert search("OR", "SEEN", "DELETED") == [1, 3]
        assert search("2:*") == [2, 3] and search("UID", "1,3") == [1, 3]
        assert search("(SEEN)", "OR", "1", "3") == [1]
        c.append("INBOX", None, None, MULTIPART)
        c.noop()
        c.literal = "CAFÉ".encode()
        assert c.search("UTF-8", "BODY") == ("OK", [b"4"])  # QP decoded
        c.literal = "ünïcode".encode()
        typ, data = c.uid("SEARCH", "CHARSET", "UTF-8", "SUBJECT")
        assert data == [b"2"]
        typ, data = c._simple_command("SEARCH", "CHARSET", "KOI8-R", "ALL")  # type: ignore[attr-defined]
        assert typ == "NO"
        raw = Raw(server)
        raw.login()
        raw.cmd(b"s", b"SELECT INBOX")
        lines = raw.cmd(b"e", b"SEARCH RETURN (MIN MAX COUNT) UNDELETED")
        assert lines[0] == b'* ESEARCH (TAG "e") MIN 1 MAX 4 COUNT 3\r\n'
        raw.cmd(b"v", b"UID SEARCH RETURN (SAVE) SEEN")
        lines = raw.cmd(b"w", b"UID FETCH $ (FLAGS)")
        assert len(lines) == 2 and b"UID 1 " in lines[0]
        raw.close()


def test_store_copy_move_expunge_uidplus(server: pbserver.RunningServer) -> None:
    raw = Raw(server)
    raw.login()
    try:
        for i in range(4):
            msg = message(f"m{i}")
            raw.send(b"A%d APPEND INBOX {%d+}\r\n" % (i, len(msg)) + msg + b"\r\n")
            assert b"APPENDUID" in raw.until(b"A%d" % i)[-1]
        raw.cmd(b"s", b"SELECT INBOX")
        lines = raw.cmd(b"t", b"STORE 1:2 +FLAGS (\\Deleted $Later)")
        # $Later is new: FLAGS and PERMANENTFLAGS announce it before the FETCH (RFC 9051 §7.3.5).
        assert lines[0].startswith(b"* FLAGS (") and b"$Later" in lines[0], lines
        assert lines[1].startswith(b"* OK [PERMANENTFLAGS (") and b"$Later" in lines[1], lines
        assert lines[2] == b"* 1 FETCH (FLAGS (\\Recent \\Deleted $Later))\r\n"
        assert raw.cmd(b"u", b"STORE 2 -FLAGS.SILENT (\\Deleted)")[0].startswith(b"u OK")
        lines = raw.cmd(b"c", b"UID COPY 1:3 Trash")
        assert re.match(rb"c OK \[COPYUID \d+ 1:3 1:3\]", lines[-1]), lines
        assert raw.cmd(b"n", b"COPY 1 Nowhere")[-1].startswith(b"n NO [TRYCREATE]")
        lines = raw.cmd(b"m", b"MOVE 4 Archive")
        assert lines[0].startswith(b"* OK [COPYUID ") and lines[1] == b"* 4 EXPUNGE\r\n"
        lines = raw.cmd(b"x", b"UID EXPUNGE 2:3")
        assert lines[-1].startswith(b"x OK") and len(lines) == 1  # 2 is not \Deleted
        lines = raw.cmd(b"y", b"EXPUNGE")
        assert lines[0] == b"* 1 EXPUNGE\r\n"
        lines = raw.cmd(b"z", b"STATUS Trash (MESSAGES UIDNEXT UNSEEN DELETED)")
        assert lines[0] == b'* STATUS "Trash" (MESSAGES 3 UIDNEXT 4 UNSEEN 3 DELETED 1)\r\n'
        raw.cmd(b"e", b"EXAMINE Trash")
        assert raw.cmd(b"f", b"STORE 1 +FLAGS (\\Seen)")[-1].startswith(b"f NO")
        assert raw.cmd(b"g", b"EXPUNGE")[-1].startswith(b"g NO")
        raw.cmd(b"h", b"SELECT Trash")
        assert raw.cmd(b"i", b"CLOSE")[-1].startswith(b"i OK")
        assert b"MESSAGES 2" in raw.cmd(b"j", b"STATUS Trash (MESSAGES)")[0]
        assert raw.cmd(b"k", b"FETCH 1 FLAGS")[-1].startswith(b"k BAD")  # not selected
    finally:
        raw.close()


def test_changes_propagate_between_sessions(server: pbserver.RunningServer) -> None:
    a, b = Raw(server), Raw(server)
    try:
        a.login()
        b.login()
        for i in range(3):
            msg = message(f"p{i}")
            b.send(b"A%d APPEND INBOX {%d+}\r\n" % (i, len(msg)) + msg + b"\r\n")
            b.until(b"A%d" % i)
        a.cmd(b"s", b"SELECT INBOX")
        b.cmd(b"s", b"SELECT INBOX")
        b.cmd(b"t", b"STORE 2 +FLAGS (\\Flagged)")
        msg = message("p3")
        b.send(b"A9 APPEND INBOX {%d+}\r\n" % len(msg) + msg + b"\r\n")
        b.until(b"A9")
        lines = a.cmd(b"n", b"NOOP")
        assert b"* 2 FETCH (FLAGS (\\Recent \\Flagged))\r\n" in lines or any(
            b"* 2 FETCH (FLAGS (" in x and b"\\Flagged" in x for x in lines
        )
        assert b"* 4 EXISTS\r\n" in lines
        b.cmd(b"d", b"STORE 1 +FLAGS (\\Deleted)")
        b.cmd(b"e", b"EXPUNGE")
        # No EXPUNGE during FETCH (RFC 3501 §7.4.1) ...
        lines = a.cmd(b"f", b"FETCH 1 (FLAGS)")
        assert not any(b"EXPUNGE" in x for x in lines)
        # ... but at the next command that allows it.
        lines = a.cmd(b"g", b"NOOP")
        assert b"* 1 EXPUNGE\r\n" in lines
        assert a.cmd(b"h", b"FETCH 3 (UID)")[0] == b"* 3 FETCH (UID 4)\r\n"
    finally:
        a.close()
        b.close()


@pytest.mark.on_disk  # writes into the Maildir itself
def test_idle_announces_delivery(server: pbserver.RunningServer) -> None:
    from pillarbox.store.maildir import deliver, user_maildir

    raw = Raw(server)
    try:
        raw.login()
        raw.cmd(b"s", b"SELECT INBOX")
        raw.send(b"i IDLE\r\n")
        assert raw.line().startswith(b"+ ")
        start = time.monotonic()
        deliver(user_maildir(server.settings.mail_dir, ALICE), [message("pushed")])
        events = server.server.ctx.services.mailbox_events
        server.loop.call_soon_threadsafe(events.notify_new_mail, ALICE, "INBOX")
        assert raw.line() == b"* 1 EXISTS\r\n"
        assert raw.line() == b"* 1 RECENT\r\n"
        assert time.monotonic() - start < 5  # prompt, not the 30 s periodic sync
        raw.send(b"DONE\r\n")
        assert raw.until(b"i")[-1].startswith(b"i OK")
        lines = raw.cmd(b"f", b"FETCH 1 (BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
        assert b"Subject: pushed" in lines[0]
    finally:
        raw.close()


def test_hostile_input_gets_bad_and_session_goes_on(server: pbserver.RunningServer) -> None:
    raw = Raw(server)
    try:
        raw.login()
        assert raw.cmd(b"a", b"FROB")[-1].startswith(b"a BAD")
        raw.send(b"\r\n")
        assert raw.line().startswith(b"* BAD")
        assert raw.cmd(b"b", b'SELECT "unterminated')[-1].startswith(b"b BAD")
        assert raw.cmd(b"c", b"CREATE {999999999}")[-1].startswith(b"c NO [TOOBIG]")
        for bad in (b"../x", b"/etc", b"a//b", b".hidden/../../x", b"x\\"):
            line = raw.cmd(b"d", b'CREATE "' + bad + b'"')[-1]
            assert line.startswith((b"d NO", b"d BAD")), (bad, line)
        assert raw.cmd(b"e", b"SELECT nosuch")[-1].startswith(b"e NO [NONEXISTENT]")
        assert raw.cmd(b"f", b"DELETE INBOX")[-1].startswith(b"f NO")
        assert raw.cmd(b"g", b"UID FETCH 1:* (FLAGS)")[-1].startswith(b"g BAD")
        assert raw.cmd(b"h", b"SELECT INBOX")[-1].startswith(b"h OK [READ-WRITE]")
        assert raw.cmd(b"i", b"FETCH 1:* (FLAGS)")[-1].startswith(b"i BAD")  # empty mailbox
        assert raw.cmd(b"j", b"UID FETCH 1:* (FLAGS)")[-1].startswith(b"j OK")
        assert raw.cmd(b"k", b"SEARCH NOT")[-1].startswith(b"k BAD")
        assert raw.cmd(b"l", b"NOOP")[-1].startswith(b"l OK")
    finally:
        raw.close()
    # The server is still there for everyone else.
    with login(server) as c:
        assert c.noop()[0] == "OK"


def test_users_are_isolated(server: pbserver.RunningServer) -> None:
    pbserver.add_user(server.settings, BOB)
    with login(server) as alice:
        alice.create("Secret")
        alice.append("Secret", None, None, message("alice only"))
    with login(server, BOB) as bob:
        _, listed = bob.list()
        assert not any(b"Secret" in x for x in listed)
        assert bob.select("Secret")[0] == "NO"
        assert bob.select("../alice/.Secret")[0] == "NO"
        assert bob.status("INBOX", "(MESSAGES)")[1][0].endswith(b"(MESSAGES 0)")


def test_list_variants(server: pbserver.RunningServer) -> None:
    raw = Raw(server)
    try:
        raw.login()
        raw.cmd(b"a", b"CREATE Lists/Python")
        raw.cmd(b"b", b"CREATE K&AOQ-se")
        raw.cmd(b"c", b"SUBSCRIBE Lists/Python")
        lines = raw.cmd(b"d", b'LIST "" "%"')
        names = [x.rsplit(b" ", 1)[1].strip() for x in lines[:-1]]
        assert b'"INBOX"' in names and b'"Lists"' in names and b'"K&AOQ-se"' in names
        assert b'* LIST (\\HasChildren) "/" "Lists"\r\n' in lines
        lines = raw.cmd(b"e", b'LIST (SPECIAL-USE) "" "*"')
        assert sorted(x.split(b")")[0] for x in lines[:-1]) == sorted(
            b"* LIST (\\HasNoChildren \\" + n
            for n in (b"Archive", b"Drafts", b"Junk", b"Sent", b"Trash")
        )
        lines = raw.cmd(b"f", b'LIST (SUBSCRIBED) "" "Lists/*" RETURN (CHILDREN STATUS (MESSAGES))')
        assert lines[0] == b'* LIST (\\HasNoChildren \\Subscribed) "/" "Lists/Python"\r\n'
        assert lines[1] == b'* STATUS "Lists/Python" (MESSAGES 0)\r\n'
        lines = raw.cmd(b"r", b'LIST (SUBSCRIBED RECURSIVEMATCH) "" "%"')
        assert b'* LIST (\\HasChildren) "/" "Lists" ("CHILDINFO" ("SUBSCRIBED"))\r\n' in lines
        assert raw.cmd(b"g", b'LIST "" ""')[0] == b'* LIST (\\Noselect) "/" ""\r\n'
        lines = raw.cmd(b"h", b'LSUB "" "*"')
        assert b'* LSUB () "/" "Lists/Python"\r\n' in lines
        assert raw.cmd(b"i", b"NAMESPACE")[0] == b'* NAMESPACE (("" "/")) NIL NIL\r\n'
        assert raw.cmd(b"j", b"ENABLE UTF8=ACCEPT")[0] == b"* ENABLED UTF8=ACCEPT\r\n"
        assert '"Käse"'.encode() in b"".join(raw.cmd(b"k", b'LIST "" "K*"'))
        assert raw.cmd(b"l", b"ID NIL")[0].startswith(b'* ID ("name" "Pillarbox")')
        assert raw.cmd(b"m", b"RENAME Lists Listen")[-1].startswith(b"m OK")
        assert b"Listen/Python" in b"".join(raw.cmd(b"n", b'LIST "" "*"'))
    finally:
        raw.close()


def test_imapclient_flow(server: pbserver.RunningServer) -> None:
    from imapclient import IMAPClient

    client = IMAPClient(
        "127.0.0.1",
        port=server.port("imaps"),
        ssl=True,
        ssl_context=tls_context(server.settings),
        timeout=TIMEOUT,
    )
    try:
        client.login(ALICE, pbserver.PASSWORD)
        assert {b"MOVE", b"UIDPLUS", b"IDLE"} <= set(client.capabilities())
        folders = {f[2] for f in client.list_folders()}
        assert {"INBOX", "Sent", "Drafts", "Trash", "Junk", "Archive"} <= folders
        assert client.find_special_folder(b"\\Sent") == "Sent"
        client.append("INBOX", message("via imapclient"), flags=[b"\\Seen"])
        info = client.select_folder("INBOX")
        assert info[b"EXISTS"] == 1
        uids = client.search(["SUBJECT", "imapclient"])
        assert uids == [1]
        data = client.fetch(uids, ["ENVELOPE", "FLAGS", "RFC822.SIZE"])
        assert data[1][b"ENVELOPE"].subject == b"via imapclient"
        assert b"\\Seen" in data[1][b"FLAGS"]
        client.add_flags(uids, [b"\\Flagged"])
        client.move(uids, "Archive")
        assert client.folder_status("Archive", [b"MESSAGES"])[b"MESSAGES"] == 1
        client.select_folder("Archive")
        client.idle()
        other = imaps(server)
        other.login(ALICE, pbserver.PASSWORD)
        other.select("Archive")
        other.store("1", "+FLAGS", "(\\Answered)")
        other.logout()
        responses = client.idle_check(timeout=5)
        client.idle_done()
        assert any(r[1] == b"FETCH" for r in responses), responses
    finally:
        client.logout()


@pytest.mark.on_disk  # a restart and a deleted index
def test_restart_keeps_uids_and_flags(settings: object) -> None:
    from pillarbox.config import Settings

    assert isinstance(settings, Settings)
    pbserver.add_user(settings, ALICE)
    with pbserver.RunningServer(settings) as server, login(server) as c:
        for i in range(3):
            c.append("INBOX", None, None, message(f"r{i}"))
        c.select("INBOX")
        c.store("2", "+FLAGS", "(\\Seen Important)")
        c.store("1", "+FLAGS", "(\\Deleted)")
        c.expunge()
        uidvalidity = c.response("UIDVALIDITY")
    from pillarbox.store.index import INDEX_FILE
    from pillarbox.store.maildir import user_maildir

    for attempt in ("restart", "index deleted"):
        if attempt == "index deleted":
            for path in user_maildir(settings.mail_dir, ALICE).glob(INDEX_FILE + "*"):
                path.unlink()
        with pbserver.RunningServer(settings) as server, login(server) as c:
            c.select("INBOX")
            assert c.response("UIDVALIDITY") == uidvalidity, attempt
            _, data = c.uid("FETCH", "1:*", "(FLAGS)")
            flags = [d.decode().replace("\\Recent ", "").replace("\\Recent", "") for d in data]
            assert flags == ["1 (UID 2 FLAGS (\\Seen Important))", "2 (UID 3 FLAGS ())"], attempt


def test_logout_and_connection_close(server: pbserver.RunningServer) -> None:
    raw = Raw(server)
    raw.login()
    lines = raw.cmd(b"z", b"LOGOUT")
    assert lines[0].startswith(b"* BYE") and lines[-1].startswith(b"z OK")
    with pytest.raises((ConnectionError, socket.timeout, OSError)):
        raw.line()
    raw.close()


def test_selected_mailbox_deleted_elsewhere(server: pbserver.RunningServer) -> None:
    a, b = Raw(server), Raw(server)
    try:
        a.login()
        b.login()
        a.cmd(b"c", b"CREATE Doomed")
        a.cmd(b"s", b"SELECT Doomed")
        assert b.cmd(b"d", b"DELETE Doomed")[-1].startswith(b"d OK")
        a.send(b"n NOOP\r\n")
        assert a.line() == b"* BYE selected mailbox no longer exists\r\n"
    finally:
        a.close()
        b.close()


def test_foreign_flag_change_survives_a_noop_store(server: pbserver.RunningServer) -> None:
    a, b = Raw(server), Raw(server)
    try:
        a.login()
        b.login()
        for i in range(2):
            msg = message(f"f{i}")
            a.send(b"A%d APPEND INBOX (\\Seen) {%d+}\r\n" % (i, len(msg)) + msg + b"\r\n")
            a.until(b"A%d" % i)
        a.cmd(b"s", b"EXAMINE INBOX")
        a.cmd(b"s2", b"SELECT INBOX")
        b.cmd(b"s", b"SELECT INBOX")
        b.cmd(b"t", b"STORE 2 +FLAGS.SILENT (\\Flagged)")
        # A's STORE changes nothing (1 is already \Seen), but B's change must still arrive.
        lines = a.cmd(b"u", b"STORE 1 +FLAGS.SILENT (\\Seen)")
        assert any(x.startswith(b"* 2 FETCH (FLAGS (") and b"\\Flagged" in x for x in lines), lines
    finally:
        a.close()
        b.close()


def test_concurrent_clients_get_distinct_uids(server: pbserver.RunningServer) -> None:
    from concurrent.futures import ThreadPoolExecutor

    def worker(n: int) -> list[int]:
        uids = []
        with login(server) as c:
            for i in range(8):
                typ, data = c.append("INBOX", None, None, message(f"w{n}-{i}"))
                assert typ == "OK"
                uids.append(int(re.findall(rb"APPENDUID \d+ (\d+)", data[0])[0]))
            c.select("INBOX")
            c.store("1:*", "+FLAGS", "(\\Seen)")
        return uids

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(worker, range(4)))
    everything = sorted(u for r in results for u in r)
    assert everything == list(range(1, 33))  # unique, dense, no UID handed out twice
    with login(server) as c:
        c.select("INBOX")
        assert c.search(None, "UNSEEN") == ("OK", [b""])
