"""End to end: a mail client sets itself up from what the server publishes and it works.

Thunderbird's way (RFC-less but universal): GET https://autoconfig.DOMAIN/mail/
config-v1.1.xml, then use every advertised incoming and outgoing server with the advertised
socket type and username. Outlook's way: POST to /autodiscover/autodiscover.xml. The DNS
SRV records of RFC 6186 from ``pillarbox dns records`` must agree. The server runs on fixed
free ports here (as in production), so what it advertises can be dialled.
"""

from __future__ import annotations

import http.client
import imaplib
import poplib
import smtplib
import socket
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from pillarbox.config import Settings
from tests import pbserver, ports
from tests.e2e_world import ALICE, PASSWORD, TIMEOUT, client_tls, our_records

LISTENERS = ("smtp", "submission", "submissions", "imap", "imaps", "pop3", "pop3s", "https")


def free_ports(count: int) -> list[int]:
    chosen: list[int] = []
    while len(chosen) < count:
        port = ports.free_port()
        if port not in chosen:
            chosen.append(port)
    return chosen


@dataclass
class Server:
    settings: Settings
    running: pbserver.RunningServer


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp: Path = tmp_path_factory.mktemp("e2e-setup")
    ports = dict(zip(LISTENERS, free_ports(len(LISTENERS)), strict=True))
    listen = {name: f"127.0.0.1:{port}" for name, port in ports.items()}
    settings = pbserver.make_settings(
        tmp / "data", {"listen": listen, "limits": {"auth_failure_delay": 0.05}}
    )
    pbserver.add_user(settings, ALICE)
    with pbserver.RunningServer(settings) as running:
        yield Server(settings, running)


def https(server: Server, method: str, path: str, host: str, body: bytes | None = None) -> bytes:
    """A request to ``host`` as a client does it: SNI and certificate check for that name."""
    ctx = client_tls(server.settings)
    port = server.running.port("https")
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=TIMEOUT)
    conn.sock = ctx.wrap_socket(
        socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT), server_hostname=host
    )
    headers = {"Host": host}
    if body is not None:
        headers["Content-Type"] = "text/xml"
    conn.request(method, path, body=body, headers=headers)
    response = conn.getresponse()
    data = response.read()
    assert response.status == 200, (response.status, data[:200])
    return data


def use_server(server: Server, kind: str, port: int, socket_type: str, username: str) -> None:
    """Log in like a client configured with these settings would (hostname -> 127.0.0.1)."""
    ctx = client_tls(server.settings)
    ctx.check_hostname = True
    host = "127.0.0.1"
    if kind == "imap":
        imap: imaplib.IMAP4
        if socket_type == "SSL":
            imap = imaplib.IMAP4_SSL(host, port, ssl_context=ctx, timeout=TIMEOUT)
        else:
            imap = imaplib.IMAP4(host, port, timeout=TIMEOUT)
            imap.starttls(ssl_context=ctx)
        imap.login(username, PASSWORD)
        assert imap.select("INBOX")[0] == "OK"
        imap.logout()
    elif kind == "pop3":
        pop: poplib.POP3
        if socket_type == "SSL":
            pop = poplib.POP3_SSL(host, port, context=ctx, timeout=TIMEOUT)
        else:
            pop = poplib.POP3(host, port, timeout=TIMEOUT)
            pop.stls(context=ctx)
        pop.user(username)
        pop.pass_(PASSWORD)
        pop.stat()
        pop.quit()
    elif kind == "smtp":
        if socket_type == "SSL":
            smtp: smtplib.SMTP = smtplib.SMTP_SSL(host, port, context=ctx, timeout=TIMEOUT)
        else:
            smtp = smtplib.SMTP(host, port, timeout=TIMEOUT)
            smtp.starttls(context=ctx)
        smtp.login(username, PASSWORD)
        smtp.quit()
    else:
        raise AssertionError(f"unknown server type {kind}")


def test_thunderbird_autoconfig_servers_all_work(server: Server) -> None:
    xml = https(
        server,
        "GET",
        f"/mail/config-v1.1.xml?emailaddress={ALICE}",
        "autoconfig.example.test",
    )
    provider = ET.fromstring(xml).find("emailProvider")
    assert provider is not None
    entries = provider.findall("incomingServer") + provider.findall("outgoingServer")
    assert {e.get("type") for e in entries} >= {"imap", "smtp"}
    advertised = set()
    for entry in entries:
        kind = entry.get("type", "")
        port = int(entry.findtext("port", "0"))
        socket_type = entry.findtext("socketType", "")
        username = entry.findtext("username", "").replace("%EMAILADDRESS%", ALICE)
        assert entry.findtext("hostname") == server.settings.hostname
        advertised.add(port)
        use_server(server, kind, port, socket_type, username)
    actual = {server.running.port(n) for n in LISTENERS if n not in ("smtp", "https")}
    assert advertised == actual, "autoconfig must list every client listener, and only those"


def test_outlook_autodiscover_points_at_working_servers(server: Server) -> None:
    request = (
        '<?xml version="1.0" encoding="utf-8"?>'
        '<Autodiscover xmlns="http://schemas.microsoft.com/exchange/autodiscover/outlook/'
        'requestschema/2006"><Request>'
        f"<EMailAddress>{ALICE}</EMailAddress>"
        "<AcceptableResponseSchema>http://schemas.microsoft.com/exchange/autodiscover/"
        "outlook/responseschema/2006a</AcceptableResponseSchema></Request></Autodiscover>"
    ).encode()
    xml = https(
        server, "POST", "/autodiscover/autodiscover.xml", "autodiscover.example.test", request
    )
    root = ET.fromstring(xml)
    protocols = [el for el in root.iter() if el.tag.endswith("Protocol")]
    assert protocols
    seen = set()
    for proto in protocols:
        fields = {child.tag.split("}")[-1]: (child.text or "") for child in proto}
        kind = fields["Type"].lower()
        port = int(fields["Port"])
        ssl_on = fields.get("SSL", "on").lower() == "on"
        encryption = fields.get("Encryption", "")
        socket_type = "STARTTLS" if (encryption.upper() == "TLS" or not ssl_on) else "SSL"
        use_server(server, kind, port, socket_type, fields.get("LoginName", ALICE) or ALICE)
        seen.add(kind)
    assert {"imap", "smtp"} <= seen


def test_rfc6186_srv_records_name_the_listening_ports(server: Server) -> None:
    srv = {
        r["name"].split(".")[0]: r["value"].split()
        for r in our_records(server.settings)
        if r["type"] == "SRV"
        and r["name"].split(".")[0]
        in ("_imap", "_imaps", "_submission", "_submissions", "_pop3", "_pop3s")
    }
    for service in ("imaps", "imap", "submission", "submissions", "pop3", "pop3s"):
        _priority, _weight, port, target = srv[f"_{service}"]
        assert int(port) == server.running.port(service), service
        assert target.rstrip(".") == server.settings.hostname
