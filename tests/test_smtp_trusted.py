"""Trusted networks (Postfix's mynetworks) and require_tls on port 25, over real sockets:
clients bound to other loopback addresses stand for a LAN printer and for the internet."""

from __future__ import annotations

import smtplib
import ssl
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from pillarbox import config, control
from tests import pbserver
from tests.dnsserver import DnsTestServer

LAN = "127.0.0.2"  # in trusted_networks
INTERNET = "127.0.0.3"  # not
ALICE = "alice@example.test"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[pbserver.RunningServer]:
    with DnsTestServer() as dns:
        settings = pbserver.make_settings(
            tmp_path_factory.mktemp("trusted") / "data",
            {
                "dns": {"nameservers": [dns.address], "timeout": 0.5},
                "delivery": {"smarthost": "127.0.0.1:9", "mta_sts": False},
                "smtp": {"trusted_networks": [f"{LAN}/32"], "require_tls": True},
            },
        )
        pbserver.add_user(settings, ALICE)
        with pbserver.RunningServer(settings) as running:
            yield running


def client(server: pbserver.RunningServer, listener: str, source: str) -> smtplib.SMTP:
    smtp = smtplib.SMTP("127.0.0.1", server.port(listener), timeout=10, source_address=(source, 0))
    smtp.ehlo("client.test")
    return smtp


def message(mark: str) -> bytes:
    return f"From: printer@example.test\r\nSubject: {mark}\r\n\r\nscan\r\n".encode()


def queued_to(server: pbserver.RunningServer, mark: str) -> list[str]:
    entries = control.call(server.settings.control_socket, "queue.list", {}, timeout=5)
    for entry in entries:
        shown = control.call(
            server.settings.control_socket, "queue.show", {"id": entry["id"]}, timeout=5
        )
        if mark in str(shown):
            return [r["address"] for r in entry["recipients"]]
    return []


@pytest.mark.parametrize("listener", ["smtp", "submission"])
def test_trusted_client_relays_without_auth_or_tls(
    server: pbserver.RunningServer, listener: str
) -> None:
    mark = uuid.uuid4().hex
    with client(server, listener, LAN) as smtp:
        assert smtp.mail("printer@example.test")[0] == 250
        assert smtp.rcpt("friend@remote.test")[0] == 250
        code, text = smtp.data(message(mark))
    assert code == 250, text
    assert queued_to(server, mark) == ["friend@remote.test"]


def test_untrusted_client_may_not_relay(server: pbserver.RunningServer) -> None:
    with client(server, "smtp", INTERNET) as smtp:
        smtp.starttls(context=ssl.create_default_context(cafile=str(server.settings.tls.ca)))
        smtp.ehlo("client.test")
        assert smtp.mail("someone@remote.test")[0] == 250
        code, text = smtp.rcpt("friend@remote.test")
        assert (code, text[:5]) == (554, b"5.7.1")
    with client(server, "submission", INTERNET) as smtp:
        assert smtp.mail("printer@example.test") == (
            530,
            b"5.7.0 Must issue a STARTTLS command first",
        )


def test_loopback_is_not_trusted_by_accident(server: pbserver.RunningServer) -> None:
    with client(server, "submission", "127.0.0.1") as smtp:
        assert smtp.mail(ALICE)[0] == 530


def test_require_tls_refuses_mail_before_starttls(server: pbserver.RunningServer) -> None:
    with client(server, "smtp", INTERNET) as smtp:
        assert smtp.mail("someone@remote.test") == (
            530, b"5.7.0 Must issue a STARTTLS command first",
        )  # fmt: skip
        smtp.starttls(context=ssl.create_default_context(cafile=str(server.settings.tls.ca)))
        smtp.ehlo("client.test")
        assert smtp.mail("someone@remote.test")[0] == 250
        assert smtp.rcpt(ALICE)[0] == 250
        assert smtp.data(message(uuid.uuid4().hex))[0] == 250


def test_the_whole_internet_is_refused_as_a_trusted_network(tmp_path: Path) -> None:
    with pytest.raises(config.ConfigError, match="open relay"):
        pbserver.make_settings(
            tmp_path / "data",
            {"smtp": {"trusted_networks": ["0.0.0.0/0"]}},
        )
