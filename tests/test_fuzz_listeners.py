"""Every listener of a real ``pillarbox serve`` under seeded socket-level fuzzing.

For each listener (smtp, submission, submissions, imap, imaps, pop3, pop3s, http, https)
many short connections from several loopback source addresses send a mix of random bytes
and mutated real dialogues: truncated, duplicated and huge commands, NUL/CR/LF/8-bit bytes,
absurd sizes and literals ({99999999999}), BDAT chunks of the wrong size, real and
half-done STARTTLS/TLS handshakes, pipelined garbage, abrupt closes (FIN, RST, half-close)
at random points. Afterwards:

1. the server process is alive and every listener still serves a normal session (SMTP
   EHLO/QUIT, a delivery through submission fetched back over IMAPS, IMAP STARTTLS +
   LOGIN/SELECT/LOGOUT, POP3 USER/PASS/STAT/QUIT, the MTA-STS policy over HTTPS, the
   HTTP -> HTTPS redirect);
2. the server log has no "session crashed", "command failed", "Traceback", "Task
   exception" or "Exception in callback" line;
3. every reply the server sent during fuzzing was protocol-shaped (SMTP: a 3-digit code
   then space or hyphen; IMAP: "*", "+" or a tagged OK/NO/BAD, literals skipped; POP3:
   +OK/-ERR/"+" continuation, data only inside the multi-line replies, dot-stuffed; HTTP:
   a status line), up to the point where a STARTTLS switched the stream to TLS;
4. the server's open file descriptors return near their baseline.

Every connection's input is a pure function of (seed, listener, index): a failure names
them, and ``PILLARBOX_FUZZ_SEEDS=7 PILLARBOX_FUZZ_ONLY=12`` replays just that connection.
A longer hunt: ``PILLARBOX_FUZZ_SEEDS=$(seq -s, 100 140) PILLARBOX_FUZZ_BUDGET=120``.
"""

from __future__ import annotations

import base64
import contextlib
import imaplib
import os
import poplib
import random
import re
import smtplib
import socket
import ssl
import struct
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from email.message import EmailMessage

import pytest

from tests import pbserver

SEEDS = tuple(
    int(s) for s in os.environ.get("PILLARBOX_FUZZ_SEEDS", "11,23,37").split(",") if s.strip()
)
ONLY = int(os.environ["PILLARBOX_FUZZ_ONLY"]) if os.environ.get("PILLARBOX_FUZZ_ONLY") else None
CONNECTIONS_PER_SEED = 22
WORKERS = 12
# Wall-clock budget for the fuzzing of one listener; connections not started by then are
# skipped (inputs stay reproducible, only fewer of them run on a very slow machine).
FUZZ_BUDGET = float(os.environ.get("PILLARBOX_FUZZ_BUDGET", "5"))
SOURCES = ("127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5")
CONNECT_TIMEOUT = 3.0
TLS_TIMEOUT = 3.0
SETTLE = 0.25  # the last read of a connection waits this long for more bytes
RECEIVE_CAP = 1 << 20
FD_SLACK = 8

ALICE = "alice@example.test"
FUZZER = "fuzz@example.test"
PASSWORD = pbserver.PASSWORD
HOSTNAME = pbserver.HOSTNAME

LISTENERS = (
    "smtp",
    "submission",
    "submissions",
    "imap",
    "imaps",
    "pop3",
    "pop3s",
    "http",
    "https",
)
PROTOCOL = {
    "smtp": "smtp",
    "submission": "smtp",
    "submissions": "smtp",
    "imap": "imap",
    "imaps": "imap",
    "pop3": "pop3",
    "pop3s": "pop3",
    "http": "http",
    "https": "http",
}
IMPLICIT_TLS = {"submissions", "imaps", "pop3s", "https"}
STARTTLS_CAPABLE = {"submission", "smtp", "imap", "pop3"}
BAD_LOG_MARKERS = (
    "session crashed",
    "command failed",
    "Traceback",
    "Task exception",
    "Exception in callback",
)


# -- the server --------------------------------------------------------------------------


@dataclass
class Fuzzed:
    server: pbserver.SubprocessServer
    tls: ssl.SSLContext  # verifying, for the health checks
    loose: ssl.SSLContext  # not verifying, for the fuzzer
    hello: bytes  # a real TLS ClientHello record, to mutate

    @property
    def pid(self) -> int:
        return self.server.proc.pid

    def port(self, listener: str) -> int:
        return self.server.port(listener)


def client_hello(context: ssl.SSLContext) -> bytes:
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname=HOSTNAME)
    with contextlib.suppress(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fuzzed]:
    settings = pbserver.make_settings(
        tmp_path_factory.mktemp("fuzz") / "data",
        {
            "listen": {"pop3": "127.0.0.1:0", "pop3s": "127.0.0.1:0"},
            "limits": {
                "auth_failure_delay": 0.01,
                "auth_max_delay": 0.05,
                "ban_exempt": ["127.0.0.0/8", "::1/128"],
            },
            # Port 25 deliveries without DNS lookups (nothing here is about mail auth).
            "mailauth": {"verify_inbound": False},
        },
    )
    pbserver.add_user(settings, ALICE)
    pbserver.add_user(settings, FUZZER)
    assert settings.tls.ca is not None
    tls = ssl.create_default_context(cafile=str(settings.tls.ca))
    loose = ssl.create_default_context(cafile=str(settings.tls.ca))
    loose.check_hostname = False
    loose.verify_mode = ssl.CERT_NONE
    with pbserver.SubprocessServer(settings) as server:
        state = Fuzzed(server, tls, loose, client_hello(loose))
        health_check(state)  # warm up: thread pools, indexes, caches
        yield state


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def open_files(pid: int) -> list[str]:
    names = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            names.append(os.readlink(f"/proc/{pid}/fd/{fd}"))
    return sorted(names)


# -- one fuzz connection ------------------------------------------------------------------

# A script is a list of steps: ("send", bytes), ("read", b""), ("starttls", command),
# ("sleep", b"") and a final ("close", b"fin" | b"rst" | b"half").
Step = tuple[str, bytes]


@dataclass
class Outcome:
    listener: str
    seed: int
    index: int
    sent: bytearray = field(default_factory=bytearray)
    received: bytearray = field(default_factory=bytearray)
    # Bytes of ``received`` that are not protocol text (TLS records on an implicit-TLS
    # port that was never handshaken): the shape check does not apply.
    opaque: bool = False
    upgraded_at: int | None = None
    error: str = ""

    def where(self) -> str:
        return (
            f"listener={self.listener} seed={self.seed} index={self.index} "
            f"(replay: PILLARBOX_FUZZ_SEEDS={self.seed} PILLARBOX_FUZZ_ONLY={self.index})"
        )


class FuzzConn:
    def __init__(self, sock: socket.socket, outcome: Outcome):
        self.sock = sock
        self.outcome = outcome
        self.eof = False

    def send(self, data: bytes) -> None:
        self.outcome.sent += data
        self.sock.sendall(data)

    def read(self, wait: float) -> None:
        """Whatever arrives until ``wait`` seconds pass without a byte (or EOF)."""
        while not self.eof and len(self.outcome.received) < RECEIVE_CAP:
            self.sock.settimeout(wait)
            try:
                data = self.sock.recv(65536)
            except (TimeoutError, ssl.SSLWantReadError):
                return
            if not data:
                self.eof = True
                return
            self.outcome.received += data

    def read_line_after(self, mark: int, final: Callable[[bytes], bool], wait: float) -> bytes:
        """The first line at or after ``mark`` that ``final`` accepts (b"" if none came)."""
        deadline = time.monotonic() + wait
        while True:
            buf = bytes(self.outcome.received)
            start = buf.rfind(b"\n", 0, mark) + 1
            for line in buf[start:].split(b"\r\n")[:-1]:
                if final(line):
                    return line
            if self.eof or time.monotonic() > deadline:
                return b""
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                data = self.sock.recv(65536)
            except (TimeoutError, ssl.SSLWantReadError):
                return b""
            if not data:
                self.eof = True
                return b""
            self.outcome.received += data

    def upgrade(self, context: ssl.SSLContext) -> None:
        self.sock.settimeout(TLS_TIMEOUT)
        self.sock = context.wrap_socket(self.sock, server_hostname=HOSTNAME)
        self.outcome.upgraded_at = len(self.outcome.received)


def starttls_reply(protocol: str, command: bytes) -> tuple[Callable[[bytes], bool], bytes]:
    """Which reply line answers ``command``, and the prefix that means "go ahead"."""
    if protocol == "smtp":
        return (lambda line: re.match(rb"\d{3} ", line) is not None), b"220"
    if protocol == "pop3":
        return (lambda line: line.startswith((b"+OK", b"-ERR"))), b"+OK"
    tag = command.split(b" ", 1)[0] + b" "
    return (lambda line: line.startswith(tag)), tag + b"OK"


def run_connection(state: Fuzzed, listener: str, seed: int, index: int) -> Outcome:
    rng = random.Random(f"{seed}:{listener}:{index}")
    protocol = PROTOCOL[listener]
    outcome = Outcome(listener, seed, index)
    source = rng.choice(SOURCES)
    implicit = listener in IMPLICIT_TLS
    handshake = not implicit or rng.random() < 0.7
    script: list[Step] = (
        make_script(rng, listener) if handshake else [("send", tls_mutation(rng, state.hello))]
    )
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    conn = FuzzConn(sock, outcome)
    ending = b"fin"
    try:
        sock.settimeout(CONNECT_TIMEOUT)
        sock.bind((source, 0))
        sock.connect(("127.0.0.1", state.port(listener)))
        if implicit:
            if handshake:
                conn.upgrade(state.loose)
            else:
                outcome.opaque = True
        if protocol != "http" and (handshake or not implicit):
            conn.read(0.05)  # the greeting, most of the time
        for kind, data in script:
            if kind == "send":
                conn.send(data)
            elif kind == "trickle":
                for piece in split_randomly(rng, data):
                    conn.send(piece)
                    time.sleep(rng.choice((0.0, 0.001, 0.005)))
            elif kind == "read":
                conn.read(0.03)
            elif kind == "sleep":
                time.sleep(0.02)
            elif kind == "starttls":
                conn.read(0.05)
                mark = len(outcome.received)
                conn.send(data)
                final, go = starttls_reply(protocol, data)
                if conn.read_line_after(mark, final, 1.0).startswith(go):
                    conn.upgrade(state.loose)
            elif kind == "close":
                ending = data
                break
        if ending == b"half":
            # A TCP FIN without a TLS close_notify: socket.socket's shutdown, since
            # SSLSocket.shutdown also drops the TLS layer (later reads would be raw).
            socket.socket.shutdown(conn.sock, socket.SHUT_WR)
        if ending != b"rst":
            conn.read(SETTLE)
    except (OSError, ssl.SSLError, ValueError) as exc:
        outcome.error = f"{type(exc).__name__}: {exc}"
    finally:
        if ending == b"rst":
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        with contextlib.suppress(OSError):
            conn.sock.close()
        sock.close()
    return outcome


def split_randomly(rng: random.Random, data: bytes) -> list[bytes]:
    pieces, pos = [], 0
    while pos < len(data):
        step = rng.choice((1, 2, 3, 7, 50, 500, 4096))
        pieces.append(data[pos : pos + step])
        pos += step
    return pieces[:400] if len(pieces) > 400 else pieces


# -- mutations ----------------------------------------------------------------------------

SPECIAL = (b"\x00", b"\r", b"\n", b"\r\n", b"\xff", b"\xc3\xa9", b"\x1b[0m", b"\x7f", b"\t")
ABSURD = (b"99999999999", b"18446744073709551616", b"-1", b"0", b"4294967296", b"1e9")


def mutate(rng: random.Random, line: bytes) -> bytes:
    kind = rng.randrange(11)
    if kind == 0 and line:
        return line[: rng.randrange(len(line))]  # truncated
    if kind == 1:
        return line * rng.randint(2, 4)  # duplicated
    if kind == 2:
        at = rng.randrange(len(line) + 1)
        return line[:at] + rng.choice(SPECIAL) + line[at:]
    if kind == 3:  # huge
        size = rng.choice((600, 3000, 12000, 70000, 200000))
        at = rng.randrange(len(line) + 1)
        return line[:at] + bytes([rng.randrange(33, 127)]) * size + line[at:]
    if kind == 4:
        return line.rstrip(b"\r\n") + b"\n"  # bare LF
    if kind == 5:
        return line.rstrip(b"\r\n")  # no line end yet
    if kind == 6 and line:
        at = rng.randrange(len(line))
        return line[:at] + bytes([rng.randrange(256)]) + line[at + 1 :]
    if kind == 7:
        return line.swapcase()
    if kind == 8:
        return re.sub(rb"\d+", rng.choice(ABSURD), line) if re.search(rb"\d", line) else line
    if kind == 9:
        return rng.randbytes(rng.randint(1, 300))
    return line.replace(b" ", b"  ") if rng.random() < 0.5 else line.replace(b" ", b"\t")


def tls_mutation(rng: random.Random, hello: bytes) -> bytes:
    """Bytes a broken TLS client might send as its first flight."""
    kind = rng.randrange(7)
    if kind == 0:
        return hello[: rng.randrange(1, len(hello))]  # half a ClientHello, then nothing
    if kind == 1:
        data = bytearray(hello)
        for _ in range(rng.randint(1, 8)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        return bytes(data)
    if kind == 2:
        return b"\x16\x03\x01\xff\xff" + rng.randbytes(rng.randint(0, 2000))  # huge record
    if kind == 3:
        return b"\x80\x2e\x01\x00\x02\x00\x15\x00\x00\x00\x10" + rng.randbytes(40)  # SSLv2
    if kind == 4:
        return hello + rng.randbytes(rng.randint(1, 3000))  # a hello, then noise
    if kind == 5:
        return rng.choice(
            (b"EHLO x\r\n", b"a1 LOGIN a b\r\n", b"USER x\r\n", b"GET / HTTP/1.1\r\n")
        )
    return rng.randbytes(rng.randint(1, 4000))


# -- dialogues ----------------------------------------------------------------------------


def b64(data: bytes) -> bytes:
    return base64.b64encode(data)


def plain(user: str, password: str) -> bytes:
    return b64(b"\0" + user.encode() + b"\0" + password.encode())


def message_body(rng: random.Random) -> bytes:
    lines = [
        f"From: {FUZZER}".encode(),
        f"To: {FUZZER}".encode(),
        b"Subject: fuzz " + rng.randbytes(4).hex().encode(),
        b"",
        b"body line",
        b".leading dot",
    ]
    if rng.random() < 0.3:
        lines.append(b"8bit \xc3\xa9 \xff")
    if rng.random() < 0.2:
        lines.append(b"x" * rng.choice((999, 10001, 70000)))
    if rng.random() < 0.2:
        lines.append(b"smuggle\n.\nMAIL FROM:<x@y>")  # bare LF dot (SMTP smuggling)
    return b"\r\n".join(lines) + b"\r\n"


def smtp_items(rng: random.Random) -> list[bytes]:
    password = PASSWORD if rng.random() < 0.5 else "wrong password"
    chunk = rng.randbytes(rng.randint(0, 50))
    claimed = rng.choice((len(chunk), len(chunk) + rng.randint(1, 40), 0, 99999999999))
    return [
        b"EHLO fuzz.example\r\n",
        b"HELO fuzz.example\r\n",
        f"MAIL FROM:<{FUZZER}>\r\n".encode(),
        b"MAIL FROM:<> SIZE=99999999999999999\r\n",
        f"MAIL FROM:<{FUZZER}> BODY=8BITMIME SMTPUTF8 RET=HDRS ENVID=x\r\n".encode(),
        f"RCPT TO:<{FUZZER}>\r\n".encode(),
        f"RCPT TO:<{FUZZER}> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;{FUZZER}\r\n".encode(),
        b"RCPT TO:<nobody@elsewhere.test>\r\n",
        b'RCPT TO:<"quoted local"@example.test>\r\n',
        b"DATA\r\n" + message_body(rng) + b".\r\n",
        b"DATA\r\n" + message_body(rng),  # never finished
        b"BDAT " + str(claimed).encode() + b"\r\n" + chunk,
        b"BDAT " + str(claimed).encode() + b" LAST\r\n" + chunk,
        b"BDAT 99999999999 LAST\r\n",
        b"BDAT 0 LAST\r\n",
        b"BDAT -5\r\n",
        b"RSET\r\n",
        b"NOOP\r\n",
        b"VRFY alice\r\n",
        b"EXPN list\r\n",
        b"HELP\r\n",
        b"AUTH PLAIN " + plain(FUZZER, password) + b"\r\n",
        b"AUTH PLAIN\r\n" + plain(FUZZER, password) + b"\r\n",
        b"AUTH LOGIN\r\n" + b64(FUZZER.encode()) + b"\r\n" + b64(password.encode()) + b"\r\n",
        b"AUTH PLAIN\r\n*\r\n",
        b"AUTH PLAIN ====\r\n",
        b"AUTH CRAM-MD5\r\n",
        b"STARTTLS\r\n",
        b"STARTTLS\r\nEHLO injected\r\n",  # pipelined after STARTTLS (CVE-2011-0411 style)
        b"QUIT\r\n",
    ]


def imap_items(rng: random.Random) -> list[bytes]:
    t = f"f{rng.randrange(1000)}".encode()
    password = PASSWORD if rng.random() < 0.5 else "wrong password"
    user = FUZZER.encode()
    literal = rng.randbytes(rng.randint(0, 40))
    return [
        t + b" CAPABILITY\r\n",
        t + b" NOOP\r\n",
        t + b" LOGIN " + user + b' "' + password.encode() + b'"\r\n',
        t + b" LOGIN {" + str(len(user)).encode() + b"+}\r\n" + user + b" {3+}\r\nabc\r\n",
        t + b" LOGIN {99999999999}\r\n",
        t + b" LOGIN {99999999999+}\r\nx\r\n",
        t + b" AUTHENTICATE PLAIN\r\n" + plain(FUZZER, password) + b"\r\n",
        t + b" AUTHENTICATE PLAIN " + plain(FUZZER, password) + b"\r\n",
        t + b" AUTHENTICATE PLAIN\r\n*\r\n",
        t + b" AUTHENTICATE LOGIN\r\n" + b64(user) + b"\r\n",
        t + b" STARTTLS\r\n",
        t + b" SELECT INBOX\r\n",
        t + b" EXAMINE INBOX (CONDSTORE)\r\n",
        t + b' LIST "" "*"\r\n',
        t + b' LIST (SUBSCRIBED) "" "%" RETURN (CHILDREN STATUS (MESSAGES))\r\n',
        t + b" STATUS INBOX (MESSAGES UIDNEXT UNSEEN HIGHESTMODSEQ)\r\n",
        t + b" FETCH 1:* (FLAGS UID RFC822.SIZE BODY.PEEK[HEADER] BODYSTRUCTURE ENVELOPE)\r\n",
        t + b" UID FETCH 1:* (BODY.PEEK[]<0.200> BINARY.PEEK[1])\r\n",
        t + b" FETCH 4294967295:* (BODY[1.2.3.MIME])\r\n",
        t + b" SEARCH CHARSET UTF-8 TEXT {4+}\r\n\xc3\xa9t\xc3\r\n",
        t + b" UID SEARCH OR SEEN (NOT DELETED) LARGER 99999999999\r\n",
        t + b" STORE 1:* +FLAGS (\\Seen $Fuzz)\r\n",
        t + b" COPY 1 Trash\r\n",
        t + b" APPEND INBOX {99999999999}\r\n",
        t + b" APPEND INBOX {99999999999+}\r\nabc",
        t
        + b" APPEND INBOX (\\Seen) {"
        + str(len(literal)).encode()
        + b"+}\r\n"
        + literal
        + b"\r\n",
        t + b" APPEND INBOX {" + str(len(literal) + 7).encode() + b"}\r\n" + literal + b"\r\n",
        t + b" IDLE\r\n",
        b"DONE\r\n",
        t + b' ID ("name" "fuzz" "version" NIL)\r\n',
        t + b" ENABLE CONDSTORE UTF8=ACCEPT QRESYNC\r\n",
        t + b" NAMESPACE\r\n",
        t + b" CREATE fuzz/" + rng.randbytes(3).hex().encode() + b"\r\n",
        t + b' RENAME "fuzz" "fuzz2"\r\n',
        t + b" DELETE fuzz2\r\n",
        t + b" UID EXPUNGE 1:2\r\n",
        t + b" CLOSE\r\n",
        t + b" UNSELECT\r\n",
        t + b" (((((((((((((((((((((\r\n",
        t + b' FETCH 1 (BODY[HEADER.FIELDS ("' + b"a" * 500 + b'")])\r\n',
        b"* OK not a client line\r\n",
        b"+ \r\n",
        t + b" LOGOUT\r\n",
    ]


def pop3_items(rng: random.Random) -> list[bytes]:
    password = PASSWORD if rng.random() < 0.5 else "wrong password"
    return [
        b"CAPA\r\n",
        f"USER {FUZZER}\r\n".encode(),
        f"PASS {password}\r\n".encode(),
        b"PASS\r\n",
        b"APOP fuzz 0123456789abcdef0123456789abcdef\r\n",
        b"AUTH\r\n",
        b"AUTH PLAIN " + plain(FUZZER, password) + b"\r\n",
        b"AUTH PLAIN\r\n" + plain(FUZZER, password) + b"\r\n",
        b"AUTH PLAIN\r\n*\r\n",
        b"AUTH LOGIN\r\n" + b64(FUZZER.encode()) + b"\r\n",
        b"STLS\r\n",
        b"STAT\r\n",
        b"LIST\r\n",
        b"LIST 1\r\n",
        b"LIST 99999999999\r\n",
        b"UIDL\r\n",
        b"UIDL 1\r\n",
        b"RETR 1\r\n",
        b"RETR 0\r\n",
        b"TOP 1 0\r\n",
        b"TOP 1 99999999999\r\n",
        b"DELE 1\r\n",
        b"RSET\r\n",
        b"NOOP\r\n",
        b"UTF8\r\n",
        b"QUIT\r\n",
    ]


def http_items(rng: random.Random) -> list[bytes]:
    path = rng.choice(
        (
            b"/",
            b"/.well-known/mta-sts.txt",
            b"/mail/config-v1.1.xml?emailaddress=fuzz%40example.test",
            b"/.well-known/autoconfig/mail/config-v1.1.xml",
            b"/apple/mail.mobileconfig?emailaddress=alice@example.test",
            b"/.well-known/acme-challenge/" + rng.randbytes(8).hex().encode(),
            b"/%00%ff/../../etc/passwd",
            b"/" + b"a" * 9000,
            b"*",
        )
    )
    host = rng.choice(
        (b"mta-sts.example.test", b"autoconfig.example.test", b"mail.example.test", b"x" * 300)
    )
    method = rng.choice((b"GET", b"HEAD", b"POST", b"PUT", b"OPTIONS", b"BREW", b"get"))
    head = method + b" " + path + b" HTTP/1.1\r\nHost: " + host + b"\r\n"
    body = b"<Autodiscover><Request><EMailAddress>fuzz@example.test</EMailAddress>"
    return [
        head + b"\r\n",
        head + b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body,
        head + b"Content-Length: 99999999999\r\n\r\n" + body,
        head + b"Content-Length: -1\r\n\r\n",
        head + b"Content-Length: 5\r\nContent-Length: 6\r\n\r\nhello",
        head + b"Transfer-Encoding: chunked\r\n\r\nffffffffffff\r\n" + body,
        head + b"X-Big: " + b"y" * 9000 + b"\r\n\r\n",
        head + (b"X-Many: 1\r\n" * 400) + b"\r\n",
        b"GET /\r\n",  # HTTP/0.9
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        b"GET / HTTP/1.1\nHost: mail.example.test\n\n",
        b"GET / HTTP/9.9\r\n\r\n",
        head,  # a head that never ends
    ]


ITEMS = {"smtp": smtp_items, "imap": imap_items, "pop3": pop3_items, "http": http_items}


def valid_prefix(rng: random.Random, listener: str) -> list[Step]:
    """The start of a real session (TLS and a login where the listener needs them)."""
    protocol = PROTOCOL[listener]
    tls = (listener in STARTTLS_CAPABLE and listener != "smtp") or rng.random() < 0.3
    steps: list[Step] = []
    if protocol == "smtp":
        steps.append(("send", b"EHLO fuzz.example\r\n"))
        if tls and listener in STARTTLS_CAPABLE:
            steps += [("starttls", b"STARTTLS\r\n"), ("send", b"EHLO fuzz.example\r\n")]
        if listener != "smtp":
            steps.append(("send", b"AUTH PLAIN " + plain(FUZZER, PASSWORD) + b"\r\n"))
        steps += [("read", b""), ("send", f"MAIL FROM:<{FUZZER}>\r\n".encode())]
        steps.append(("send", f"RCPT TO:<{FUZZER}>\r\n".encode()))
    elif protocol == "imap":
        if tls and listener == "imap":
            steps.append(("starttls", b"v0 STARTTLS\r\n"))
        steps.append(("send", f'v1 LOGIN {FUZZER} "{PASSWORD}"\r\n'.encode()))
        steps += [("read", b""), ("send", b"v2 SELECT INBOX\r\n")]
    elif protocol == "pop3":
        if tls and listener == "pop3":
            steps.append(("starttls", b"STLS\r\n"))
        steps += [("send", f"USER {FUZZER}\r\nPASS {PASSWORD}\r\n".encode()), ("read", b"")]
    return steps


def make_script(rng: random.Random, listener: str) -> list[Step]:
    protocol = PROTOCOL[listener]
    kind = rng.random()
    steps: list[Step] = []
    if kind < 0.15:  # (a) random bytes only
        for _ in range(rng.randint(1, 4)):
            steps += [("send", rng.randbytes(rng.randint(1, 3000))), ("read", b"")]
    else:  # (b) a mutated real dialogue
        if kind < 0.55 and protocol != "http":
            steps += valid_prefix(rng, listener)
        items = ITEMS[protocol](rng)
        count = 1 if protocol == "http" else rng.randint(1, 12)
        for _ in range(count):
            item = rng.choice(items)
            if rng.random() < 0.35:
                item = mutate(rng, item)
            if item.upper().endswith((b"STARTTLS\r\n", b"STLS\r\n")) and rng.random() < 0.5:
                if listener in STARTTLS_CAPABLE and rng.random() < 0.5:
                    steps.append(("starttls", item))  # a real upgrade
                else:  # a half-done handshake
                    steps.append(("send", item + tls_mutation(rng, b"\x16\x03\x01\x00\x05hello")))
                continue
            roll = rng.random()
            if roll < 0.15:
                steps.append(("trickle", item))
            else:
                steps.append(("send", item))
            if roll > 0.6:  # else pipelined with the next item
                steps.append(("read", b""))
            if rng.random() < 0.05:
                steps.append(("sleep", b""))
    cut = rng.random()
    if cut < 0.2 and steps:  # abrupt close at a random point
        steps = steps[: rng.randrange(len(steps) + 1)]
        steps.append(("close", rng.choice((b"rst", b"fin"))))
    else:
        steps.append(("close", rng.choice((b"fin", b"rst", b"half", b"half"))))
    return steps


# -- reply shapes -------------------------------------------------------------------------

SMTP_REPLY = re.compile(rb"\d{3}(?:[ -]|$)")
IMAP_TAGGED = re.compile(rb"[^\s*+]\S* (?:OK|NO|BAD)(?: |$)")
IMAP_LITERAL = re.compile(rb"~?\{(\d+)\}$")
POP3_STATUS = re.compile(rb"(?:\+OK|-ERR)(?: |$)|\+(?: |$)")
# The +OK lines pillarbox/pop3/session.py sends before a multi-line body.
POP3_MULTI = re.compile(
    rb"\+OK (?:capability list follows|mechanisms follow|\d+ messages \(\d+ octets\)"
    rb"|unique-id listing follows|\d+ octets|top of message follows)$"
)
POP3_CONT = re.compile(rb"\+(?: |$)")
HTTP_STATUS = re.compile(rb"HTTP/1\.[01] \d{3} ")


def looks_like_tls(data: bytes) -> bool:
    return len(data) >= 2 and data[0] in (0x14, 0x15, 0x16, 0x17) and data[1] == 0x03


def shape_problem(outcome: Outcome) -> str | None:
    """What is not protocol-shaped in what the server sent (None: all of it is)."""
    if outcome.opaque:
        return None
    data = bytes(outcome.received)
    protocol = PROTOCOL[outcome.listener]
    switched = re.search(rb"(?i)STARTTLS|STLS", bytes(outcome.sent)) is not None
    if protocol == "http":
        if data and not HTTP_STATUS.match(data):
            return f"not an HTTP status line: {data[:80]!r}"
        return None
    pos = 0
    multi = False
    while True:
        if looks_like_tls(data[pos : pos + 2]):
            return None if switched else f"TLS record without STARTTLS at {pos}"
        end = data.find(b"\r\n", pos)
        if end < 0:
            return None  # an unfinished last line: the connection ended mid-reply
        line = data[pos:end]
        if protocol == "smtp":
            if not SMTP_REPLY.match(line):
                return f"not an SMTP reply at {pos}: {line[:80]!r}"
        elif protocol == "pop3":
            if multi:
                if line == b".":
                    multi = False
                elif line.startswith(b".") and not line.startswith(b".."):
                    return f"POP3 data line not dot-stuffed at {pos}: {line[:80]!r}"
            elif POP3_MULTI.match(line):
                multi = True
            elif not POP3_STATUS.match(line):
                return f"not a POP3 status at {pos}: {line[:80]!r}"
        else:
            if not (line.startswith(b"* ") or POP3_CONT.match(line) or IMAP_TAGGED.match(line)):
                return f"not an IMAP response at {pos}: {line[:80]!r}"
            # Skip the literals of this response (and the rest of its line after each).
            while m := IMAP_LITERAL.search(line):
                start = end + 2 + int(m.group(1))
                end = data.find(b"\r\n", start)
                if end < 0:
                    return None
                line = data[start:end]
        pos = end + 2


# -- health checks --------------------------------------------------------------------------


def health_check(state: Fuzzed) -> None:
    """A normal, correct session on every listener (raises on the first one that fails)."""
    settings_timeout = 15
    with smtplib.SMTP("127.0.0.1", state.port("smtp"), timeout=settings_timeout) as smtp:
        assert smtp.ehlo()[0] == 250
        assert smtp.noop()[0] == 250
    token = uuid.uuid4().hex
    msg = EmailMessage()
    msg["From"] = ALICE
    msg["To"] = ALICE
    msg["Subject"] = f"health {token}"
    msg["Message-ID"] = f"<{token}@example.test>"
    msg.set_content(f"health check body {token}\n")
    with smtplib.SMTP("127.0.0.1", state.port("submission"), timeout=settings_timeout) as sub:
        sub.starttls(context=state.tls)
        sub.login(ALICE, PASSWORD)
        assert sub.send_message(msg) == {}
    with smtplib.SMTP_SSL(
        "127.0.0.1", state.port("submissions"), timeout=settings_timeout, context=state.tls
    ) as subs:
        subs.login(ALICE, PASSWORD)
        assert subs.noop()[0] == 250
    with imaplib.IMAP4_SSL(
        "127.0.0.1", state.port("imaps"), ssl_context=state.tls, timeout=settings_timeout
    ) as imaps:
        imaps.login(ALICE, PASSWORD)
        assert imaps.select("INBOX")[0] == "OK"
        found: list[bytes] = []
        deadline = time.monotonic() + 10
        while not found and time.monotonic() < deadline:
            typ, data = imaps.search(None, "HEADER", "Message-ID", token)
            assert typ == "OK"
            found = data[0].split()
            if not found:
                time.sleep(0.1)
                imaps.noop()
        assert found, "the message sent through submission never reached IMAP"
        typ, fetched = imaps.fetch(found[-1].decode(), "(BODY.PEEK[])")
        assert typ == "OK"
        first = fetched[0]
        assert isinstance(first, tuple)
        assert f"health check body {token}".encode() in first[1]
        imaps.logout()
    with imaplib.IMAP4("127.0.0.1", state.port("imap"), timeout=settings_timeout) as imap:
        imap.starttls(ssl_context=state.tls)
        imap.login(ALICE, PASSWORD)
        assert imap.select("INBOX")[0] == "OK"
        assert imap.logout()[0] == "BYE"
    pop = poplib.POP3("127.0.0.1", state.port("pop3"), timeout=settings_timeout)
    pop.stls(context=state.tls)
    pop.user(ALICE)
    pop.pass_(PASSWORD)
    assert pop.stat()[0] >= 1
    assert pop.quit().startswith(b"+OK")
    pops = poplib.POP3_SSL(
        "127.0.0.1", state.port("pop3s"), context=state.tls, timeout=settings_timeout
    )
    pops.user(ALICE)
    pops.pass_(PASSWORD)
    assert pops.stat()[0] >= 1
    assert pops.quit().startswith(b"+OK")
    plain_http = http_get(state, "http", "mail.example.test", "/")
    assert re.match(rb"HTTP/1\.1 30[18] ", plain_http), plain_http[:200]
    policy = http_get(state, "https", "mta-sts.example.test", "/.well-known/mta-sts.txt")
    assert policy.startswith(b"HTTP/1.1 200 "), policy[:200]
    assert b"version: STSv1" in policy


def http_get(state: Fuzzed, listener: str, host: str, path: str) -> bytes:
    sock = socket.create_connection(("127.0.0.1", state.port(listener)), timeout=15)
    if listener == "https":
        sock = state.tls.wrap_socket(sock, server_hostname=host)
    with sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        data = b""
        with contextlib.suppress(ConnectionResetError):
            while chunk := sock.recv(65536):
                data += chunk
        return data


def seed_fuzzer_mailbox(state: Fuzzed) -> None:
    """Something for FETCH, RETR and TOP to return (POP3 DELE may have emptied it)."""
    with imaplib.IMAP4_SSL(
        "127.0.0.1", state.port("imaps"), ssl_context=state.tls, timeout=15
    ) as imaps:
        imaps.login(FUZZER, PASSWORD)
        body = (
            b"From: a@example.test\r\nSubject: seeded\r\nContent-Type: multipart/mixed;"
            b' boundary="b"\r\n\r\n--b\r\n\r\n.dot line\r\n..two dots\r\n--b\r\n'
            b"Content-Type: text/plain; charset=utf-8\r\n\r\n\xc3\xa9t\xc3\xa9\r\n--b--\r\n"
        )
        assert imaps.append("INBOX", "", imaplib.Time2Internaldate(time.time()), body)[0] == "OK"
        imaps.logout()


# -- the test -------------------------------------------------------------------------------


def fuzz_listener(state: Fuzzed, listener: str) -> list[Outcome]:
    jobs = [
        (seed, index)
        for seed in SEEDS
        for index in range(CONNECTIONS_PER_SEED)
        if ONLY is None or index == ONLY
    ]
    deadline = time.monotonic() + FUZZ_BUDGET

    def job(seed: int, index: int) -> Outcome | None:
        if time.monotonic() > deadline:
            return None
        return run_connection(state, listener, seed, index)

    with ThreadPoolExecutor(WORKERS) as pool:
        results = list(pool.map(lambda j: job(*j), jobs))
    return [r for r in results if r is not None]


def wait_for_fds(pid: int, limit: int, within: float = 8.0) -> int:
    deadline = time.monotonic() + within
    while True:
        count = fd_count(pid)
        if count <= limit or time.monotonic() > deadline:
            return count
        time.sleep(0.1)


@pytest.mark.parametrize("listener", LISTENERS)
def test_listener_survives_fuzzing(fuzzed: Fuzzed, listener: str) -> None:
    seed_fuzzer_mailbox(fuzzed)
    log_start = len(fuzzed.server.log())
    time.sleep(0.1)
    baseline = fd_count(fuzzed.pid)

    outcomes = fuzz_listener(fuzzed, listener)
    assert outcomes, "the fuzz budget ran out before the first connection"

    # (1a) the process is alive
    assert fuzzed.server.proc.poll() is None, (
        f"server died while fuzzing {listener} (seeds {SEEDS}):\n{fuzzed.server.log()[-4000:]}"
    )
    # (3) every reply was protocol-shaped
    shapeless = [(o, p) for o in outcomes if (p := shape_problem(o)) is not None]
    assert not shapeless, "\n\n".join(
        f"{o.where()}: {p}\n  sent {bytes(o.sent)[:600]!r}\n  got {bytes(o.received)[:600]!r}"
        for o, p in shapeless[:3]
    )
    # (4) the descriptors of the fuzz connections are released
    count = wait_for_fds(fuzzed.pid, baseline + FD_SLACK)
    assert count <= baseline + FD_SLACK, (
        f"{count} open fds after fuzzing {listener}, {baseline} before (seeds {SEEDS}): "
        f"{open_files(fuzzed.pid)}"
    )
    # (1b) every listener still serves a normal session
    health_check(fuzzed)
    # (2) nothing crashed on the way
    log = fuzzed.server.log()[log_start:]
    bad = [line for line in log.splitlines() if any(m in line for m in BAD_LOG_MARKERS)]
    assert not bad, (
        f"fuzzing {listener} (seeds {SEEDS}) logged errors:\n"
        + "\n".join(bad[:10])
        + "\n--- log excerpt ---\n"
        + excerpt(log, bad[0])
    )


def excerpt(log: str, line: str, around: int = 40) -> str:
    lines = log.splitlines()
    at = lines.index(line)
    return "\n".join(lines[max(0, at - 5) : at + around])


def test_shape_checker_rejects_what_it_should() -> None:
    """The reply-shape check is itself correct: it accepts real replies, refuses junk."""

    def problem(listener: str, received: bytes, sent: bytes = b"") -> str | None:
        outcome = Outcome(listener, 0, 0, bytearray(sent), bytearray(received))
        return shape_problem(outcome)

    assert problem("smtp", b"220 hi\r\n250-a\r\n250 b\r\n500") is None
    assert problem("smtp", b"220 hi\r\nbody line\r\n") is not None
    assert problem("smtp", b"220 hi\r\n\x16\x03\x01") is not None
    assert problem("smtp", b"220 hi\r\n220 go\r\n\x16\x03\x01junk\r\n", b"STARTTLS\r\n") is None
    assert (
        problem("imap", b"* OK hi\r\n* 1 FETCH (BODY[] {5}\r\nab\r\nc)\r\nt1 OK done\r\n") is None
    )
    assert problem("imap", b"* OK hi\r\n+ go\r\nt1 NO [X] no\r\n") is None
    assert problem("imap", b"* OK hi\r\nSubject: x\r\n") is not None
    assert problem("pop3", b"+OK hi\r\n+OK 2 octets\r\n..x\r\n.\r\n-ERR no\r\n") is None
    assert problem("pop3", b"+OK hi\r\n+OK 2 octets\r\n.x\r\n.\r\n") is not None
    assert problem("pop3", b"+OK hi\r\nhello\r\n") is not None
    assert problem("http", b"HTTP/1.1 400 Bad Request\r\n\r\n") is None
    assert problem("http", b"garbage") is not None


def test_a_non_ascii_sni_name_leaves_no_traceback(fuzzed: Fuzzed) -> None:
    """Found by the fuzzer (a flipped byte in the ClientHello's server_name): an 8-bit
    SNI name is refused with an alert, the server stays up, and the log stays clean."""
    assert HOSTNAME.encode() in fuzzed.hello
    bad = fuzzed.hello.replace(
        HOSTNAME.encode(), HOSTNAME.replace(".", "\xef", 1).encode("latin-1")
    )
    log_start = len(fuzzed.server.log())
    for listener in sorted(IMPLICIT_TLS):
        with socket.create_connection(("127.0.0.1", fuzzed.port(listener)), 5) as sock:
            sock.settimeout(5)
            sock.sendall(bad)
            with contextlib.suppress(OSError):
                assert sock.recv(100)[:1] == b"\x15"  # a TLS alert
    time.sleep(0.3)
    health_check(fuzzed)
    log = fuzzed.server.log()[log_start:]
    bad_lines = [line for line in log.splitlines() if any(m in line for m in BAD_LOG_MARKERS)]
    assert not bad_lines, "\n".join(bad_lines[:8])
