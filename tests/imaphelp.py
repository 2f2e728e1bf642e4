"""Helpers for the IMAP tests: TLS clients against a RunningServer, messages, fixtures."""

from __future__ import annotations

import imaplib
import ssl
from collections.abc import Iterator
from contextlib import contextmanager

from imapclient import IMAPClient

from pillarbox.config import Settings
from tests import pbserver

ALICE = "alice@example.test"
BOB = "bob@example.test"
TIMEOUT = 10


def tls_context(settings: Settings) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(settings.tls.ca))


def imaps(server: pbserver.RunningServer) -> imaplib.IMAP4_SSL:
    return imaplib.IMAP4_SSL(
        "127.0.0.1",
        server.port("imaps"),
        ssl_context=tls_context(server.settings),
        timeout=TIMEOUT,
    )


def imapclient_login(
    server: pbserver.RunningServer | pbserver.SubprocessServer, user: str = ALICE
) -> IMAPClient:
    """An imapclient session over IMAPS, logged in as ``user``; the caller logs out."""
    client = IMAPClient(
        "127.0.0.1",
        port=server.port("imaps"),
        ssl=True,
        ssl_context=tls_context(server.settings),
        timeout=15,
    )
    client.login(user, pbserver.PASSWORD)
    return client


@contextmanager
def login(server: pbserver.RunningServer, user: str = ALICE) -> Iterator[imaplib.IMAP4_SSL]:
    client = imaps(server)
    try:
        client.login(user, pbserver.PASSWORD)
        yield client
    finally:
        try:
            client.logout()
        except Exception:
            pass


def message(subject: str = "Hello", body: str = "Hi there.\r\n", **headers: str) -> bytes:
    lines = [
        "From: Bob Sender <bob@example.org>",
        "To: Alice <alice@example.test>",
        f"Subject: {subject}",
        "Date: Mon, 7 Feb 1994 21:52:25 -0800",
        f"Message-ID: <{abs(hash(subject + body))}@example.org>",
    ]
    lines += [f"{k.replace('_', '-')}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n" + body).encode()


class Raw:
    """A line-level IMAP client over TLS, for exact wire checks and hostile input."""

    def __init__(
        self, server: pbserver.RunningServer | pbserver.SubprocessServer, listener: str = "imaps"
    ):
        import socket

        sock = socket.create_connection(("127.0.0.1", server.port(listener)), timeout=TIMEOUT)
        if listener == "imaps":
            sock = tls_context(server.settings).wrap_socket(sock, server_hostname=pbserver.HOSTNAME)
        self.sock = sock
        self.file = sock.makefile("rb")
        self.greeting = self.line()

    def line(self) -> bytes:
        data = self.file.readline()
        if not data:
            raise ConnectionError("closed")
        return data

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def until(self, tag: bytes) -> list[bytes]:
        """Lines (literals inlined) up to and including the tagged response of ``tag``."""
        import re

        lines = []
        while True:
            line = self.line()
            m = re.search(rb"\{(\d+)\}\r\n$", line)
            while m:
                line += self.file.read(int(m.group(1)))
                more = self.line()
                line += more
                m = re.search(rb"\{(\d+)\}\r\n$", more)
            lines.append(line)
            if line.startswith(tag + b" "):
                return lines

    def cmd(self, tag: bytes, text: bytes) -> list[bytes]:
        self.send(tag + b" " + text + b"\r\n")
        return self.until(tag)

    def login(self, user: str = ALICE) -> None:
        lines = self.cmd(
            b"L", b"LOGIN " + user.encode() + b' "' + pbserver.PASSWORD.encode() + b'"'
        )
        assert lines[-1].startswith(b"L OK"), lines

    def close(self) -> None:
        try:
            self.file.close()
            self.sock.close()
        except Exception:
            pass
