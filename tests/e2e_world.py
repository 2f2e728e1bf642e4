"""The outside world for the end-to-end tests: DNS, other mail servers, real clients.

An end-to-end test sees Pillarbox the way a user and an independent reviewer do: through its
published DNS records (``pillarbox dns records --format json``, served by the test DNS
server), its listeners (smtplib, aiosmtplib, imaplib, imapclient, swaks over real TLS) and
the other mail servers it talks to (``tests.smtppeer.SmtpPeer`` on 127.0.0.2, found through
an MX record). Nothing here imports Pillarbox internals except the test harness
(``tests.pbserver``) and the config loader, so the tests judge behaviour, not code.

The remote sending domain ``sender.example`` publishes SPF for ``SENDER_IP`` (the source
address our "outside" SMTP client binds), an RSA DKIM key made here and signed with dkimpy
(an independent implementation), and DMARC p=reject.
"""

from __future__ import annotations

import base64
import email
import email.policy
import imaplib
import json
import re
import smtplib
import ssl
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dkim
import dns.message
import dns.query
import dns.rdatatype
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from imapclient import IMAPClient

from pillarbox.config import Settings
from tests import pbserver
from tests.dnsserver import DnsTestServer

DOMAIN = pbserver.DOMAIN
ALICE = f"alice@{DOMAIN}"
BOB = f"bob@{DOMAIN}"
CAROL_LOCAL = f"carol@{DOMAIN}"
PASSWORD = pbserver.PASSWORD
REMOTE_DOMAIN = "remote.example"
REMOTE_MX_IP = "127.0.0.2"
SENDER_DOMAIN = "sender.example"
SENDER_IP = "127.0.0.9"  # our "internet" client binds this; SPF of sender.example allows it
SENDER_HELO = "out.sender.example"
SENDER_SELECTOR = "e2e"
TIMEOUT = 10.0

# The header fields Pillarbox may prepend to a message it delivers locally (issue 3, 6).
# What delivery prepends: trace fields, our Authentication-Results and the spam verdict.
TRACE_FIELDS = {
    "return-path", "delivered-to", "received", "authentication-results", "x-pillarbox-spam"
}  # fmt: skip


# -- DKIM key of the remote sender ---------------------------------------------------------


@dataclass(frozen=True)
class SenderKey:
    private_pem: bytes
    txt: str

    @classmethod
    def generate(cls) -> SenderKey:
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
        der = key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return cls(pem, "v=DKIM1; k=rsa; p=" + base64.b64encode(der).decode())

    def sign(self, message: bytes) -> bytes:
        """``message`` with a DKIM-Signature made by dkimpy prepended."""
        signature = dkim.sign(
            message,
            SENDER_SELECTOR.encode(),
            SENDER_DOMAIN.encode(),
            self.private_pem,
            canonicalize=(b"relaxed", b"relaxed"),
            include_headers=[b"from", b"to", b"subject", b"date", b"message-id"],
        )
        return bytes(signature) + message


# -- DNS -------------------------------------------------------------------------------------


def our_records(settings: Settings) -> list[dict[str, Any]]:
    """The records ``pillarbox dns records --format json`` tells the admin to publish."""
    assert settings.source is not None
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "pillarbox",
            "--config",
            str(settings.source),
            "dns",
            "records",
            "--format",
            "json",
        ],
        capture_output=True,
        timeout=30,
        check=True,
    )
    records: list[dict[str, Any]] = json.loads(out.stdout)["records"]
    return records


def publish_our_zone(dns_server: DnsTestServer, settings: Settings) -> list[dict[str, Any]]:
    """Serve every zone record of ``dns records`` for our domain, as an admin would."""
    records = our_records(settings)
    lines = []
    for rec in records:
        name = rec["name"]
        if rec.get("where", "zone") != "zone" or not name.rstrip(".").endswith(DOMAIN):
            continue
        lines.append(f"{name} 0 IN {rec['type']} {rec['rdata']}")
    dns_server.set_zone(DOMAIN, "\n".join(lines) + "\n")
    return records


def publish_sender_zone(dns_server: DnsTestServer, key: SenderKey, dmarc: str) -> None:
    dns_server.set_zone(
        SENDER_DOMAIN,
        {
            "@": {"TXT": f"v=spf1 ip4:{SENDER_IP} -all"},
            "out": {"A": SENDER_IP, "TXT": f"v=spf1 ip4:{SENDER_IP} -all"},
            f"{SENDER_SELECTOR}._domainkey": {"TXT": key.txt},
            "_dmarc": {"TXT": dmarc},
        },
    )


def publish_remote_zone(dns_server: DnsTestServer, ip: str = REMOTE_MX_IP) -> None:
    dns_server.set_zone(REMOTE_DOMAIN, {"@": {"MX": [f"10 mx.{REMOTE_DOMAIN}."]}, "mx": {"A": ip}})


def dns_txt(dns_server: DnsTestServer) -> Callable[..., bytes]:
    """A dkimpy ``dnsfunc`` that asks the test DNS server over the wire (real DNS)."""

    def lookup(name: bytes, timeout: int = 5) -> bytes:
        query = dns.message.make_query(name.decode(), dns.rdatatype.TXT)
        answer = dns.query.udp(query, "127.0.0.1", port=dns_server.port, timeout=2)
        for rrset in answer.answer:
            for rdata in rrset:
                return b"".join(rdata.strings)
        return b""

    return lookup


# -- settings --------------------------------------------------------------------------------


def world_settings(
    tmp_path: Path, dns_server: DnsTestServer, peer_port: int, overrides: Mapping[str, Any] = {}
) -> Settings:
    """A data dir whose server resolves through the test DNS server and reaches remote MXs on
    ``peer_port``; retries fast so a test sees the queue act."""
    base: dict[str, Any] = {
        "public_ip": "127.0.0.1",
        "dns": {"nameservers": [dns_server.address], "timeout": 1.0},
        "limits": {"auth_failure_delay": 0.05},
        "delivery": {
            "remote_port": peer_port,
            "retry_initial": 1,
            "retry_max": 2,
            "queue_scan_interval": 1,
            "connect_timeout": 3,
        },
    }
    return pbserver.make_settings(tmp_path / "data", pbserver.merge(base, overrides))


# -- messages --------------------------------------------------------------------------------


def marker() -> str:
    return uuid.uuid4().hex[:16]


def message(
    mark: str,
    *,
    sender: str = f"Someone <someone@{SENDER_DOMAIN}>",
    to: str = ALICE,
    subject: str | None = None,
    body: str | None = None,
) -> bytes:
    return (
        f"From: {sender}\r\n"
        f"To: {to}\r\n"
        f"Subject: {subject or 'e2e ' + mark}\r\n"
        "Date: Wed, 25 Nov 2026 12:00:00 +0000\r\n"
        f"Message-ID: <{mark}@e2e.test>\r\n"
        "MIME-Version: 1.0\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n"
        "Content-Transfer-Encoding: 8bit\r\n"
        "\r\n"
        + (body or f"Hello {mark}.\r\n.a line that starts with a dot\r\nCaf\u00e9 \u2615\r\n")
    ).encode()


def header_names(block: bytes) -> list[str]:
    """Field names of a header block, in order (continuation lines skipped)."""
    return [
        line.split(b":", 1)[0].decode().lower()
        for line in block.split(b"\r\n")
        if line and not line[:1].isspace()
    ]


def prepended(stored: bytes, original: bytes) -> bytes:
    """What Pillarbox put before ``original``; asserts the rest is byte-exact."""
    assert stored.endswith(original), "stored message does not end with the original bytes"
    return stored[: len(stored) - len(original)]


def unfolded_header(block: bytes, name: str) -> list[str]:
    msg = email.message_from_bytes(block + b"\r\n", policy=email.policy.compat32)
    return [re.sub(r"\s+", " ", str(v)) for v in msg.get_all(name, [])]


# -- clients ---------------------------------------------------------------------------------


def client_tls(settings: Settings) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(settings.tls.ca))


def smtp_from_outside(port: int) -> smtplib.SMTP:
    """An SMTP client as another mail server: from SENDER_IP, EHLO out.sender.example."""
    client = smtplib.SMTP(
        "127.0.0.1",
        port,
        local_hostname=SENDER_HELO,
        timeout=TIMEOUT,
        source_address=(SENDER_IP, 0),
    )
    client.ehlo()
    return client


def submit(
    settings: Settings,
    port: int,
    sender: str,
    recipients: list[str],
    data: bytes,
    *,
    user: str = ALICE,
) -> dict[str, tuple[int, bytes]]:
    """Submit over 587: STARTTLS, AUTH, MAIL, RCPT..., DATA (smtplib)."""
    with smtplib.SMTP("127.0.0.1", port, timeout=TIMEOUT, local_hostname="laptop.local") as c:
        c.starttls(context=client_tls(settings))
        c.login(user, PASSWORD)
        return c.sendmail(sender, recipients, data)


def imap(settings: Settings, port: int, user: str = ALICE) -> IMAPClient:
    client = IMAPClient(
        "127.0.0.1", port, ssl=True, ssl_context=client_tls(settings), timeout=TIMEOUT
    )
    client.login(user, PASSWORD)
    return client


def imaplib_client(settings: Settings, port: int, user: str = ALICE) -> imaplib.IMAP4_SSL:
    client = imaplib.IMAP4_SSL("127.0.0.1", port, ssl_context=client_tls(settings), timeout=TIMEOUT)
    client.login(user, PASSWORD)
    return client


def fetch_by_message_id(
    client: IMAPClient, mark: str, folder: str = "INBOX"
) -> list[tuple[int, bytes]]:
    """(UID, full bytes) of every message in ``folder`` whose Message-ID holds ``mark``."""
    client.select_folder(folder, readonly=True)
    uids = client.search(["HEADER", "Message-ID", mark])
    if not uids:
        return []
    data = client.fetch(uids, ["BODY.PEEK[]"])
    return [(uid, data[uid][b"BODY[]"]) for uid in sorted(data)]


def wait_for(predicate: Callable[[], Any], timeout: float = 10.0, what: str = "it") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def maildir_files(settings: Settings, user: str, folder: str = "") -> Iterator[Path]:
    local, _, domain = user.partition("@")
    root = settings.mail_dir / domain / local
    base = root / f".{folder}" if folder else root
    for sub in ("new", "cur"):
        directory = base / sub
        if directory.is_dir():
            yield from directory.iterdir()
