"""Helpers for the IMAP tests: TLS clients against a RunningServer, messages, fixtures."""

from __future__ import annotations

import imaplib
import ssl
from collections.abc import Iterator
from contextlib import contextmanager

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
        "Message-ID: <%s@example.org>" % abs(hash(subject + body)),
    ]
    lines += [f"{k.replace('_', '-')}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n" + body).encode()
