"""Port 25 against the real server over loopback: smtplib, aiosmtplib, swaks and raw sockets.

Covers the MX policy (relay denied, unknown user, sub-addressing, aliases, catch-all), the
protocol defences (STARTTLS injection, bare LF smuggling, overlong and garbage lines, error
budget), limits (size, recipients), durability (the file is in new/ when 250 arrives;
nothing is left by a client that disconnects mid-DATA) and byte-exact storage.
"""

from __future__ import annotations

import os
import random
import re
import shutil
import smtplib
import socket
import ssl
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import aiosmtplib
import pytest

from pillarbox.config import Settings
from tests import pbserver
from tests.mailfiles import delivered

TIMEOUT = 10


@pytest.fixture(scope="module")
def mx(tmp_path_factory: pytest.TempPathFactory) -> Iterator[pbserver.RunningServer]:
    settings = pbserver.make_settings(
        tmp_path_factory.mktemp("mx") / "data",
        {"mailauth": {"verify_inbound": False}, "limits": {"max_recipients": 5}},
    )
    for user in ("alice", "bob", "carol"):
        pbserver.add_user(settings, f"{user}@example.test")
    pbserver.add_alias(settings, "team@example.test", "alice@example.test", "bob@example.test")
    with pbserver.RunningServer(settings) as running:
        yield running


def new_files(settings: Settings, user: str, folder: str = "") -> list[Path]:
    return delivered(settings, user, folder)


def find_message(settings: Settings, user: str, marker: bytes) -> bytes:
    found = [p.read_bytes() for p in new_files(settings, user) if marker in p.read_bytes()]
    assert len(found) == 1, f"{len(found)} messages with {marker!r} for {user}"
    return found[0]


def marker() -> str:
    return uuid.uuid4().hex


def simple_message(mark: str, extra: str = "") -> bytes:
    return (
        f"From: sender@remote.test\r\nTo: alice@example.test\r\nSubject: {mark}\r\n"
        f"Message-ID: <{mark}@remote.test>\r\n{extra}\r\nHello {mark}\r\n"
    ).encode()


def split_prepended(stored: bytes, original: bytes) -> bytes:
    """What we prepended; asserts the rest is the original, byte for byte."""
    assert stored.endswith(original)
    return stored[: len(stored) - len(original)]


class Raw:
    """A raw SMTP client over a socket, for what real clients refuse to send."""

    def __init__(self, port: int):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
        self.file = self.sock.makefile("rb")
        self.expect("220")

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def reply(self) -> str:
        lines = []
        while True:
            line = self.file.readline().decode()
            if not line:
                raise ConnectionError("closed")
            lines.append(line.rstrip("\r\n"))
            if line[3:4] != "-":
                return "\n".join(lines)

    def expect(self, prefix: str) -> str:
        text = self.reply()
        assert text.startswith(prefix), text
        return text

    def closed(self) -> bool:
        self.sock.settimeout(3)
        try:
            return self.sock.recv(1) == b""
        except ConnectionResetError:
            return True

    def close(self) -> None:
        self.file.close()
        self.sock.close()


# -- policy -------------------------------------------------------------------------------


def test_delivery_with_trace_headers_byte_exact(mx: pbserver.RunningServer) -> None:
    mark = marker()
    original = simple_message(mark, "X-Dots: yes\r\n") + b".leading dot\r\n..two\r\n"
    with smtplib.SMTP("127.0.0.1", mx.port("smtp"), timeout=TIMEOUT) as client:
        client.ehlo("client.remote.test")
        client.sendmail("sender@remote.test", ["alice@example.test"], original)
        # 250 came after fsync: the file is already in new/ (nothing to wait for).
        stored = find_message(mx.settings, "alice", mark.encode())
    prepended = split_prepended(stored, original).decode()
    assert prepended.startswith(
        "Return-Path: <sender@remote.test>\r\nDelivered-To: alice@example.test\r\n"
        "X-Pillarbox-Spam: verdict=inbox; "  # the spam filter's verdict (pillarbox.spam)
    )
    assert "\r\nReceived: " in prepended
    assert "from client.remote.test ([127.0.0.1])" in prepended
    assert "by mail.example.test (Pillarbox) with ESMTP id " in prepended
    assert "for <alice@example.test>;" in prepended
    assert not list((mx.settings.mail_dir / "example.test" / "alice" / "tmp").iterdir())


def test_relay_attempt_is_denied(mx: pbserver.RunningServer) -> None:
    with smtplib.SMTP("127.0.0.1", mx.port("smtp"), timeout=TIMEOUT) as client:
        client.ehlo("x.test")
        client.mail("sender@remote.test")
        assert client.rcpt("victim@elsewhere.test") == (554, b"5.7.1 Relay access denied")


def test_unknown_user_and_mixed_recipients(mx: pbserver.RunningServer) -> None:
    mark = marker()
    with smtplib.SMTP("127.0.0.1", mx.port("smtp"), timeout=TIMEOUT) as client:
        refused = client.sendmail(
            "s@remote.test", ["nobody@example.test", "bob@example.test"], simple_message(mark)
        )
    assert refused == {"nobody@example.test": (550, b"5.1.1 No such user here")}
    find_message(mx.settings, "bob", mark.encode())


def test_subaddress_goes_to_the_user(mx: pbserver.RunningServer) -> None:
    mark = marker()
    with smtplib.SMTP("127.0.0.1", mx.port("smtp"), timeout=TIMEOUT) as client:
        client.sendmail("s@remote.test", ["Carol+Lists@Example.TEST"], simple_message(mark))
    stored = find_message(mx.settings, "carol", mark.encode())
    assert b"Delivered-To: carol@example.test\r\n" in stored
    assert b"for <carol+lists@example.test>" in stored


def test_alias_fans_out_one_copy_per_user(mx: pbserver.RunningServer) -> None:
    mark = marker()
    with smtplib.SMTP("127.0.0.1", mx.port("smtp"), timeout=TIMEOUT) as client:
        # team expands to alice and bob; alice also named directly: still one copy each.
        client.sendmail(
            "s@remote.test", ["team@example.test", "alice@example.test"], simple_message(mark)
        )
    assert b"Delivered-To: alice@example.test" in find_message(mx.settings, "alice", mark.encode())
    assert b"Delivered-To: bob@example.test" in find_message(mx.settings, "bob", mark.encode())


def test_postmaster_is_always_accepted(mx: pbserver.RunningServer) -> None:
    # RFC 5321 §4.5.1: no postmaster user or alias here, so the first user (alice) gets it;
    # "<Postmaster>" without a domain is accepted too (§4.1.1.3).
    mark = marker()
    raw = Raw(mx.port("smtp"))
    raw.send(b"EHLO x.test\r\nMAIL FROM:<>\r\nRCPT TO:<Postmaster>\r\nDATA\r\n")
    for prefix in ("250", "250 2.1.0", "250 2.1.5", "354"):
        raw.expect(prefix)
    raw.send(simple_message(mark) + b".\r\n")
    raw.expect("250 2.0.0")
    raw.close()
    assert b"Delivered-To: alice@example.test" in find_message(mx.settings, "alice", mark.encode())


def test_auth_is_never_offered_on_port_25(mx: pbserver.RunningServer) -> None:
    raw = Raw(mx.port("smtp"))
    raw.send(b"EHLO x.test\r\n")
    ehlo = raw.expect("250")
    assert "STARTTLS" in ehlo and "AUTH" not in ehlo and "PIPELINING" in ehlo
    raw.send(b"AUTH PLAIN AGFsaWNlAHg=\r\n")
    raw.expect("503 5.5.1")
    raw.close()


def test_sequence_errors(mx: pbserver.RunningServer) -> None:
    raw = Raw(mx.port("smtp"))
    raw.send(b"MAIL FROM:<a@remote.test>\r\n")
    raw.expect("503 5.5.1 Send EHLO")
    raw.send(b"EHLO x.test\r\nRCPT TO:<alice@example.test>\r\nDATA\r\n")
    raw.expect("250")
    raw.expect("503 5.5.1 Send MAIL first")
    raw.expect("503 5.5.1 Send MAIL first")
    raw.send(b"MAIL FROM:<a@remote.test>\r\nMAIL FROM:<a@remote.test>\r\nDATA\r\n")
    raw.expect("250")
    raw.expect("503 5.5.1 Sender already")
    raw.expect("503 5.5.1 Send RCPT first")
    raw.send(b"VRFY alice\r\nNOOP\r\nRSET\r\nQUIT\r\n")
    raw.expect("252")
    raw.expect("250")
    raw.expect("250")
    raw.expect("221")
    raw.close()


def test_pipelined_transaction_gets_every_reply(mx: pbserver.RunningServer) -> None:
    mark = marker()
    raw = Raw(mx.port("smtp"))
    raw.send(
        b"EHLO x.test\r\nMAIL FROM:<a@remote.test> BODY=8BITMIME RET=HDRS ENVID=e1\r\n"
        b"RCPT TO:<alice@example.test> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;alice@example.test\r\n"
        b"RCPT TO:<nobody@example.test>\r\nDATA\r\n"
    )
    for prefix in ("250", "250 2.1.0", "250 2.1.5", "550 5.1.1", "354"):
        raw.expect(prefix)
    raw.send(simple_message(mark) + b".\r\nQUIT\r\n")
    assert "queued as" in raw.expect("250 2.0.0")
    raw.expect("221")
    raw.close()
    find_message(mx.settings, "alice", mark.encode())


def test_bdat_chunking(mx: pbserver.RunningServer) -> None:
    mark = marker()
    original = simple_message(mark) + b"bare\nLF is fine in BDAT\r\n.\r\n"
    raw = Raw(mx.port("smtp"))
    assert "CHUNKING" in (raw.send(b"EHLO x.test\r\n") or raw.expect("250"))
    raw.send(b"MAIL FROM:<a@remote.test> BODY=BINARYMIME\r\nRCPT TO:<alice@example.test>\r\n")
    raw.expect("250")
    raw.expect("250")
    half = len(original) // 2
    raw.send(b"BDAT %d\r\n" % half + original[:half])
    raw.expect("250 2.0.0 Chunk")
    raw.send(b"BDAT %d LAST\r\n" % (len(original) - half) + original[half:] + b"DATA\r\n")
    raw.expect("250 2.0.0 OK: queued")
    raw.expect("503")  # DATA without a transaction
    raw.close()
    split_prepended(find_message(mx.settings, "alice", mark.encode()), original)


def test_swaks_with_starttls(mx: pbserver.RunningServer) -> None:
    if not shutil.which("swaks"):
        pytest.skip("swaks not installed")
    mark = marker()
    result = subprocess.run(
        ["swaks", "--server", f"127.0.0.1:{mx.port('smtp')}", "--tls", "--tls-verify",
         "--tls-ca-path", str(mx.settings.tls.ca), "--tls-sni", "mail.example.test",
         "--from", "sender@remote.test", "--to", "bob@example.test",
         "--header", f"Subject: {mark}", "--helo", "swaks.remote.test", "--timeout", "10"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    stored = find_message(mx.settings, "bob", mark.encode())
    assert b"with ESMTPS id" in stored
    assert b"(using TLSv1.3 with cipher TLS_" in stored


# -- defences -------------------------------------------------------------------------------


def test_starttls_discards_pipelined_plaintext(mx: pbserver.RunningServer) -> None:
    raw = Raw(mx.port("smtp"))
    raw.send(b"EHLO x.test\r\n")
    raw.expect("250")
    # The 2011 injection: commands after STARTTLS in the same packet must not survive TLS.
    raw.send(b"STARTTLS\r\nMAIL FROM:<evil@remote.test>\r\n")
    raw.expect("220 2.0.0")
    context = ssl.create_default_context(cafile=str(mx.settings.tls.ca))
    tls = context.wrap_socket(raw.sock, server_hostname="mail.example.test")
    file = tls.makefile("rb")
    tls.sendall(b"EHLO x.test\r\nRCPT TO:<alice@example.test>\r\n")
    ehlo = []
    while not ehlo or ehlo[-1][3:4] == b"-":
        ehlo.append(file.readline())
    assert ehlo[0].startswith(b"250-") and b"STARTTLS" not in b"".join(ehlo)
    assert file.readline().startswith(b"503 5.5.1 Send MAIL first")
    tls.close()


def test_bare_lf_smuggling_is_refused(mx: pbserver.RunningServer) -> None:
    mark = marker()
    raw = Raw(mx.port("smtp"))
    raw.send(
        b"EHLO x.test\r\nMAIL FROM:<a@remote.test>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\n"
    )
    for prefix in ("250", "250", "250", "354"):
        raw.expect(prefix)
    raw.send(
        f"Subject: {mark}\r\n\r\nfirst\n.\r\nMAIL FROM:<admin@example.test>\r\n"
        f"RCPT TO:<bob@example.test>\r\nDATA\r\nSubject: smuggled {mark}\r\n\r\nx\r\n.\r\n".encode()
    )
    raw.expect("521 5.5.2")
    assert raw.closed()
    raw.close()
    for user in ("alice", "bob"):
        assert not [p for p in new_files(mx.settings, user) if mark.encode() in p.read_bytes()]


def test_garbage_and_overlong_lines(mx: pbserver.RunningServer) -> None:
    raw = Raw(mx.port("smtp"))
    raw.send(b"\x16\x03\x01garbage\r\nXYZZY\r\n" + b"NOOP " + b"A" * 5000 + b"\r\nNOOP\r\n")
    raw.expect("500 5.5.2 Syntax")
    raw.expect("500 5.5.2 Syntax")
    raw.expect("500 5.5.2 Line too long")
    raw.expect("250")
    raw.close()


def test_http_request_is_dropped(mx: pbserver.RunningServer) -> None:
    raw = Raw(mx.port("smtp"))
    raw.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert raw.closed()
    raw.close()


def test_disconnect_mid_data_leaves_nothing(mx: pbserver.RunningServer) -> None:
    mark = marker()
    before = len(new_files(mx.settings, "carol"))
    raw = Raw(mx.port("smtp"))
    raw.send(
        b"EHLO x.test\r\nMAIL FROM:<a@remote.test>\r\nRCPT TO:<carol@example.test>\r\nDATA\r\n"
    )
    for prefix in ("250", "250", "250", "354"):
        raw.expect(prefix)
    raw.send(f"Subject: {mark}\r\n\r\n".encode() + b"x" * 70 + b"\r\n" * 1 + b"y" * 600_000)
    raw.close()
    time.sleep(0.3)
    assert len(new_files(mx.settings, "carol")) == before
    tmp = mx.settings.mail_dir / "example.test" / "carol" / "tmp"
    assert not tmp.exists() or not list(tmp.iterdir())
    spool = mx.settings.data_dir / "spool" / "smtp"
    deadline = time.monotonic() + 3
    while list(spool.iterdir()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert list(spool.iterdir()) == []


# -- content --------------------------------------------------------------------------------


def test_smtputf8_message_stored_byte_exact(mx: pbserver.RunningServer) -> None:
    mark = marker()
    original = (
        f"From: Jörg <jörg@bücher.test>\r\nTo: alice@example.test\r\nSubject: Grüße {mark}\r\n"
        "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n"
        "Content-Transfer-Encoding: 8bit\r\n\r\nSchöne Grüße, 日本語 ✉\r\n"
    ).encode()
    with smtplib.SMTP("127.0.0.1", mx.port("smtp"), timeout=TIMEOUT) as client:
        client.ehlo("x.test")
        assert client.has_extn("smtputf8")
        client.sendmail(
            "jörg@bücher.test", ["alice@example.test"], original, mail_options=["SMTPUTF8"]
        )
    stored = find_message(mx.settings, "alice", mark.encode())
    prepended = split_prepended(stored, original)
    assert "Return-Path: <jörg@bücher.test>".encode() in prepended
    assert b"with UTF8SMTP id" in prepended


def test_utf8_address_needs_smtputf8(mx: pbserver.RunningServer) -> None:
    raw = Raw(mx.port("smtp"))
    raw.send("EHLO x.test\r\nMAIL FROM:<jörg@bücher.test>\r\n".encode())
    raw.expect("250")
    raw.expect("553 5.6.7")
    raw.close()


def test_ten_megabyte_attachment_byte_exact(mx: pbserver.RunningServer) -> None:
    mark = marker()
    line = b"QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVphYmNkZWZnaGlqa2xtbm9wcXJzdHV2d3h5ejAx\r\n"
    body = line * (10 * 1024 * 1024 // len(line))
    original = (
        (
            f"From: s@remote.test\r\nSubject: {mark}\r\nMIME-Version: 1.0\r\n"
            'Content-Type: multipart/mixed; boundary="b"\r\n\r\n--b\r\n'
            "Content-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\n"
        ).encode()
        + body
        + b"--b--\r\n"
    )
    with smtplib.SMTP("127.0.0.1", mx.port("smtp"), timeout=30) as client:
        client.sendmail("s@remote.test", ["bob@example.test"], original)
    path = next(p for p in new_files(mx.settings, "bob") if mark.encode() in p.read_bytes()[:4096])
    split_prepended(path.read_bytes(), original)
    os.unlink(path)  # keep the module's data dir small


async def test_implicit_tls_port_465_with_aiosmtplib(mx: pbserver.RunningServer) -> None:
    context = ssl.create_default_context(cafile=str(mx.settings.tls.ca))
    client = aiosmtplib.SMTP(
        hostname="127.0.0.1", port=mx.port("submissions"), use_tls=True, tls_context=context,
        timeout=TIMEOUT,
    )  # fmt: skip
    await client.connect()
    code, text = await client.ehlo()
    assert code == 250 and "AUTH PLAIN LOGIN" in text and "STARTTLS" not in text
    with pytest.raises(aiosmtplib.SMTPSenderRefused) as info:
        await client.mail("alice@example.test")
    assert info.value.code == 530
    await client.quit()


# -- limits (a second server with small limits) ----------------------------------------------


@pytest.fixture(scope="module")
def strict(tmp_path_factory: pytest.TempPathFactory) -> Iterator[pbserver.RunningServer]:
    settings = pbserver.make_settings(
        tmp_path_factory.mktemp("strict") / "data",
        {
            "mailauth": {"verify_inbound": False},
            "delivery": {"max_message_size": 100_000},
            "limits": {
                "max_recipients": 3,
                "max_bad_commands": 3,
                "max_commands": 30,
                "idle_timeout": 1,
                "max_connections_per_ip": 4,
            },
        },
    )
    pbserver.add_user(settings, "alice@example.test")
    pbserver.add_alias(settings, "@example.test", "alice@example.test")
    with pbserver.RunningServer(settings) as running:
        yield running


def test_oversize_is_refused_and_nothing_stored(strict: pbserver.RunningServer) -> None:
    mark = marker()
    big = simple_message(mark) + b"z" * 76 + b"\r\n" * 1 + (b"y" * 76 + b"\r\n") * 2000
    with smtplib.SMTP("127.0.0.1", strict.port("smtp"), timeout=TIMEOUT) as client:
        client.ehlo("x.test")
        assert client.esmtp_features["size"] == "100000"
        # Without SIZE= (smtplib would declare it): the data itself is too big.
        assert client.mail("s@remote.test")[0] == 250
        assert client.rcpt("alice@example.test")[0] == 250
        code, text = client.data(big)
        assert (code, text[:5]) == (552, b"5.3.4")
        # The SIZE declaration is checked at MAIL already (RFC 1870).
        assert client.mail("s@remote.test", ["SIZE=200000"])[0] == 552
        assert client.noop()[0] == 250  # the session goes on
    assert not [p for p in new_files(strict.settings, "alice") if mark.encode() in p.read_bytes()]


def test_too_many_recipients(strict: pbserver.RunningServer) -> None:
    with smtplib.SMTP("127.0.0.1", strict.port("smtp"), timeout=TIMEOUT) as client:
        client.ehlo("x.test")
        client.mail("s@remote.test")
        codes = [client.rcpt(f"u{i}@example.test")[0] for i in range(4)]  # the catch-all
    assert codes == [250, 250, 250, 452]


def test_bad_command_budget_ends_in_421(strict: pbserver.RunningServer) -> None:
    raw = Raw(strict.port("smtp"))
    raw.send(b"FOO\r\nBAR\r\nBAZ\r\nNOOP\r\n")
    raw.expect("500")
    raw.expect("500")
    raw.expect("500")
    raw.expect("421 4.7.0")
    assert raw.closed()
    raw.close()


def test_command_count_limit(strict: pbserver.RunningServer) -> None:
    raw = Raw(strict.port("smtp"))
    raw.send(b"NOOP\r\n" * 31)
    for _ in range(30):
        raw.expect("250")
    raw.expect("421 4.7.0 Too many commands")
    raw.close()


def test_idle_timeout_ends_in_421(strict: pbserver.RunningServer) -> None:
    raw = Raw(strict.port("smtp"))
    started = time.monotonic()
    raw.expect("421 4.4.2")
    assert 0.8 < time.monotonic() - started < 5
    assert raw.closed()
    raw.close()


def test_connections_per_ip_are_capped(strict: pbserver.RunningServer) -> None:
    clients = [Raw(strict.port("smtp")) for _ in range(4)]
    try:
        with socket.create_connection(("127.0.0.1", strict.port("smtp")), timeout=TIMEOUT) as extra:
            assert extra.makefile("rb").readline().startswith(b"421 4.7.0")
    finally:
        for client in clients:
            client.close()


def test_shutdown_says_421_to_idle_sessions(tmp_path: Path) -> None:
    settings = pbserver.make_settings(tmp_path / "data", {"mailauth": {"verify_inbound": False}})
    running = pbserver.RunningServer(settings)
    try:
        raw = Raw(running.port("smtp"))
        raw.send(b"EHLO x.test\r\n")
        raw.expect("250")
    finally:
        running.stop()
    raw.expect("421 4.3.2")
    assert raw.closed()
    raw.close()


def test_random_input_gets_well_formed_replies(mx: pbserver.RunningServer) -> None:
    rng = random.Random(5321)
    verbs = [b"EHLO", b"HELO", b"MAIL FROM:", b"RCPT TO:", b"DATA", b"BDAT", b"AUTH", b"RSET", b""]
    raw = Raw(mx.port("smtp"))
    for _ in range(8):  # under the bad-command budget of 10
        noise = bytes(rng.randrange(32, 127) for _ in range(rng.randrange(0, 40)))
        raw.send(rng.choice(verbs) + b" " + noise.replace(b"\r", b"").replace(b"\n", b"") + b"\r\n")
        reply = raw.reply()
        assert re.match(r"^[245]\d\d[ -]", reply), reply
        if reply.startswith("354"):
            raw.send(b".\r\n")
            assert re.match(r"^[245]\d\d ", raw.reply())
    raw.send(b"QUIT\r\n")
    raw.expect("221")
    raw.close()


def test_shutdown_lets_a_data_transfer_finish(tmp_path: Path) -> None:
    settings = pbserver.make_settings(tmp_path / "data", {"mailauth": {"verify_inbound": False}})
    pbserver.add_user(settings, "alice@example.test")
    running = pbserver.RunningServer(settings)
    mark = marker()
    try:
        raw = Raw(running.port("smtp"))
        raw.send(
            b"EHLO x.test\r\nMAIL FROM:<a@remote.test>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\n"
        )
        for prefix in ("250", "250", "250", "354"):
            raw.expect(prefix)
        raw.send(simple_message(mark)[:20])
        stopping = threading.Thread(target=running.stop)
        stopping.start()
        time.sleep(0.3)
        raw.send(simple_message(mark)[20:] + b".\r\n")
        raw.expect("250 2.0.0")
        raw.expect("421 4.3.2")
        stopping.join(10)
    finally:
        running.stop()
    raw.close()
    find_message(settings, "alice", mark.encode())


def test_quoted_local_parts_and_address_literals(mx: pbserver.RunningServer) -> None:
    mark = marker()
    with smtplib.SMTP("127.0.0.1", mx.port("smtp"), timeout=TIMEOUT) as client:
        client.ehlo("x.test")
        client.mail("s@remote.test")
        assert client.rcpt('"alice"@example.test')[0] == 250  # the same mailbox as alice
        assert client.rcpt('"no body"@example.test')[:1] == (550,)
        assert client.rcpt("x@[192.0.2.1]") == (554, b"5.7.1 Relay access denied")
        assert client.data(simple_message(mark))[0] == 250
    find_message(mx.settings, "alice", mark.encode())
