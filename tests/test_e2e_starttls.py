"""End to end: STARTTLS / STLS upgrades succeed every time with standard clients.

A client sends its TLS ClientHello the moment it reads the server's "go ahead". The server
must drop only what was pipelined *before* that reply (RFC 3207 §4.2, RFC 2595 §3.1/§4);
if it yields to the event loop between sending the reply and discarding its input buffer,
the ClientHello can land in the buffer first and be thrown away, and the handshake hangs
until the client gives up. Several upgrades in a row per protocol make such a race show.
"""

from __future__ import annotations

import imaplib
import poplib
import smtplib
from collections.abc import Callable, Iterator

import pytest

from pillarbox.config import Settings
from tests import pbserver
from tests.e2e_world import ALICE, client_tls

ATTEMPTS = 6
HANDSHAKE_TIMEOUT = 1.5  # loopback handshakes take milliseconds


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[pbserver.RunningServer]:
    settings = pbserver.make_settings(tmp_path_factory.mktemp("e2e-starttls") / "data")
    pbserver.add_user(settings, ALICE)
    with pbserver.RunningServer(settings) as running:
        yield running


def pop3_stls(settings: Settings, port: int) -> None:
    client = poplib.POP3("127.0.0.1", port, timeout=HANDSHAKE_TIMEOUT)
    try:
        client.stls(context=client_tls(settings))
        client.capa()
    finally:
        client.close()


def imap_starttls(settings: Settings, port: int) -> None:
    client = imaplib.IMAP4("127.0.0.1", port, timeout=HANDSHAKE_TIMEOUT)
    try:
        client.starttls(ssl_context=client_tls(settings))
        client.noop()
    finally:
        client.shutdown()


def smtp_starttls(settings: Settings, port: int) -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=HANDSHAKE_TIMEOUT) as client:
        client.starttls(context=client_tls(settings))
        client.ehlo("laptop.local")


def upgrades(
    server: pbserver.RunningServer, listener: str, upgrade: Callable[[Settings, int], None]
) -> list[str]:
    failures = []
    for _ in range(ATTEMPTS):
        try:
            upgrade(server.settings, server.port(listener))
        except (OSError, imaplib.IMAP4.error, poplib.error_proto, smtplib.SMTPException) as exc:
            failures.append(repr(exc))
    return failures


@pytest.mark.parametrize(
    ("listener", "upgrade"),
    [("submission", smtp_starttls), ("smtp", smtp_starttls), ("imap", imap_starttls)],
)
def test_starttls_always_completes(
    server: pbserver.RunningServer, listener: str, upgrade: Callable[[Settings, int], None]
) -> None:
    assert upgrades(server, listener, upgrade) == []


def test_pop3_stls_always_completes(server: pbserver.RunningServer) -> None:
    assert upgrades(server, "pop3", pop3_stls) == []
